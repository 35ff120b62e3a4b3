#!/usr/bin/env python3
"""CPU used by idle agent processes: real ``oodatcaa agent builder`` processes with nothing to claim.

(``--role negotiator``: one Negotiator supervising no agents, ticking on the same queue.)

A throw-away workspace gets a sprint of N stories (default 100) all in ``needs_plan``, so a builder
has nothing claimable; ``--agents`` builder processes start, are given ``--settle`` seconds to import
and reach their idle wait, then their CPU time (``utime + stime`` from ``/proc/<pid>/stat``) is
read twice, ``--seconds`` apart. Prints CPU seconds per agent and the share of one core.

``--src DIR`` runs the agents from another checkout's ``src`` (e.g. an older commit unpacked with
``git archive``) to measure before and after on the same machine in the same run; the workspace is
always made by this checkout. Linux only (``/proc``).

Usage::

    python benchmarks/bench_idle_agent.py [--stories 100] [--agents 1] [--seconds 20] [--src DIR] \
        [--poll-seconds S] [--no-inotify]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))


def make_workspace(root: Path, stories: int, poll: float | None) -> Path:
    from oodatcaa.core.criteria import Criterion, MetricCheck
    from oodatcaa.core.models import Sprint, Task
    from oodatcaa.core.store import QueueStore
    from oodatcaa.sprints import init_workspace

    repo = root / "repo"
    repo.mkdir(parents=True)
    for cmd in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"], ["config", "user.email", "b@example.com"],
                ["commit", "-q", "--allow-empty", "-m", "[docs] bench: initial commit"]):
        subprocess.run(["git", "-C", str(repo), *cmd], check=True)
    ws = init_workspace(repo)
    if poll is not None:  # `init` writes an [agents] table with its keys commented out: set the key under it
        text = ws.config_path.read_text(encoding="utf-8")
        header = next(line for line in text.splitlines() if line.startswith("[agents]"))
        ws.config_path.write_text(text.replace(header, f"{header}\npoll_seconds = {poll}", 1), encoding="utf-8")
    check = MetricCheck(kind="metric", metric="command.returncode", op="==", value=0)
    store = QueueStore.for_workspace(ws)
    with store.transaction("bench", create=True) as tx:
        tx.queue.sprint = Sprint(id="SPRINT-2026-001", number=1, title="idle", created_at=datetime.now(UTC))
        tx.queue.tasks = [Task(id=f"T{i:03d}", title=f"story {i}", jobs=[{"kind": "command", "run": "true"}],
                               acceptance_criteria=[Criterion(id="AC1", text="rc", critical=True, check=check)])
                          for i in range(1, stories + 1)]
    return repo


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=100)
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds for the agents to start")
    parser.add_argument("--src", type=Path, default=HERE.parent / "src", help="the src directory the agents run")
    parser.add_argument("--poll-seconds", type=float, default=None, help="[agents] poll_seconds (default: the default)")
    parser.add_argument("--no-inotify", action="store_true", help="make the file watcher fail (the stat fallback)")
    parser.add_argument("--role", default="builder",
                        help="builder (default), or negotiator: one `oodatcaa agent negotiator` with no agents")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        repo = make_workspace(Path(tmp), args.stories, args.poll_seconds)
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
        if args.no_inotify:  # a sitecustomize that makes the notifier raise, as a missing inotify does
            shim = Path(tmp) / "shim"
            shim.mkdir()
            (shim / "sitecustomize.py").write_text(
                "import oodatcaa.core.wake as w\n"
                "def _no(directory):\n    raise OSError('inotify disabled by bench_idle_agent --no-inotify')\n"
                "w.open_notifier = _no\n")
            env["PYTHONPATH"] += os.pathsep + str(shim)
        procs = [subprocess.Popen([sys.executable, "-m", "oodatcaa", "-C", str(repo), "agent", args.role,
                                   "--owner", f"{args.role}-{n}"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for n in range(1, args.agents + 1)]
        try:
            time.sleep(args.settle)
            dead = [p.pid for p in procs if p.poll() is not None]
            if dead:
                print(f"agents exited early: {dead}", file=sys.stderr)
                return 1
            before = [cpu_seconds(p.pid) for p in procs]
            time.sleep(args.seconds)
            after = [cpu_seconds(p.pid) for p in procs]
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=30)
        used = sum(a - b for a, b in zip(after, before, strict=True))
        mode = "stat fallback" if args.no_inotify else "default watcher"
        print(f"src={args.src} role={args.role} stories={args.stories} agents={args.agents} "
              f"poll_seconds={args.poll_seconds or 'default'} "
              f"({mode}): {used:.3f} CPU s in {args.seconds:.0f} s = {100 * used / args.seconds:.2f} % of one core "
              f"({100 * used / args.seconds / args.agents:.2f} % per agent)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
