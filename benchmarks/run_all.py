#!/usr/bin/env python3
"""Run every benchmark in this directory, one after the other, and print their tables.

1. ``bench_cpu_fastpath.py``  the CPU fast path (OpenBLAS) on against off (baseline: off);
2. ``bench_lora_overhead.py`` our ``lora_train`` against ``python -m mlx_lm lora`` (baseline: mlx-lm).

Each benchmark measures its own baseline in the same run and prints ratios to it; nothing is asserted.

Usage::

    python benchmarks/run_all.py [--default-model [PATH]] [--quick]

``--default-model`` adds the runs on the default model (SmolLM2-135M float32, built once into the
cache) to both; ``--quick`` uses fewer sizes, iterations and repeats (a smoke run of a few minutes).
Exit status: 0 when every benchmark ran, else the first failing one's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default-model", nargs="?", const="default", default=None, metavar="PATH",
                        help="also benchmark the default model (or PATH)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes, iterations and repeats")
    args = parser.parse_args()

    extra = [] if args.default_model is None else (
        ["--default-model"] if args.default_model == "default" else ["--default-model", args.default_model])
    fastpath = ["--sizes", "512", "--repeat", "1", "--iters", "30"] if args.quick else []
    overhead = ["--repeat", "1", "--epochs", "4"] if args.quick else []
    benches = [
        ("CPU fast path: on vs off", [sys.executable, str(HERE / "bench_cpu_fastpath.py"), *fastpath, *extra]),
        ("lora_train vs mlx_lm lora", [sys.executable, str(HERE / "bench_lora_overhead.py"), *overhead, *extra]),
    ]
    status = 0
    for title, argv in benches:
        print(f"\n=== {title} ===  ({' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])})", flush=True)
        start = time.perf_counter()
        code = subprocess.call(argv)
        print(f"--- {title}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        status = status or code
    return status


if __name__ == "__main__":
    raise SystemExit(main())
