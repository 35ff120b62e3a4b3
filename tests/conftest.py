"""Shared fixtures: a tiny random mlx-lm model and a small learnable chat dataset.

``MLX_DISABLE_COMPILE=1`` and ``HF_HUB_OFFLINE=1`` are set for the whole test session (job processes get
them from the runner anyway). mlx is imported only when the ``tiny_model`` fixture is used.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A learnable task: a handful of fixed question -> answer pairs, repeated. Even a random 0.4 M-parameter
# model drives the loss down on it within tens of LoRA steps (the chat template tokens are constant and
# each answer is determined by its question).
TINY_QA = [
    ("What color is the sky?", "The sky is blue."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What do cows drink?", "Cows drink water."),
    ("Say hello.", "Hello! How can I help you today?"),
    ("What is two plus two?", "Two plus two is four."),
    ("Name a primary color.", "Red is a primary color."),
    ("What boils at 100 degrees?", "Water boils at one hundred degrees Celsius."),
]


def chat_record(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def write_tiny_dataset(directory: Path, *, train_repeats: int = 4, valid_repeats: int = 1) -> Path:
    """Write train.jsonl (len(TINY_QA) * train_repeats records) and valid.jsonl into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(train_repeats):
            for q, a in TINY_QA:
                fh.write(json.dumps(chat_record(q, a)) + "\n")
    with open(directory / "valid.jsonl", "w", encoding="utf-8") as fh:
        for _ in range(valid_repeats):
            for q, a in TINY_QA:
                fh.write(json.dumps(chat_record(q, a)) + "\n")
    return directory


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~0.4 M-parameter random llama mlx-lm model directory (built once per session, ~1 s)."""
    from oodatcaa.mlmodels.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model", seed=0)


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    """A directory with train.jsonl (32 chat records) and valid.jsonl (8) of a learnable Q/A task."""
    return write_tiny_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter directory trained on the tiny Q/A task (40 steps, ~2 s); built once per session.

    Its ``train.jsonl`` / ``valid.jsonl`` / ``test.jsonl`` data lives in ``<adapter>/../../data``.
    """
    from oodatcaa.jobs.runner import run_job

    base = tmp_path_factory.mktemp("tiny-adapter")
    data = write_tiny_dataset(base / "data")
    (data / "test.jsonl").write_text((data / "valid.jsonl").read_text())
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 40, "learning_rate": 1e-3,
            "steps_per_report": 10}
    result = run_job(spec, workdir=base, run_dir=base / "run", artifacts_dir=base / "artifacts")
    assert result.ok, result.error
    return base / "artifacts" / "adapters"
