"""Process-wide defaults applied before Ray is imported (secure, quiet, CPU-friendly)."""
import os

DEFAULTS = {
    # Ray 2.60 binds a local head to the external address unless this is 0.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "DS_ACCELERATOR": "cpu" if not os.path.exists("/dev/nvidia0") else "",
}

WORKER_ENV_KEYS = ("DS_ACCELERATOR", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "RAYFT_CACHE",
                   "TORCH_EXTENSIONS_DIR", "HF_HOME")


def apply() -> None:
    for k, v in DEFAULTS.items():
        if v:
            os.environ.setdefault(k, v)


def worker_env() -> dict:
    return {k: os.environ[k] for k in WORKER_ENV_KEYS if os.environ.get(k)}
