#!/usr/bin/env python3
"""Our queue (``SPRINT_QUEUE.json``) against two SQLite-backed queues, with the durable-write ceiling
of our design measured in the same run.

Workload, per queue: N items ("stories", each with one builder step), then P processes that each take
and finish items until the queue is drained (or a bound is hit); throughput counts all processes.

- **oodatcaa**: ``leases.claim_next(store, "builder", ...)`` then ``leases.complete(store, claim,
  awaiting_test, ...)`` — two locked transactions, each one atomic replace of the whole queue file
  (``fsync`` of the file, ``os.replace``, ``fsync`` of the directory) plus the ``AGENT_LOG.md`` rows.
- **persist-queue** ``SQLiteAckQueue`` (WAL, ``PRAGMA synchronous=FULL`` set and read back): ``get``
  (marks the row unacked: one commit, WAL fsync) then ``ack`` (one commit, WAL fsync).
- **huey** ``SqliteStorage(fsync=True)`` (WAL, ``synchronous=FULL``): ``enqueue`` / ``dequeue`` — the
  dequeue deletes the row (one commit, WAL fsync); there is no acknowledgement, so its "complete" is
  empty and a crash after a dequeue loses the item (at-most-once).
- **ceiling**: writing a file of the queue file's size at that story count, ``fsync``, ``os.replace``,
  ``fsync`` of the directory: the cost of one durable write of this design. A claim+complete is two
  such writes, so the ceiling in claim+complete per second is ``1 / (2 x median write)``; every
  throughput is also given as a fraction of it ("x ceil"). The ceiling is per write and does not grow
  with processes (writes are serialised by the queue lock).

Correctness column ("ok"): every item taken exactly once (no duplicate across processes), none lost
(taken + still queued == N; all N when drained). A separate crash check per queue SIGKILLs a process
that holds an item it has taken but not finished, then lets a second process drain the queue: ours
must hand the item out again exactly once after ``leases.reclaim_stale`` (the dead pid's lease is
reclaimed), persist-queue re-delivers unacked items on ``auto_resume=True``, huey loses the item.

At 10,000 stories (and whenever ``--cell-seconds`` runs out) the run is bounded: the table says how
many operations were done. The queue of each size is built once (one transaction from the models)
and copied for every process count. Targets (issue 11, checked here, never in tests) are printed with
met / missed and by how much. Nothing is asserted; exit 0 unless a benchmark itself failed.

Usage::

    python benchmarks/bench_queue.py [--quick] [--stories 10,100,1000,10000] [--procs 1,2,4,8]
                                     [--bounded-ops 20] [--cell-seconds 10] [--only oodatcaa,persist-queue,huey]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

QUEUES = ("oodatcaa", "persist-queue", "huey")
DURABILITY = {
    "oodatcaa": "file fsync + os.replace + dir fsync per write; 2 writes per claim+complete",
    "persist-queue": "SQLiteAckQueue, WAL, synchronous=FULL: WAL fsync per commit; get + ack = 2 commits",
    "huey": "SqliteStorage(fsync=True), WAL, synchronous=FULL: WAL fsync per commit; dequeue = 1 commit, no ack",
    "ceiling": "same-size file write + fsync + os.replace + dir fsync (one durable write of our design)",
}
TTL = 600.0


# -- building the queues ---------------------------------------------------------------------------
def story_id(i: int) -> str:
    """The i-th story ID (0-based): A000 .. Z999, the ID pattern's letter-and-three-digits form."""
    if not 0 <= i < 26_000:
        raise ValueError(f"story index {i} out of range 0..25999 (IDs are one letter and three digits)")
    return f"{chr(65 + i // 1000)}{i % 1000:03d}"


