"""Smoke test of ``benchmarks/bench_queue.py``: it runs, and our queue passes its own correctness column.

Only our queue (``--only oodatcaa``), so that the test needs no benchmark peers installed; tiny sizes.
The figures are not checked (they depend on the machine): the targets live in the benchmark's output.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_queue_quick_runs_and_our_queue_delivers_each_item_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_queue.py"), "--quick", "--stories", "6",
                          "--procs", "1,2", "--cell-seconds", "5", "--only", "oodatcaa"],
                         capture_output=True, text=True, timeout=240, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = re.findall(r"^\| oodatcaa \| 6 \| (\d) \| (\d+) \|.*\| (\S+) \|$", out.stdout, re.M)
    assert [(p, ops, ok) for p, ops, ok in rows] == [("1", "6", "yes"), ("2", "6", "yes")], out.stdout
    # the SIGKILLed holder's item comes back through reclaim_stale and is delivered exactly once more
    kill = re.search(r"^- oodatcaa: (\w+) held by the killed pid; reclaim_stale -> \['(\w+)-B01'\]; "
                     r"a second process took 10/10, (\w+) 1x, duplicates 0, lost 0$", out.stdout, re.M)
    assert kill and kill.group(1) == kill.group(2) == kill.group(3), out.stdout
    assert "targets (issue 11, part 4):" in out.stdout
