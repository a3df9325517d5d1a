"""Inspect and move the model registry from a job or a shell.

    python jobs/registry.py list uri=runs/registry name=en
    python jobs/registry.py promote uri=runs/registry name=en version=v1763856000_ab12
    python jobs/registry.py rollback uri=runs/registry name=en

Same arguments and function as ``rayft registry <action>``: list | show | add | promote |
rollback | cleanup. Needs no Ray.
"""
import sys

from rayft.cli import main

if __name__ == "__main__":
    sys.exit(main(["registry", *sys.argv[1:]]))
