#!/usr/bin/env python3
"""Run every benchmark in this directory, one after the other, and print their tables.

1. ``bench_cpu_fastpath.py``  the CPU fast path (OpenBLAS) on against off (baseline: off);
2. ``bench_lora_overhead.py`` our ``lora_train`` against ``python -m mlx_lm lora`` (baseline: mlx-lm);
3. ``bench_queue.py``         our queue against persist-queue and huey, and the durable-write ceiling;
4. ``bench_sprint.py``        trivial stories end to end, idle overhead, parallel efficiency.

Each benchmark measures its own baseline in the same run and prints ratios to it, and the queue and
sprint benchmarks print issue 11's targets as met or missed; nothing is asserted. The queue benchmark
needs the ``bench`` extra (persist-queue, huey): ``pip install -e ".[bench]"`` (``make bench`` does).

Usage::

    python benchmarks/run_all.py [--default-model [PATH]] [--quick]

``--default-model`` adds the runs on the default model (SmolLM2-135M float32, built once into the
cache) to the first two; ``--quick`` uses fewer sizes, iterations and repeats (a smoke run of a few minutes);
``--only NAME,...`` runs some of them (fastpath, lora, queue, sprint).
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
    parser.add_argument("--only", default="fastpath,lora,queue,sprint", help="comma-separated benchmarks to run")
    args = parser.parse_args()

    extra = [] if args.default_model is None else (
        ["--default-model"] if args.default_model == "default" else ["--default-model", args.default_model])
    fastpath = ["--sizes", "512", "--repeat", "1", "--iters", "30"] if args.quick else []
    overhead = ["--quick"] if args.quick else []
    quick = ["--quick"] if args.quick else []
    benches = [
        ("fastpath", "CPU fast path: on vs off", [sys.executable, str(HERE / "bench_cpu_fastpath.py"), *fastpath, *extra]),
        ("lora", "lora_train vs mlx_lm lora", [sys.executable, str(HERE / "bench_lora_overhead.py"), *overhead, *extra]),
        ("queue", "queue: oodatcaa vs persist-queue vs huey", [sys.executable, str(HERE / "bench_queue.py"), *quick]),
        ("sprint", "trivial stories end to end", [sys.executable, str(HERE / "bench_sprint.py"), *quick]),
    ]
    wanted = {x for x in args.only.split(",") if x}
    unknown = sorted(wanted - {b[0] for b in benches})
    if unknown:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose from fastpath, lora, queue, sprint")
    benches = [b for b in benches if b[0] in wanted]
    status = 0
    total = time.perf_counter()
    for _name, title, argv in benches:
        print(f"\n=== {title} ===  ({' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])})", flush=True)
        start = time.perf_counter()
        code = subprocess.call(argv)
        print(f"--- {title}: exit {code}, {time.perf_counter() - start:.0f} s", flush=True)
        status = status or code
    print(f"\n=== all: {time.perf_counter() - total:.0f} s ===", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
