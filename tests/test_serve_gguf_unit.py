"""engine=llamacpp plumbing that needs neither Ray nor llama-cpp-python: the serve config keys, the
refusal when the binding is missing, where the converter comes from (sdist extraction, a given
llama.cpp tree), and the GGUF cache key."""
from __future__ import annotations

import io
import shutil
import tarfile

import pytest

from rayft.config import ConfigError, load
from rayft.serve.config import ServeConfig
from rayft.serve.to_gguf import ConvertError, _extract_converter, cache_key, converter_dir


def test_engine_keys_validate():
    cfg = load(ServeConfig, None, ["engine=llamacpp", "gguf_type=q8_0", "n_ctx=1024"])
    assert (cfg.engine, cfg.gguf_type, cfg.n_ctx) == ("llamacpp", "q8_0", 1024)
    assert load(ServeConfig, None, []).engine == "transformers"
    with pytest.raises(ConfigError, match="engine"):
        load(ServeConfig, None, ["engine=vllm"])
    with pytest.raises(ConfigError, match="gguf_type"):
        load(ServeConfig, None, ["gguf_type=q4_k"])


def test_missing_binding_is_a_config_error(monkeypatch):
    import importlib.util

    from rayft.serve.app import engine_options

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    with pytest.raises(ConfigError, match=r"pip install 'rayft\[llamacpp\]'"):
        engine_options(load(ServeConfig, None, ["engine=llamacpp"]))
    assert engine_options(load(ServeConfig, None, [])) == {"kind": "transformers", "num_gpus": 0.0, "dtype": "auto"}


def _tar(path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_converter_extracted_from_sdist_and_nothing_else(tmp_path):
    root = "llama_cpp_python-9.9.9/vendor/llama.cpp/"
    sdist = tmp_path / "llama_cpp_python-9.9.9.tar.gz"
    _tar(sdist, {root + "convert_hf_to_gguf.py": b"# converter\n", root + "conversion/__init__.py": b"",
                 root + "gguf-py/gguf/__init__.py": b"", root + "src/llama.cpp": b"int x;",
                 "llama_cpp_python-9.9.9/vendor/llama.cpp/../../../evil.py": b"boom",
                 "llama_cpp_python-9.9.9/llama_cpp/llama.py": b""})
    out = tmp_path / "tree"
    _extract_converter(sdist, out)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["conversion/__init__.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py"]
    assert not (tmp_path / "evil.py").exists()
    assert converter_dir(str(out)) == out.resolve()
    # an unpacked sdist works too (vendor/llama.cpp inside it)
    shutil.copytree(out, tmp_path / "sdist" / "vendor" / "llama.cpp")
    assert converter_dir(str(tmp_path / "sdist")) == (tmp_path / "sdist" / "vendor" / "llama.cpp").resolve()
    with pytest.raises(ConvertError, match="convert_hf_to_gguf.py"):
        converter_dir(str(tmp_path / "nowhere"))
    bad = tmp_path / "bad.tar.gz"
    _tar(bad, {"x-1/README": b""})
    with pytest.raises(ConvertError, match="no vendor/llama.cpp"):
        _extract_converter(bad, tmp_path / "tree2")


def test_cache_key_follows_artifacts_type_and_converter():
    m = {"artifact_digest": "a" * 64, "kind": "lora", "base_model": {"name": "smollm2-135m-instruct", "seed": 0}}
    k = cache_key(m, "f16", "0.3.36")
    assert k == cache_key(dict(m), "f16", "0.3.36")  # a rollback finds the same file
    assert len({k, cache_key({**m, "artifact_digest": "b" * 64}, "f16", "0.3.36"), cache_key(m, "f32", "0.3.36"),
                cache_key(m, "f16", "0.3.37"), cache_key({**m, "base_model": {"name": "x", "seed": 0}}, "f16",
                                                         "0.3.36")}) == 5