def build_ours(root: Path, n: int) -> Path:
    """A git repository with a workspace whose queue holds ``n`` ready stories of one builder step each.

    Written in one transaction from the models (not ``n`` transactions). Returns the repository root.
    """
    from datetime import UTC, datetime

    from oodatcaa.core.models import Sprint, Subtask, Task
    from oodatcaa.core.statuses import TaskStatus as S
    from oodatcaa.core.store import QueueStore
    from oodatcaa.sprints import init_workspace

    root.mkdir(parents=True)
    for argv in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"], ["config", "user.email", "bench@example.com"],
                 ["commit", "-q", "--allow-empty", "-m", "[docs] bench: initial commit"]):
        subprocess.run(["git", "-C", str(root), *argv], check=True)
    ws = init_workspace(root)
    tasks = []
    for i in range(n):
        tid = story_id(i)
        build = Subtask(id=f"{tid}-B01", kind="build", status=S.READY, title="step 1", step=1,
                        branch=f"feat/{tid}-step-01-bench", job={"kind": "command", "run": "true"})
        tester = Subtask(id=f"{tid}-T01", kind="test", status=S.BLOCKED, title="tests", step=1,
                         branch=build.branch, dependencies=[build.id])
        tasks.append(Task(id=tid, title=f"story {i}", status=S.READY, jobs=[{"kind": "command", "run": "true"}],
                          subtasks=[build, tester]))
    store = QueueStore.for_workspace(ws)
    with store.transaction("bench", create=True) as tx:
        tx.queue.sprint = Sprint(id="SPRINT-2026-001", number=1, title="bench", created_at=datetime(2026, 1, 1, tzinfo=UTC))
        tx.queue.tasks = tasks
    return root


def _pq_open(path: Path, *, auto_resume: bool, synchronous: str = "FULL") -> Any:
    import persistqueue

    q = persistqueue.SQLiteAckQueue(str(path), auto_resume=auto_resume, multithreading=True)
    for conn in {id(c): c for c in (q._putter, q._getter) if c is not None}.values():  # noqa: SLF001 - set the peer's durability
        conn.execute(f"PRAGMA synchronous={synchronous}")
    return q


def _pq_synchronous(q: Any) -> int:
    return int(q._putter.execute("PRAGMA synchronous").fetchone()[0])  # noqa: SLF001 - read back what we set


def _huey_open(path: Path, *, fsync: bool) -> Any:
    from huey.storage import SqliteStorage

    return SqliteStorage(name="bench", filename=str(path / "huey.db"), fsync=fsync)


def build_peer(kind: str, path: Path, n: int) -> Path:
    """``n`` items put into a fresh persist-queue or huey queue at ``path``; filled without fsync (set-up only)."""
    path.mkdir(parents=True)
    if kind == "persist-queue":
        q = _pq_open(path, auto_resume=False, synchronous="OFF")
        for i in range(n):
            q.put(story_id(i))
        q.close()
    else:
        s = _huey_open(path, fsync=False)
        for i in range(n):
            s.enqueue(story_id(i).encode())
        s.close()
    return path


def remaining(kind: str, path: Path) -> int:
    """Items still waiting (not taken) in a queue."""
    if kind == "oodatcaa":
        from oodatcaa.core.statuses import TaskStatus as S
        from oodatcaa.core.store import QueueStore
        from oodatcaa.core.workspace import Workspace

        q = QueueStore.for_workspace(Workspace(path)).read()
        return sum(1 for t in q.tasks for s in t.subtasks if s.kind == "build" and s.status == S.READY)
    if kind == "persist-queue":
        q = _pq_open(path, auto_resume=False)
        try:
            return q.qsize()  # rows not yet taken (status below unack: put or resumed)
        finally:
            q.close()
    s = _huey_open(path, fsync=True)
    try:
        return int(s.queue_size())
    finally:
        s.close()


# -- the worker processes --------------------------------------------------------------------------
def worker(kind: str, path: Path, index: int, go: Path, out: Path, max_ops: int, seconds: float, mode: str) -> int:
    """One process: wait for ``go``, then take and finish items until none is left, ``max_ops`` or ``seconds``.

    ``mode`` "drain" (the benchmark), "hold" (take one item, report it, then sleep until killed) or
    "resume" (persist-queue only: open with ``auto_resume=True``, then drain). Writes JSON to ``out``.
    """
    take, finish, close = _ops(kind, path, index, resume=mode == "resume")
    if mode == "hold":
        got = take()
        out.write_text(json.dumps({"held": got[0] if got else None, "pid": os.getpid()}))
        while True:
            time.sleep(60)
    out.with_suffix(".ready").touch()
    deadline = time.monotonic() + 120
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("never got the go signal")
        time.sleep(0.001)
    start = time.monotonic()
    stop = start + seconds
    ids: list[str] = []
    claim_s: list[float] = []
    complete_s: list[float] = []
    errors: list[str] = []
    while len(ids) < max_ops and time.monotonic() < stop:
        try:
            t0 = time.perf_counter()
            got = take()
            t1 = time.perf_counter()
            if got is None:
                break
            finish(got)
            t2 = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - a lock timeout or a queue error is a finding, not a crash of the run
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            break
        ids.append(got[0])
        claim_s.append(t1 - t0)
        complete_s.append(t2 - t1)
    end = time.monotonic()
    close()
    out.write_text(json.dumps({"ids": ids, "claim": claim_s, "complete": complete_s, "start": start, "end": end,
                               "errors": errors}))
    return 0


