#!/usr/bin/env python3
"""Our ``lora_train`` job against ``python -m mlx_lm lora`` (mlx-lm's ``trainer.train``), same config,
same data, same machine, same environment (CPU fast path, ``MLX_DISABLE_COMPILE=1``), alternating runs.

Measured per run:

- wall time: the whole process, start to exit (ours through :func:`oodatcaa.jobs.runner.run_job`,
  which adds the job files, the loss-curve PNG and the artifact hashes; the baseline through
  ``subprocess.run``);
- CPU time: user + system seconds of the child processes (``getrusage(RUSAGE_CHILDREN)`` before and
  after), less sensitive than wall time to other load on a shared machine;
- training tokens/s, like for like: one token count for both sides — the benchmark tokenizes the
  training set itself (the model's chat template, each record cut at ``max_seq_length``) and
  multiplies by the epochs (``iters`` is a whole number of epochs and every record is trained once
  per epoch on both sides) — divided by each side's own seconds in training steps (validation
  excluded): ours from the job summary's ``train_seconds``, mlx-lm's from its training callback
  (``mlx_lm.lora.main`` run with a callback passed to its ``train_model`` that records the exact report; the printed "10.9k"
  trained tokens and integer tokens/s are rounded and each side counts tokens its own way). Each
  side's own trained-token count is printed beside it for reference.

Variants: ``mlx_lm lora`` (the baseline), ``oodatcaa lora_train`` (no intermediate checkpoint, as the
baseline with ``save_every > iters``), and ``oodatcaa + checkpoints`` (a resumable checkpoint every
quarter of the run: adapter + Adam state + position). The table gives medians over ``--repeat`` runs
and ratios to the baseline measured in the same run (wall-time ratio < 1 and tokens/s ratio > 1 are
better than the baseline). No assertions: numbers depend on the machine and its load.

Usage::

    python benchmarks/bench_lora_overhead.py [--repeat 3] [--epochs 10] [--default-model [PATH]] [--quick]

Works on a fresh clone: every dataset is written by the benchmark into a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from oodatcaa.jobs import cpu_fastpath  # noqa: E402
from oodatcaa.jobs.runner import _child_env, run_job  # noqa: E402

QA = [
    ("What color is the sky?", "The sky is blue."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Say hello.", "Hello! How can I help you today?"),
    ("What is two plus two?", "Two plus two is four."),
    ("Name a primary color.", "Red is a primary color."),
    ("What do cows drink?", "Cows drink water."),
    ("What boils at 100 degrees?", "Water boils at one hundred degrees Celsius."),
]
#: ``python -m mlx_lm lora`` with a training callback that writes mlx-lm's exact train reports to a JSON file
MLX_LORA_WITH_REPORTS = """\
import json, sys
import mlx_lm.lora as lora
from mlx_lm.tuner.callbacks import TrainingCallback
out = sys.argv.pop(1)
class Record(TrainingCallback):
    def __init__(self):
        self.train = []
    def on_train_loss_report(self, train_info):
        self.train.append(dict(train_info))
    def on_val_loss_report(self, val_info):
        pass
record, _train_model = Record(), lora.train_model
def train_model(args, model, train_set, valid_set, training_callback=None):
    # run() builds its callback from report_to (None here) and hands it to train_model: record instead
    _train_model(args, model, train_set, valid_set, record)
    with open(out, "w") as fh:
        json.dump(record.train, fh)
