"""A registry version as one GGUF file for the llama.cpp engine (``engine: llamacpp``).

Route: the LoRA adapter is merged into its base in float32 (peft ``merge_and_unload``, as
`rayft export` does; a full fine-tune is taken as it is), saved as a Hugging Face model
directory, and converted by llama.cpp's OWN converter, ``convert_hf_to_gguf.py``, to
``gguf_type`` (f16 by default). We do not write a converter: tensor names, metadata keys and
the tokenizer/chat-template fields are whatever the llama.cpp that runs the file expects.

Where the converter comes from: the ``gguf`` PyPI package carries the GGUF reader/writer but
not ``convert_hf_to_gguf.py`` (nor its ``conversion/`` package), and the converter must match
the llama.cpp build that loads its output. The llama-cpp-python sdist of the INSTALLED
version vendors exactly that llama.cpp, so the first conversion downloads it once
(``pip download --no-binary :all: --no-deps llama-cpp-python==<installed>``, ~75 MB) and keeps
``convert_hf_to_gguf.py``, ``conversion/`` and ``gguf-py/`` under
``$RAYFT_CACHE/llama.cpp/<version>/``. Offline machines point ``llamacpp_source`` at a
llama.cpp checkout (or an unpacked sdist) instead.

Cache: ``$RAYFT_CACHE/gguf/<key>.gguf``, keyed by the version's artifact digest (sha256 over
its registered files), its base model and seed, the GGUF type and the converter version: a
rollback to an older version finds its file again; a new champion is converted once per
machine. Written as ``<key>.gguf.tmp-<pid>`` and renamed into place (a killed conversion
leaves no half file); a lock file makes concurrent replicas on one machine convert once.

Both steps run in child processes, so the float32 model used for merging never stays in the
serving replica's memory. ``python -m rayft.serve.to_gguf merge <spec.json> <out dir>`` is
the merge step.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ..storage import exclusive_lock

GGUF_TYPES = ("f16", "f32", "bf16", "q8_0")
SDIST = "llama-cpp-python"


class ConvertError(RuntimeError):
    """The GGUF could not be made; the message says which step and why (one line)."""


def cache_root() -> Path:
    from ..models.load import cache_dir
    return cache_dir()


def llama_cpp_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(SDIST)
    except PackageNotFoundError:
        raise ConvertError(f"engine=llamacpp needs {SDIST} (pip install 'rayft[llamacpp]')") from None


def _is_converter_dir(d: Path) -> bool:
    return (d / "convert_hf_to_gguf.py").is_file() and (d / "gguf-py" / "gguf").is_dir()


def converter_dir(source: str = "") -> Path:
    """The directory holding llama.cpp's ``convert_hf_to_gguf.py`` (+ ``conversion/`` and
    ``gguf-py/``): ``source`` when given (a llama.cpp checkout or unpacked sdist), else the
    cached copy for the installed llama-cpp-python, fetched from its sdist on first use."""
    if source:
        p = Path(os.path.expanduser(source))
        for d in (p, p / "vendor" / "llama.cpp"):
            if _is_converter_dir(d):
                return d.resolve()
        raise ConvertError(f"llamacpp_source: {p} holds no convert_hf_to_gguf.py with gguf-py/ (expected a "
                           "llama.cpp checkout or an unpacked llama-cpp-python sdist)")
    ver = llama_cpp_version()
    dest = cache_root() / "llama.cpp" / ver
    if _is_converter_dir(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(dest.parent / f"{ver}.lock"):
        if _is_converter_dir(dest):
            return dest
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{ver}.") as tmp:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                                "--disable-pip-version-check", "-q", "-d", tmp, f"{SDIST}=={ver}"],
                               capture_output=True, text=True)
            tars = sorted(Path(tmp).glob("*.tar.gz"))
            if r.returncode or not tars:
                last = (r.stderr.strip().splitlines() or ["no sdist downloaded"])[-1][:200]
                raise ConvertError(f"engine=llamacpp: cannot fetch llama.cpp's converter (the {SDIST}=={ver} sdist "
                                   f"from the package index: {last}); set llamacpp_source=<llama.cpp checkout>")
            out = Path(tmp) / "tree"
            _extract_converter(tars[0], out)
            os.replace(out, dest)
    return dest


def _extract_converter(tar_path: Path, out: Path) -> None:
    """convert_hf_to_gguf.py, conversion/ and gguf-py/ from the sdist's vendor/llama.cpp."""
    keep = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
    with tarfile.open(tar_path) as tf:
        members = []
        for m in tf.getmembers():
            parts = m.name.split("/", 3)  # <pkg-ver>/vendor/llama.cpp/<rel>
            if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and parts[3].startswith(keep) \
                    and (m.isfile() or m.isdir()):
                m.name = parts[3]
                members.append(m)
        out.mkdir(parents=True)
        tf.extractall(out, members=members, filter="data")
    if not _is_converter_dir(out):
        raise ConvertError(f"{tar_path.name}: no vendor/llama.cpp/convert_hf_to_gguf.py with gguf-py/ in it")