def _ops(kind: str, path: Path, index: int, *, resume: bool) -> tuple[Any, Any, Any]:
    """(take, finish, close) for one queue kind; ``take()`` returns ``(item id, handle)`` or ``None``."""
    if kind == "oodatcaa":
        from oodatcaa.core import leases
        from oodatcaa.core.statuses import TaskStatus as S
        from oodatcaa.core.store import QueueStore
        from oodatcaa.core.workspace import Workspace

        store = QueueStore.for_workspace(Workspace(path))

        def take() -> tuple[str, Any] | None:
            claim = leases.claim_next(store, "builder", f"bench-{index}", ttl_seconds=TTL, wip_limit=1024)
            return None if claim is None else (claim.item_id.split("-")[0], claim)

        def finish(got: tuple[str, Any]) -> None:
            leases.complete(store, got[1], S.AWAITING_TEST, "bench: built")

        return take, finish, lambda: None
    if kind == "persist-queue":
        import persistqueue

        q = _pq_open(path, auto_resume=resume)
        if _pq_synchronous(q) != 2:
            raise SystemExit("persist-queue: PRAGMA synchronous is not FULL")

        def take_pq() -> tuple[str, Any] | None:
            try:
                item = q.get(block=False, raw=True)
            except persistqueue.Empty:
                return None
            return item["data"], item

        return take_pq, lambda got: q.ack(got[1]), q.close
    s = _huey_open(path, fsync=True)

    def take_huey() -> tuple[str, Any] | None:
        data = s.dequeue()
        return None if data is None else (bytes(data).decode(), None)

    return take_huey, lambda got: None, s.close