lora.train_model = train_model
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
"""


def write_dataset(directory: Path, repeats: int = 8) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", repeats), ("valid.jsonl", 1)):
        with open(directory / name, "w", encoding="utf-8") as fh:
            for _ in range(n):
                for q, a in QA:
                    chat = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                    fh.write(json.dumps({"messages": chat}) + "\n")
    return directory


def dataset_tokens(model: Path, data: Path, max_seq_length: int) -> int:
    """Tokens in one epoch of ``data/train.jsonl``: each record through the model's chat template, cut at
    ``max_seq_length`` (what one pass over the training set feeds the model). The one count both sides use."""
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(Path(model))
    total = 0
    with open(data / "train.jsonl", encoding="utf-8") as fh:
        for line in fh:
            ids = tokenizer.apply_chat_template(json.loads(line)["messages"], return_dict=False)
            total += min(len(ids), max_seq_length)
    return total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_baseline(model: Path, data: Path, work: Path, cfg: dict) -> dict:
    """``mlx_lm.lora.main`` with ``-c config.yaml`` (plus a callback recording its report); wall, CPU and
    training seconds, and mlx-lm's own trained-token count."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    config = {
        "model": str(model), "data": str(data), "train": True, "fine_tune_type": "lora", "optimizer": "adam",
        "seed": cfg["seed"], "num_layers": cfg["num_layers"], "batch_size": cfg["batch_size"], "iters": cfg["iters"],
        "val_batches": cfg["val_batches"], "learning_rate": cfg["learning_rate"], "steps_per_report": cfg["iters"],
        "steps_per_eval": cfg["iters"], "save_every": cfg["iters"] + 1, "max_seq_length": cfg["max_seq_length"],
        "adapter_path": str(work / "adapters"), "grad_checkpoint": False, "mask_prompt": False,
        "lora_parameters": {"rank": cfg["rank"], "scale": cfg["alpha"] / cfg["rank"], "dropout": 0.0},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    env = _child_env(None)
    cpu, start = _children_cpu(), time.perf_counter()
    (work / "mlx_lora_with_reports.py").write_text(MLX_LORA_WITH_REPORTS)
    reports_path = work / "train_reports.json"
    argv = [sys.executable, str(work / "mlx_lora_with_reports.py"), str(reports_path), "-c", str(work / "config.yaml")]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=work)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if out.returncode != 0 or not reports_path.exists():
        raise SystemExit(f"mlx_lm lora failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    reports = json.loads(reports_path.read_text())
    if len(reports) != 1:
        raise SystemExit(f"expected one train report from mlx_lm lora (steps_per_report = iters), got {len(reports)}")
    report = reports[0]
    return {"wall": wall, "cpu": cpu, "train_seconds": cfg["iters"] / report["iterations_per_second"],
            "own_tokens": report["trained_tokens"]}


def run_ours(model: Path, data: Path, work: Path, cfg: dict, save_every: int) -> dict:
    spec = {
        "kind": "lora_train", "model": str(model), "data": str(data), "iters": cfg["iters"], "batch_size": cfg["batch_size"],
        "num_layers": cfg["num_layers"], "learning_rate": cfg["learning_rate"],
        "lora": {"rank": cfg["rank"], "alpha": cfg["alpha"]},
        "steps_per_report": cfg["iters"], "steps_per_eval": cfg["iters"], "val_batches": cfg["val_batches"],
        "max_seq_length": cfg["max_seq_length"], "seed": cfg["seed"], "save_every": save_every, "resume": False,
    }
    cpu, start = _children_cpu(), time.perf_counter()
    result = run_job(spec, workdir=work, run_dir=work / "run", artifacts_dir=work / "artifacts", progress=False)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if not result.ok:
        raise SystemExit(f"lora_train failed: {result.error}")
    train = result.summary["train"]
    return {"wall": wall, "cpu": cpu, "train_seconds": train["train_seconds"], "own_tokens": train["trained_tokens"]}


def bench(label: str, model: Path, data: Path, tmp: Path, cfg: dict, repeat: int, epochs: int) -> list[tuple]:
    """Alternating runs of the three variants; rows of medians and ratios to the baseline."""
    tokens = dataset_tokens(model, data, cfg["max_seq_length"]) * epochs
    variants = [
        ("mlx_lm lora (baseline)", lambda w: run_baseline(model, data, w, cfg)),
        ("oodatcaa lora_train", lambda w: run_ours(model, data, w, cfg, cfg["iters"] + 1)),
        ("oodatcaa + checkpoints", lambda w: run_ours(model, data, w, cfg, max(1, cfg["iters"] // 4))),
    ]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for _ in range(repeat):
        for name, fn in variants:  # alternate, so that load changes hit every variant alike
            results[name].append(fn(tmp / f"{label}-{len(results[name])}-{abs(hash(name)) % 10**6}"))
    rows = []
    base = results[variants[0][0]]
    base_wall = statistics.median(x["wall"] for x in base)
    base_tps = tokens / statistics.median(x["train_seconds"] for x in base)
    base_cpu = statistics.median(x["cpu"] for x in base)
    for name, _ in variants:
        wall = statistics.median(x["wall"] for x in results[name])
        cpu = statistics.median(x["cpu"] for x in results[name])
        tps = tokens / statistics.median(x["train_seconds"] for x in results[name])
        own = results[name][0]["own_tokens"]
        rows.append((label, name, wall, wall / base_wall, cpu, cpu / base_cpu, tps, tps / base_tps, tokens, own))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant (median)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs on the tiny model (16 batches each)")
    parser.add_argument("--default-model", nargs="?", const="default", default=None, metavar="PATH",
                        help="also compare on the default model (SmolLM2-135M float32, or PATH), batch 2, 8 layers")
    parser.add_argument("--default-epochs", type=int, default=1, help="epochs on the default model (20 batches each)")
    parser.add_argument("--quick", action="store_true", help="one run per variant, 4 epochs on the tiny model")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.epochs = 1, 4

    lib = cpu_fastpath.find_openblas()
    print(f"OpenBLAS: {lib.path} via {lib.source}" if lib else "OpenBLAS: none found")
    print(f"cores: {os.cpu_count()}  load average (1 min) at start: {os.getloadavg()[0]:.2f}  repeats: {args.repeat}\n")
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        tmpdir = Path(tmp)
        from oodatcaa.mlmodels.tiny import make_tiny_model

        tiny = make_tiny_model(tmpdir / "tiny")
        data = write_dataset(tmpdir / "data")  # 64 records, batch 4: 16 batches per epoch
        cfg = {"iters": 16 * args.epochs, "batch_size": 4, "num_layers": 2, "learning_rate": 1e-3, "rank": 8, "alpha": 16,
               "val_batches": 1, "max_seq_length": 512, "seed": 0}
        rows += bench(f"tiny 0.4M b4 {cfg['iters']} it", tiny, data, tmpdir, cfg, args.repeat, args.epochs)
        if args.default_model:
            if args.default_model == "default":
                from oodatcaa.mlmodels.default_model import ensure_default_model

                model = Path(ensure_default_model())
            else:
                model = Path(args.default_model).resolve()
            own_data = write_dataset(tmpdir / "default-data", repeats=5)  # 40 records, batch 2: 20 batches per epoch
            cfg = {"iters": 20 * args.default_epochs, "batch_size": 2, "num_layers": 8, "learning_rate": 2e-4, "rank": 8,
                   "alpha": 16, "val_batches": 1, "max_seq_length": 256, "seed": 0}
            rows += bench(f"default b2 L8 {cfg['iters']} it", model, own_data, tmpdir, cfg, args.repeat, args.default_epochs)

    print(f"{'benchmark':<24} {'variant':<24} {'wall s':>7} {'vs base':>8} {'cpu s':>7} {'vs base':>8} "
          f"{'train tok/s':>11} {'vs base':>8} {'tokens':>7} {'own count':>9}")
    print("-" * 123)
    for label, name, wall, wall_ratio, cpu, cpu_ratio, tps, tps_ratio, tokens, own in rows:
        print(f"{label:<24} {name:<24} {wall:7.2f} {wall_ratio:7.3f}x {cpu:7.2f} {cpu_ratio:7.3f}x "
              f"{tps:11.1f} {tps_ratio:7.3f}x {tokens:7d} {own:9.0f}")
    print("\ntime ratios < 1 and tokens/s ratios > 1 are better than the baseline (medians of the runs).")
    print("tokens: the benchmark's own count (training set through the chat template, x epochs), the numerator of"
          " every tokens/s;\nown count: what each side reports it trained (each counts its own way; for reference).")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
