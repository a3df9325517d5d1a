"""Which way is better for each score rayft ranks by. A leaf module (no rayft imports) shared by
the promotion gate (``evaluate.gate``) and the registry's keep-best-N ranking (``registry.lineage``),
so neither package imports the other for it."""
from __future__ import annotations

HIGHER_IS_BETTER = {"similarity": True, "loss": False, "perplexity": False}