def spawn(kind: str, path: Path, index: int, go: Path, out: Path, max_ops: int, seconds: float,
          mode: str = "drain") -> subprocess.Popen:
    """Start one worker process (this script with ``--worker``); see :func:`worker` for the arguments."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path), str(index), str(go), str(out),
            str(max_ops), str(seconds), mode]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(argv, env=env)


# -- one cell of the table -------------------------------------------------------------------------
def run_cell(kind: str, template: Path, work: Path, n: int, procs: int, max_ops: int, seconds: float) -> dict[str, Any]:
    """Copy the built queue, run ``procs`` workers sharing ``max_ops`` operations, collect the figures."""
    path = work / f"{kind}-{n}-{procs}"
    shutil.copytree(template, path, symlinks=True)
    go = work / f"go-{kind}-{n}-{procs}"
    outs = [work / f"out-{kind}-{n}-{procs}-{i}.json" for i in range(procs)]
    # draining: each process goes on until the queue is empty; bounded: the bound is shared out
    per = n if max_ops >= n else -(-max_ops // procs)
    ps = [spawn(kind, path, i, go, outs[i], per, seconds) for i in range(procs)]
    deadline = time.monotonic() + 120
    while not all(o.with_suffix(".ready").exists() for o in outs):  # imported and opened; then all start at once
        if time.monotonic() > deadline or any(p.poll() is not None for p in ps):
            raise SystemExit(f"{kind} at {n} stories x {procs} processes: a worker never got ready")
        time.sleep(0.01)
    t_go = time.monotonic()
    go.touch()
    hard = time.monotonic() + seconds + 300  # a worker's last operation may run past the bound; not for ever
    for p in ps:
        try:
            p.wait(timeout=max(1.0, hard - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    empty = {"ids": [], "claim": [], "complete": [], "start": t_go, "end": time.monotonic()}
    res = [json.loads(o.read_text()) if o.exists()
           else {**empty, "errors": [f"worker {i} killed or failed (exit {p.returncode})"]}
           for i, (o, p) in enumerate(zip(outs, ps, strict=True))]
    ids = [i for r in res for i in r["ids"]]
    claim = [x for r in res for x in r["claim"]]
    comp = [x for r in res for x in r["complete"]]
    wall = max(r["end"] for r in res) - t_go
    left = remaining(kind, path)
    dup = len(ids) - len(set(ids))
    drained = left == 0
    errors = [e for r in res for e in r["errors"]]
    ok = dup == 0 and len(set(ids)) + left == n and not errors
    shutil.rmtree(path, ignore_errors=True)
    return {"kind": kind, "n": n, "procs": procs, "ops": len(ids), "wall": wall, "rate": len(ids) / wall if wall > 0 else 0.0,
            "claim": claim, "complete": comp, "dup": dup, "left": left, "drained": drained, "ok": ok, "errors": errors,
            "bounded": not drained}


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(-(-q * len(s) // 100)) - 1))]


def ceiling(directory: Path, size: int, seconds: float = 1.5, min_reps: int = 5) -> dict[str, float]:
    """Median and p99 seconds of one durable write of ``size`` bytes: write, fsync, os.replace, dir fsync."""
    data = os.urandom(min(size, 1 << 16)) * (size // (1 << 16) + 1)
    data = data[:size]
    target = directory / "ceiling.json"
    times: list[float] = []
    stop = time.monotonic() + seconds
    while len(times) < min_reps or time.monotonic() < stop:
        t0 = time.perf_counter()
        tmp = directory / f".ceiling.{len(times)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        times.append(time.perf_counter() - t0)
        if len(times) >= 500:
            break
    target.unlink()
    return {"median": statistics.median(times), "p99": pct(times, 99), "n": len(times)}


# -- the SIGKILL checks ----------------------------------------------------------------------------
def kill_check(kind: str, work: Path, n: int) -> str:
    """SIGKILL a process holding an item it took but did not finish; a second process drains. What happened."""
    base = work / f"kill-{kind}"
    path = build_ours(base, n) if kind == "oodatcaa" else build_peer(kind, base, n)
    hold_out, go = work / f"hold-{kind}.json", work / f"go-kill-{kind}"
    p = spawn(kind, path, 90, go, hold_out, 1, 60, mode="hold")
    deadline = time.monotonic() + 60
    while not hold_out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)
    held = json.loads(hold_out.read_text())["held"]
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    note = ""
    if kind == "oodatcaa":
        from oodatcaa.core import leases
        from oodatcaa.core.store import QueueStore
        from oodatcaa.core.workspace import Workspace

        reclaimed = leases.reclaim_stale(QueueStore.for_workspace(Workspace(path)))
        note = f"reclaim_stale -> {reclaimed}; "
    out = work / f"drain-{kind}.json"
    go.touch()
    d = spawn(kind, path, 91, go, out, n + 10, 120, mode="resume" if kind == "persist-queue" else "drain")
    d.wait(timeout=300)
    ids = json.loads(out.read_text())["ids"]
    lost = n - len(set(ids)) - remaining(kind, path)
    verdict = (f"{held} held by the killed pid; {note}a second process took {len(ids)}/{n}, {held} {ids.count(held)}x, "
               f"duplicates {len(ids) - len(set(ids))}, lost {lost}")
    if kind == "persist-queue":
        verdict += "; " + pq_live_resume(work, n)
    return verdict


def pq_live_resume(work: Path, n: int) -> str:
    """persist-queue: ``auto_resume=True`` in a second process while the first still holds its item (alive)."""
    path = build_peer("persist-queue", work / "pq-live", n)
    hold_out, go = work / "hold-live.json", work / "go-live"
    p = spawn("persist-queue", path, 92, go, hold_out, 1, 60, mode="hold")
    deadline = time.monotonic() + 60
    while not hold_out.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.05)
    held = json.loads(hold_out.read_text())["held"]
    out = work / "drain-live.json"
    go.touch()
    d = spawn("persist-queue", path, 93, go, out, n + 10, 120, mode="resume")
    d.wait(timeout=300)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    ids = json.loads(out.read_text())["ids"]
    twice = "delivered twice" if ids.count(held) else "not delivered again"
    return (f"with the holder ALIVE, a second process opening with auto_resume=True took {held} "
            f"{ids.count(held)}x: the live holder's item is {twice}")


# -- the report ------------------------------------------------------------------------------------
def ms(x: float) -> str:
    """Seconds as milliseconds with one decimal; ``-`` for NaN (no sample)."""
    return "-" if x != x else f"{x * 1000:.1f}"


def print_tables(cells: list[dict[str, Any]], ceilings: dict[int, dict[str, float]], sizes: dict[int, int],
                 kills: dict[str, str]) -> None:
    """The durability list, the ceiling table, the throughput/latency table and the SIGKILL findings."""
    print("\ndurability (what each queue fsyncs):")
    for k, v in DURABILITY.items():
        print(f"  {k:<14} {v}")
    print("\nceiling: one durable write of the queue file's size (median of repeated writes, same run)\n")
    print("| stories | queue file | write median ms | write p99 ms | ceiling claim+complete/s |")
    print("|---|---|---|---|---|")
    for n, c in sorted(ceilings.items()):
        print(f"| {n:,} | {sizes[n] / 1024:,.0f} KiB | {ms(c['median'])} | {ms(c['p99'])} | {1 / (2 * c['median']):.1f} |")
    print("\nclaim+complete (get+ack; huey: dequeue) per second over all processes; latency per operation in ms;"
          " x ceil = throughput / ceiling at the same size;\n"
          "x write = claim median / the ceiling's median write at the same size\n")
    print("| queue | stories | procs | ops | per s | x ceil | claim med | x write | claim p99 | complete med | complete p99 "
          "| ok |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in cells:
        ceil = 1 / (2 * ceilings[c["n"]]["median"])
        ops = f"{c['ops']}" + (" (bounded)" if c["bounded"] else "")
        ok = "yes" if c["ok"] else f"NO (dup {c['dup']}, left {c['left']}" + (
            f", {len(c['errors'])} errors: {c['errors'][0][:80]})" if c["errors"] else ")")
        comp = c["complete"] if c["kind"] != "huey" else []
        claim_med = statistics.median(c["claim"]) if c["claim"] else float("nan")
        print(f"| {c['kind']} | {c['n']:,} | {c['procs']} | {ops} | {c['rate']:.1f} | {c['rate'] / ceil:.2f} | "
              f"{ms(claim_med)} | {claim_med / ceilings[c['n']]['median']:.2f} | {ms(pct(c['claim'], 99))} | "
              f"{ms(statistics.median(comp) if comp else float('nan'))} | {ms(pct(comp, 99))} | {ok} |")
    if kills:
        print("\nSIGKILL of a process holding a taken, unfinished item; then a second process drains:\n")
        for k, v in kills.items():
            print(f"- {k}: {v}")


def print_targets(cells: list[dict[str, Any]], ceilings: dict[int, dict[str, float]]) -> None:
    """Issue 11's queue targets, each met or missed and by how much (1-process cells)."""
    def cell(kind: str, n: int, procs: int = 1) -> dict[str, Any] | None:
        return next((c for c in cells if c["kind"] == kind and c["n"] == n and c["procs"] == procs), None)

    print("\ntargets (issue 11, part 4):")
    ours, pq = cell("oodatcaa", 100), cell("persist-queue", 100)
    if ours is not None and 100 in ceilings:
        ceil = 1 / (2 * ceilings[100]["median"])
        frac = ours["rate"] / ceil
        print(f"- claim+complete at 100 stories (1 process) >= 50 % of the ceiling: {frac * 100:.0f} % "
              f"({ours['rate']:.1f}/s of {ceil:.1f}/s): {'met' if frac >= 0.5 else f'MISSED by {(0.5 - frac) * 100:.0f} points'}")
    else:
        print("- claim+complete at 100 stories >= 50 % of the ceiling: not measured")
    if ours is not None and pq is not None:
        r = ours["rate"] / pq["rate"]
        print(f"- claim+complete at 100 stories >= persist-queue SQLiteAckQueue: {ours['rate']:.1f}/s vs {pq['rate']:.1f}/s "
              f"({r:.2f}x): {'met' if r >= 1 else f'MISSED by {(1 - r) * 100:.0f} %'}")
    else:
        print("- claim+complete at 100 stories >= persist-queue: not measured")
    big = cell("oodatcaa", 1000)
    if big is not None and big["claim"]:
        p99 = pct(big["claim"], 99)
        print(f"- p99 claim latency at 1,000 stories < 20 ms: {p99 * 1000:.1f} ms over {len(big['claim'])} claims: "
              f"{'met' if p99 < 0.020 else f'MISSED by {(p99 - 0.020) * 1000:.1f} ms ({p99 / 0.020:.1f}x)'}")
    else:
        print("- p99 claim latency at 1,000 stories < 20 ms: not measured")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--worker``, one worker process); 0 when it ran."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10, 100 and 1,000 (bounded) stories, 1 and 2 processes")
    parser.add_argument("--stories", default=None, help="comma-separated story counts (default 10,100,1000,10000)")
    parser.add_argument("--procs", default=None, help="comma-separated process counts (default 1,2,4,8)")
    parser.add_argument("--bounded-ops", type=int, default=20, help="operations at 10,000 stories (and at 1,000 in --quick)")
    parser.add_argument("--cell-seconds", type=float, default=None, help="time bound per cell (default 10, --quick 5)")
    parser.add_argument("--only", default=",".join(QUEUES), help="queues to run (comma-separated)")
    parser.add_argument("--no-kill", action="store_true", help="skip the SIGKILL checks")
    parser.add_argument("--worker", nargs=8, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, path, index, go, out, max_ops, seconds, mode = args.worker
        return worker(kind, Path(path), int(index), Path(go), Path(out), int(max_ops), float(seconds), mode)

    stories = [int(x) for x in (args.stories or ("10,100,1000" if args.quick else "10,100,1000,10000")).split(",")]
    procs = [int(x) for x in (args.procs or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    seconds = args.cell_seconds or (5.0 if args.quick else 10.0)
    kinds = [k for k in args.only.split(",") if k]
    unknown = sorted(set(kinds) - set(QUEUES))
    if unknown:
        parser.error(f"--only: unknown queue(s) {unknown}; choose from {', '.join(QUEUES)}")
    print(f"cores: {os.cpu_count()}  load average (1 min) at start: {os.getloadavg()[0]:.2f}  "
          f"stories {stories}  processes {procs}  cell bound {seconds:.0f} s  files under {tempfile.gettempdir()}")
    cells: list[dict[str, Any]] = []
    ceilings: dict[int, dict[str, float]] = {}
    sizes: dict[int, int] = {}
    kills: dict[str, str] = {}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        work = Path(tmp)
        for n in stories:
            bound = args.bounded_ops if (n >= 10_000 or (args.quick and n >= 1000)) else n
            t0 = time.monotonic()
            ours = build_ours(work / f"tmpl-oodatcaa-{n}", n)
            from oodatcaa.core.workspace import Workspace

            sizes[n] = Workspace(ours).queue_path.stat().st_size
            print(f"\n{n:,} stories: queue file {sizes[n] / 1024:,.0f} KiB built in {time.monotonic() - t0:.1f} s", flush=True)
            ceilings[n] = ceiling(Workspace(ours).work_dir, sizes[n])
            templates = {"oodatcaa": ours}
            for kind in kinds:
                if kind != "oodatcaa":
                    templates[kind] = build_peer(kind, work / f"tmpl-{kind}-{n}", n)
            for p in procs:
                for kind in kinds:
                    c = run_cell(kind, templates[kind], work, n, p, bound, seconds)
                    cells.append(c)
                    print(f"  {kind:<14} x{p}: {c['ops']} ops, {c['rate']:.1f}/s, ok={c['ok']}", flush=True)
            for t in templates.values():
                shutil.rmtree(t, ignore_errors=True)
        if not args.no_kill:
            for kind in kinds:
                kills[kind] = kill_check(kind, work, 10)
    print_tables(cells, ceilings, sizes, kills)
    print_targets(cells, ceilings)
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}; {time.monotonic() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
