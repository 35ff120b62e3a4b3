"""A tiny random llama model for tests and benchmarks (no download, built in about a second).

:func:`make_tiny_model` writes an mlx-lm model directory:

- ``config.json`` — a llama config (hidden 128, 2 layers, 4 heads, vocab = tokenizer size, ~0.38 M
  parameters, float32, tied embeddings);
- ``model.safetensors`` (+ ``model.safetensors.index.json``) — random weights from the classes mlx-lm
  itself uses for ``model_type: llama``, saved with mlx-lm's ``save_model``/``save_config``;
- ``tokenizer.json`` — a byte-level BPE (384 tokens) trained with the ``tokenizers`` library on a small
  built-in text, with the ChatML special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``;
- ``tokenizer_config.json`` — ``PreTrainedTokenizerFast`` with a ChatML ``chat_template`` and
  ``<|im_end|>`` as end-of-sequence token.

The result loads with ``mlx_lm.load(path)`` and generates (gibberish) in milliseconds per token. It is
deterministic for a given ``seed`` (weights) and independent of it for the tokenizer.

mlx is imported inside :func:`make_tiny_model` only (the contract allows mlx in ``oodatcaa.mlmodels``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["CHATML_TEMPLATE", "TINY_CONFIG", "make_tiny_model"]

#: ChatML chat template (the format used by SmolLM2 / Qwen instruct models).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 384

#: Llama hyper-parameters of the tiny model (vocab_size and token ids are filled in from the tokenizer).
TINY_CONFIG: dict[str, Any] = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 1024,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A small model learns from a small text.
Paris is the capital of France. Berlin is the capital of Germany. Rome is the capital of Italy.
The sky is blue and the grass is green. Water boils at one hundred degrees Celsius.
What is the capital of France? The capital of France is Paris.
How many legs does a spider have? A spider has eight legs.
Write a short poem about the sea. The sea is wide, the sea is deep, the waves will roll, the sailors sleep.
Hello! How can I help you today? Thank you, that was very helpful.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 100 2024 3.14 42.
Code: def add(a, b): return a + b. for i in range(10): print(i). import json, os, sys.
The orchestrator plans, builds, tests, checks, adapts and archives experiments in git.
Training loss goes down when the learning rate is right. Validation loss tells if it generalises.
A language model predicts the next token given the previous tokens.
user assistant system message content role answer question reply explain summarize translate
"""


def _train_tokenizer(out_dir: Path) -> dict[str, int]:
    """Train the byte-level BPE and write tokenizer.json / tokenizer_config.json; return special token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _CORPUS.splitlines()
    # Repeat so that frequent pairs are merged; the order is fixed, so training is deterministic.
    tok.train_from_iterator(lines * 4, trainer=trainer)
    tok.save(str(out_dir / "tokenizer.json"))

    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": TINY_CONFIG["max_position_embeddings"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "chat_template": CHATML_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special_map = {
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
    }
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    ids["vocab_size"] = tok.get_vocab_size()
    return ids


def make_tiny_model(path: Path | str, *, seed: int = 0) -> Path:
    """Write a tiny random llama mlx-lm model directory at ``path`` and return it.

    Args:
        path: output directory (created; existing model files in it are overwritten).
        seed: seed for ``mx.random`` used by the weight initialisation (same seed, same weights).

    Returns:
        ``Path(path)``, a directory that ``mlx_lm.load`` accepts.

    Size: ~0.38 M parameters (float32, ~1.5 MB). Building takes well under a second plus the mlx-lm
    import. Raises ``ImportError`` if mlx / mlx-lm / tokenizers are missing.
    """
    import mlx.core as mx
    from mlx_lm.utils import _get_classes, save_config, save_model

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    ids = _train_tokenizer(out)

    config = dict(TINY_CONFIG)
    config["vocab_size"] = ids["vocab_size"]
    config["eos_token_id"] = ids["<|im_end|>"]
    config["pad_token_id"] = ids["<|endoftext|>"]

    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    save_model(out, model)
    save_config(dict(config), out / "config.json")
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]}, indent=2) + "\n"
    )
    return out
