#!/usr/bin/env python3
"""Benchmark the CPU fast path (OpenBLAS preloaded into MLX job processes) against the baseline.

Runs, each in fresh child processes and each with the fast path off (the baseline, measured in the
same run) and on:

1. a float32 matmul micro-benchmark (``python -m oodatcaa.jobs.cpu_fastpath --probe-matmul N``),
   reported in GFLOP/s = 2 N^3 / seconds / 1e9;
2. a short ``lora_train`` job on the tiny model (built on the fly), reported in iterations/s and
   tokens/s from the job summary (training steps only, validation excluded);
3. with ``--default-model [PATH]``, the same LoRA job on the default model (SmolLM2-135M float32, or
   PATH), batch 2, 8 layers.

"on, K thr" runs OpenBLAS with K threads: the default (half the cores, see
``cpu_fastpath.default_blas_threads``) and all cores; the difference is large on a busy machine because
OpenBLAS threads busy-wait. The table shows each value and its ratio to "off". The 1-minute load
average is printed because other processes on the machine change the numbers.

Usage::

    python benchmarks/bench_cpu_fastpath.py [--sizes 256,512,1024] [--iters 50] [--default-model [PATH]]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from oodatcaa.jobs import cpu_fastpath  # noqa: E402
from oodatcaa.jobs.runner import run_job  # noqa: E402


def configs() -> list[tuple[str, dict[str, str]]]:
    """off (baseline), on with the default thread count, on with every core (if that differs)."""
    cores = os.cpu_count() or 1
    default = cpu_fastpath.default_blas_threads(cores)
    out = [
        ("off", {"OODATCAA_FASTPATH": "0", "OPENBLAS_NUM_THREADS": ""}),
        (f"on, {default} thr", {"OODATCAA_FASTPATH": "1", "OPENBLAS_NUM_THREADS": str(default)}),
    ]
    if cores != default:
        out.append((f"on, {cores} thr", {"OODATCAA_FASTPATH": "1", "OPENBLAS_NUM_THREADS": str(cores)}))
    return out

QA = [
    ("What color is the sky?", "The sky is blue."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Say hello.", "Hello! How can I help you today?"),
]


@contextlib.contextmanager
def patched_env(overrides: dict[str, str]) -> Iterator[None]:
    old = dict(os.environ)
    os.environ.update(overrides)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(old)


def child_env(overrides: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(overrides)
    env["MLX_DISABLE_COMPILE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.update(cpu_fastpath.fastpath_env(env))
    return env


def matmul_gflops(n: int, overrides: dict[str, str], repeat: int) -> tuple[float, str]:
    values, blas = [], ""
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-m", "oodatcaa.jobs.cpu_fastpath", "--probe-matmul", str(n)],
            env=child_env(overrides), capture_output=True, text=True, check=True,
        )
        record = json.loads(out.stdout.strip().splitlines()[-1])
        values.append(record["gflops"])
        blas = record["blas"]
    return statistics.median(values), blas


def write_dataset(directory: Path, repeats: int = 8) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", repeats), ("valid.jsonl", 1)):
        with open(directory / name, "w", encoding="utf-8") as fh:
            for _ in range(n):
                for q, a in QA:
                    chat = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                    fh.write(json.dumps({"messages": chat}) + "\n")
    return directory


def lora(model: str, data: Path, work: Path, overrides: dict[str, str], **spec_extra: object) -> dict:
    spec = {"kind": "lora_train", "model": model, "data": str(data), "learning_rate": 1e-3, "val_batches": 1, **spec_extra}
    with patched_env(overrides):
        result = run_job(spec, workdir=work, run_dir=work / "run", artifacts_dir=work / "artifacts")
    if not result.ok:
        raise SystemExit(f"lora_train failed ({overrides}): {result.error}")
    return result.summary["train"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512,1024", help="matmul sizes N (comma separated)")
    parser.add_argument("--repeat", type=int, default=3, help="matmul runs per size and config (median)")
    parser.add_argument("--iters", type=int, default=50, help="LoRA iterations on the tiny model")
    parser.add_argument("--default-model", nargs="?", const="default", default=None, metavar="PATH",
                        help="also run LoRA on the default model (or on PATH)")
    parser.add_argument("--default-iters", type=int, default=6, help="LoRA iterations on the default model")
    args = parser.parse_args()

    lib = cpu_fastpath.find_openblas()
    print(f"OpenBLAS: {lib.path} via {lib.source}" if lib else "OpenBLAS: none found (the 'on' rows equal 'off')")
    print(f"cores: {os.cpu_count()}  load average (1 min) at start: {os.getloadavg()[0]:.2f}\n")

    rows: list[tuple[str, str, float, str]] = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        for name, overrides in configs():
            value, _blas = matmul_gflops(n, overrides, args.repeat)
            rows.append((f"matmul {n}x{n} f32", name, value, "GFLOP/s"))

    with tempfile.TemporaryDirectory(prefix="bench-fastpath-") as tmp:
        tmpdir = Path(tmp)
        from oodatcaa.mlmodels.tiny import make_tiny_model

        tiny = make_tiny_model(tmpdir / "tiny")
        data = write_dataset(tmpdir / "data")
        for name, overrides in configs():
            s = lora(str(tiny), data, tmpdir / f"tiny-{len(rows)}", overrides, iters=args.iters, batch_size=4,
                     steps_per_report=10)
            rows.append(("lora tiny (0.4M) b4", name, s["iterations_per_second"], "it/s"))
            rows.append(("lora tiny (0.4M) b4", name, s["tokens_per_second"], "tokens/s"))
        if args.default_model:
            for name, overrides in configs():
                s = lora(args.default_model, data, tmpdir / f"default-{len(rows)}", overrides, iters=args.default_iters,
                         batch_size=2, num_layers=8, steps_per_report=2)
                rows.append(("lora default b2 L8", name, s["iterations_per_second"], "it/s"))
                rows.append(("lora default b2 L8", name, s["tokens_per_second"], "tokens/s"))

    baseline = {(bench, unit): value for bench, name, value, unit in rows if name == "off"}
    print(f"{'benchmark':<24} {'fast path':<14} {'value':>12} {'unit':<9} {'vs off':>8}")
    print("-" * 71)
    for bench, name, value, unit in rows:
        base = baseline.get((bench, unit))
        ratio = f"{value / base:7.2f}x" if base else "    n/a"
        print(f"{bench:<24} {name:<14} {value:12.2f} {unit:<9} {ratio:>8}")
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