def cache_key(manifest: dict, gguf_type: str, converter: str) -> str:
    b = manifest["base_model"]
    ident = {"artifact_digest": manifest["artifact_digest"], "kind": manifest["kind"],
             "base": b.get("name"), "seed": b.get("seed", 0), "gguf_type": gguf_type, "converter": converter}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


def _run(step: str, cmd: list[str], log: Path, env: dict | None = None) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        raise ConvertError(f"GGUF {step} failed (exit {r.returncode}): {(lines or ['?'])[-1][:300]} "
                           f"(full log: {log})")


def gguf_for(manifest: dict, spec: dict, gguf_type: str = "f16", source: str = "") -> Path:
    """The cached GGUF of a verified registry version (``spec``: ``models.spec.manifest_spec``
    of its local artifacts), made on first use. Raises ConvertError."""
    if gguf_type not in GGUF_TYPES:
        raise ConvertError(f"gguf_type {gguf_type!r}: expected one of {', '.join(GGUF_TYPES)}")
    conv = converter_dir(source)
    converter = llama_cpp_version() if not source else \
        hashlib.sha256((conv / "convert_hf_to_gguf.py").read_bytes()).hexdigest()[:12]
    root = cache_root() / "gguf"
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, gguf_type, converter)
    out = root / f"{key}.gguf"
    if out.is_file():
        os.utime(out)  # recently used (for whoever prunes the cache)
        return out
    with exclusive_lock(root / f"{key}.lock"):
        if out.is_file():
            return out
        log = root / f"{key}.log"
        log.write_text(f"# {manifest.get('name', '')}/{manifest.get('version', '')} -> {out.name} "
                       f"({gguf_type}) {time.strftime('%Y-%m-%dT%H:%M:%S')}\n", encoding="utf-8")
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{key}.") as tmp:
            hf = Path(tmp) / "hf"
            spec_file = Path(tmp) / "spec.json"
            spec_file.write_text(json.dumps(spec), encoding="utf-8")
            _run("merge", [sys.executable, "-m", "rayft.serve.to_gguf", "merge", str(spec_file), str(hf)], log)
            part = root / f"{key}.gguf.tmp-{os.getpid()}"
            env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # its own gguf-py
            try:
                _run("conversion", [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(hf),
                                    "--outtype", gguf_type, "--outfile", str(part)], log, env)
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(part, out)
            finally:
                part.unlink(missing_ok=True)
    return out


def gguf_context_length(path: Path) -> int | None:
    """The model's training context from the GGUF metadata (``<arch>.context_length``)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    arch = r.fields["general.architecture"].contents()
    f = r.fields.get(f"{arch}.context_length")
    return int(f.contents()) if f is not None else None


def merge_to_dir(spec: dict, out: Path) -> Path:
    """A plain HF model directory (float32 weights + tokenizer) for ``spec``: the adapter merged
    into its base (peft ``merge_and_unload``), or the full model as it is."""
    from ..models.spec import load_spec
    from ..train.export import save_model_dir

    model, tok = load_spec(spec)
    if spec.get("adapter"):
        model = model.merge_and_unload()
    return save_model_dir(model, tok, out)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "merge":
        print("usage: python -m rayft.serve.to_gguf merge <spec.json> <out dir>", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    merge_to_dir(spec, Path(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
