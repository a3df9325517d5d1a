"""Versioned model registry with lineage, atomic aliases (champion/previous) and rollback."""
from .lineage import ALIASES, RegistryError
from .registry import IntegrityError, Registry

__all__ = ["ALIASES", "IntegrityError", "Registry", "RegistryError"]
