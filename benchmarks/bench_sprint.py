#!/usr/bin/env python3
"""Trivial stories end to end through the real agents: ``oodatcaa run`` in a fresh ``git init`` repository.

Three measurements, each in its own fresh repository (``oodatcaa init``, the shipped ``config.toml``
defaults unless ``--set`` says otherwise, ``oodatcaa sprint new --backlog``, then ``oodatcaa run``):

1. **per story**: N independent stories whose one job is ``command: "true"`` (plan, build, test, merge,
   tag), N = 20, 100, 500 (``--quick``: 20, 100). Wall seconds of ``oodatcaa run`` from start to exit,
   per story (a run still going at ``--run-seconds``, 360, gives up and is reported as bounded, per
   story finished); also when the first story was seen done (start-up and the first story's way
   through the roles) and the steady time per story after it (first to last story done / (N - 1),
   from the queue file read every second); and CPU-seconds per story: user + system time of
   ``oodatcaa run`` and everything it waited for — the agents, their git and job processes — from
   ``getrusage(RUSAGE_CHILDREN)`` before and after.
2. **idle overhead**: 100 stories, T001's job ``sleep 900`` and T002..T100 depending on T001. Once the
   sleep runs and the queue file has not changed for 3 s (the Planner has planned the 99 waiting stories;
   at most ``--settle-seconds``, 300, of waiting, ``--quick`` 90; the output says when it never settled),
   the CPU of the whole process tree of ``oodatcaa run`` (``/proc/<pid>/stat``: utime + stime + the
   reaped children's cutime + cstime, summed over the tree) is sampled over ``--idle-seconds`` (20,
   ``--quick`` 10); cores used =
   CPU-seconds / wall seconds. Then the run is stopped (SIGTERM to its process group, SIGKILL after 30 s).
3. **parallel efficiency**: 9 independent stories whose job is ``sleep 10``, ``[wip] builder = 3``.
   Serial time = 9 x 10 s (the jobs' own time, not a measured serial run). Target: wall <= 1.1 x serial / 3
   + 9 x c, where c is the per-story seconds measured in (1) at the smallest N (the coordination cost of
   each of the 9 stories; merges are serial, so it does not divide by 3).

Targets (issue 11, part 4) are printed with met / missed and by how much: per story <= 0.3 s at 100
stories (on this machine's cores: printed), per story at 100 <= 1.25 x per story at 20, idle < 2 % of one
core. Nothing is asserted; the exit status is 0 unless a run failed to finish its sprint.

Usage::

    python benchmarks/bench_sprint.py [--quick] [--sizes 20,100,500] [--skip trivial,idle,parallel]
                                      [--set agents.poll_seconds=0.2 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
CLK_TCK = os.sysconf("SC_CLK_TCK")

STORY = """\
### T{n:03d}: {title}
**Type:** Story  **Complexity:** S  **Priority:** {priority}  **Dependencies:** {deps}
**Description:** A story whose job is `{run}`.

```job
kind: command
run: "{run}"
```

**Acceptance Criteria:**
- [ ] the command succeeds `metric: command.returncode == 0` (critical)
"""


def backlog(stories: list[tuple[str, str]]) -> str:
    """A sprint backlog of ``(run, dependencies)`` stories T001.. (the format of docs/backlog-format.md)."""
    if len(stories) > 999:
        raise ValueError(f"{len(stories)} stories: IDs T001..T999 hold at most 999")
    head = "# Bench sprint\n\n**Sprint Goal:** trivial stories end to end.\n\n## Items\n\n"
    return head + "\n".join(STORY.format(n=i, title=f"story {i}", priority=1, deps=deps, run=run)
                            for i, (run, deps) in enumerate(stories, start=1))


def oodatcaa(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m oodatcaa -C repo ARGS``; ``SystemExit`` with its output when it fails."""
    out = subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(repo), *args], capture_output=True, text=True,
                         timeout=timeout, env=ENV)
    if out.returncode != 0:
        raise SystemExit(f"oodatcaa {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return out


def set_key(config: Path, section: str, key: str, value: str) -> None:
    """Put ``key = value`` (TOML) under ``[section]`` of a ``config.toml`` written by ``oodatcaa init``.

    Raises ``SystemExit`` naming the key when the result is not valid TOML (e.g. an unquoted string).
    """
    lines = config.read_text(encoding="utf-8").splitlines()
    at = next((i for i, line in enumerate(lines) if line.split("#")[0].strip() == f"[{section}]"), None)
    if at is None:
        lines += ["", f"[{section}]", f"{key} = {value}"]
    else:
        lines.insert(at + 1, f"{key} = {value}")
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SystemExit(f"--set {section}.{key}={value}: not valid TOML ({exc}); quote strings: KEY='\"text\"'") from None
    config.write_text(text, encoding="utf-8")


#: ``--set`` values as (section, key, value); applied to every repository's config.toml
SETTINGS: list[tuple[str, str, str]] = []


def prepare(work: Path, name: str, stories: list[tuple[str, str]], builders: int | None = None) -> Path:
    """A fresh repository with a workspace and a started sprint of ``stories``; returns its root."""
    repo = work / name
    repo.mkdir(parents=True)
    for argv in (["init", "-q", "-b", "main"], ["config", "user.name", "bench"], ["config", "user.email", "bench@example.com"],
                 ["commit", "-q", "--allow-empty", "-m", "[docs] bench: initial commit"]):
        subprocess.run(["git", "-C", str(repo), *argv], check=True)
    oodatcaa(repo, "init")
    settings = SETTINGS + ([("wip", "builder", str(builders))] if builders is not None else [])
    for section, key, value in settings:
        set_key(repo / ".oodatcaa" / "config.toml", section, key, value)
    if settings:
        subprocess.run(["git", "-C", str(repo), "commit", "-qam", "[docs] bench: config"], check=True)
    (work / f"{name}.md").write_text(backlog(stories), encoding="utf-8")
    oodatcaa(repo, "sprint", "new", "--backlog", str(work / f"{name}.md"), timeout=600)
    return repo


def children_cpu() -> float:
    """User + system CPU seconds of this process's waited-for children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stories_by_status(repo: Path) -> dict[str, list[str]]:
    """Story IDs by status, read from ``SPRINT_QUEUE.json`` (written atomically, so no lock is needed)."""
    out: dict[str, list[str]] = {}
    try:
        queue = json.loads((repo / ".oodatcaa" / "work" / "SPRINT_QUEUE.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return out
    for task in queue.get("tasks", []):
        out.setdefault(task.get("status", "?"), []).append(task.get("id", "?"))
    return out


def run_sprint(repo: Path, max_seconds: float, *, allow_bound: bool = False) -> dict[str, Any]:
    """``oodatcaa run`` to the end of the sprint; wall and CPU seconds (the run and all it waited for).

    With ``allow_bound`` a run that gives up at ``max_seconds`` (exit 6) counts: ``bounded`` is set and
    ``done`` says how many stories finished. A run whose every story is done or cancelled except some
    in ``needs_manual`` (a failure the sprint cannot finish without a person) is stopped and counted
    as ``stuck``, with the stories' last errors. Any other failure raises ``SystemExit`` with the output.
    """
    cpu0, t0 = children_cpu(), time.perf_counter()
    logs = repo.parent / f"{repo.name}-run.log"
    with open(logs, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "oodatcaa", "-C", str(repo), "run", "--max-seconds", str(max_seconds)],
                                stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        stuck: list[str] = []
        first_done = last_done = None  # when the first story was seen done, and when the count last grew
        seen = 0
        while proc.poll() is None:
            time.sleep(1.0)
            by = stories_by_status(repo)
            if len(by.get("done", [])) > seen:
                seen = len(by["done"])
                last_done = time.perf_counter() - t0
                first_done = last_done if first_done is None else first_done
            if by.get("needs_manual") and set(by) <= {"done", "cancelled", "needs_manual"}:
                stuck = by["needs_manual"]
                stop(proc)
                break
            if time.perf_counter() - t0 > max_seconds + 180:
                stop(proc)
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    by = stories_by_status(repo)
    done = len(by.get("done", []))
    completed = proc.returncode == 0 and not stuck
    bounded = allow_bound and proc.returncode == 6 and done > 0
    if not (completed or bounded or (stuck and done)):
        raise SystemExit(f"oodatcaa run exited {proc.returncode} with {done} stories done:\n{logs.read_text()[-3000:]}")
    errors = []
    if stuck:
        for task in json.loads((repo / ".oodatcaa" / "work" / "SPRINT_QUEUE.json").read_text()).get("tasks", []):
            if task.get("status") == "needs_manual":
                errors.append(f"{task.get('id')}: {str(task.get('last_error'))[:300]}")
    steady = (last_done - first_done) / (seen - 1) if first_done is not None and last_done is not None and seen > 1 else None
    return {"wall": wall, "cpu": cpu, "done": done, "bounded": bounded, "stuck": stuck, "errors": errors,
            "first_done": first_done, "steady": steady}


# -- the process tree, from /proc ------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, utime + stime + cutime + cstime in seconds) of ``pid``; None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / CLK_TCK


def tree(root: int) -> dict[int, float]:
    """CPU seconds of ``root`` and every descendant, by pid (reaped children counted in their parent)."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = s
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid][1]
            todo += kids.get(pid, [])
    return out


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` from ``/proc``; empty when it is gone."""
    try:
        return [a for a in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0") if a]
    except OSError:
        return []


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the run's process group (the agents hand work back), SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def idle_overhead(work: Path, window: float, settle_limit: float) -> dict[str, Any]:
    """Cores used by the whole ``oodatcaa run`` tree while 99 stories wait on one ``sleep 900`` job."""
    stories = [("sleep 900", "None")] + [("true", "T001")] * 99
    repo = prepare(work, "idle", stories)
    queue = repo / ".oodatcaa" / "work" / "SPRINT_QUEUE.json"
    proc = subprocess.Popen([sys.executable, "-m", "oodatcaa", "-C", str(repo), "run", "--max-seconds", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not any(Path(cmdline(p)[0]).name == "sleep" for p in tree(proc.pid) if cmdline(p)):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("idle: the sleep job never started")
            time.sleep(0.2)
        started = time.monotonic()
        last, quiet_since = queue.stat().st_mtime, time.monotonic()
        while time.monotonic() - quiet_since < 3 and time.monotonic() - started < settle_limit:
            time.sleep(0.2)
            if (m := queue.stat().st_mtime) != last:
                last, quiet_since = m, time.monotonic()
        settled = time.monotonic() - started
        quiet = time.monotonic() - quiet_since >= 3
        before, t0 = tree(proc.pid), time.monotonic()
        time.sleep(window)
        after, seconds = tree(proc.pid), time.monotonic() - t0
        names = {p: " ".join(cmdline(p)[-3:]) or str(p) for p in after}
    finally:
        stop(proc)
    # a process that exited inside the window moved its CPU into its parent's cutime: the tree's sum is kept
    cpu = sum(after.values()) - sum(before.values())
    per = sorted(((after[p] - before.get(p, 0.0), names[p]) for p in after), reverse=True)
    return {"cores": cpu / seconds, "seconds": seconds, "cpu": cpu, "settled": settled, "quiet": quiet,
            "procs": len(after), "top": per[:6]}


def parallel(work: Path, c: float) -> dict[str, float]:
    """9 independent ``sleep 10`` stories with 3 builders; wall against serial / 3."""
    repo = prepare(work, "parallel", [("sleep 10", "None")] * 9, builders=3)
    r = run_sprint(repo, 600)
    serial = 9 * 10.0
    target = 1.1 * serial / 3 + 9 * c
    return {**r, "serial": serial, "ideal": serial / 3, "target": target, "efficiency": (serial / 3) / r["wall"]}


def verdict(ok: bool, miss: str) -> str:
    """``met``, or ``MISSED`` and by how much."""
    return "met" if ok else f"MISSED {miss}"


def report(rows: list[tuple[int, dict[str, Any]]], idle: dict[str, Any] | None, par: dict[str, Any] | None) -> None:
    """The per-story table, the idle overhead, the parallel efficiency and the targets (met / missed)."""
    if rows:
        print("\ntrivial stories end to end (`command: \"true\"`: plan, build, test, merge, tag)\n")
        print("| stories | done | wall s | s per story | first done s | steady s per story | CPU-s | CPU-s per story "
              "| cores used |")
        print("|---|---|---|---|---|---|---|---|---|")
        for n, r in rows:
            done = f"{r['done']}" + (" (bounded: gave up at --run-seconds)" if r["bounded"] else "") + (
                f" (STUCK: {len(r['stuck'])} needs_manual, run stopped)" if r["stuck"] else "")
            first = "-" if r["first_done"] is None else f"{r['first_done']:.1f}"
            steady = "-" if r["steady"] is None else f"{r['steady']:.3f}"
            print(f"| {n} | {done} | {r['wall']:.1f} | {r['wall'] / r['done']:.3f} | {first} | {steady} | {r['cpu']:.1f} "
                  f"| {r['cpu'] / r['done']:.3f} | {r['cpu'] / r['wall']:.2f} |")
    for n, r in rows:
        for e in r["errors"]:
            print(f"  {n} stories, needs_manual: {e}")
    if idle:
        settled = (f"{idle['settled']:.1f} s of settling" if idle["quiet"]
                   else f"{idle['settled']:.0f} s WITHOUT settling (the queue still changed: not idle)")
        print(f"\nidle overhead: 100 stories, 99 waiting on T001 (`sleep 900`); {idle['procs']} processes in the tree, "
              f"sampled {idle['seconds']:.1f} s after {settled}: {idle['cpu']:.3f} CPU-s = "
              f"{idle['cores']:.4f} cores ({idle['cores'] * 100:.2f} % of one core)")
        for cpu, name in idle["top"]:
            print(f"  {cpu:7.3f} CPU-s  {name}")
    if par:
        print(f"\nparallel efficiency: 9 x `sleep 10`, 3 builders: wall {par['wall']:.1f} s; serial {par['serial']:.0f} s, "
              f"serial / 3 = {par['ideal']:.0f} s; efficiency {par['efficiency'] * 100:.0f} %; CPU {par['cpu']:.1f} s")
        for e in par["errors"]:
            print(f"  STUCK, needs_manual: {e}")

    print("\ntargets (issue 11, part 4):")
    by = {n: {**r, "per": r["wall"] / r["done"]} for n, r in rows}
    if 100 in by:
        s100 = by[100]["per"]
        caveat = " (the run was stuck or bounded: per story finished)" if by[100]["stuck"] or by[100]["bounded"] else ""
        print(f"- per story at 100 stories <= 0.3 s on {os.cpu_count()} cores: {s100:.3f} s{caveat}: "
              + verdict(s100 <= 0.3, f"by {s100 - 0.3:.3f} s ({s100 / 0.3:.1f}x)"))
    if 100 in by and 20 in by:
        r = by[100]["per"] / by[20]["per"]
        print(f"- per story at 100 <= 1.25 x per story at 20: {r:.2f}x: " + verdict(r <= 1.25, f"by {r - 1.25:.2f}"))
    if idle:
        pct = idle["cores"] * 100
        print(f"- idle with 100 waiting stories < 2 % of one core: {pct:.2f} %: " + verdict(pct < 2, f"by {pct - 2:.2f} points"))
    if par:
        at = rows[0][0] if rows else "?"
        print(f"- parallel: wall <= 1.1 x serial / 3 + 9 x c = {par['target']:.1f} s (c = per-story s at {at} stories): "
              f"{par['wall']:.1f} s: " + verdict(par["wall"] <= par["target"], f"by {par['wall'] - par['target']:.1f} s"))


def main(argv: list[str] | None = None) -> int:
    """Run the three measurements and print their tables and the targets; 0 when they ran."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 20 and 100; idle: a 10 s window after at most 90 s of settling")
    parser.add_argument("--sizes", default=None, help="comma-separated story counts (default 20,100,500)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: trivial, idle, parallel")
    parser.add_argument("--run-seconds", type=float, default=360.0,
                        help="bound of each trivial run (oodatcaa run --max-seconds); a bounded run reports the stories done")
    parser.add_argument("--idle-seconds", type=float, default=None, help="the idle sampling window (default 20 s)")
    parser.add_argument("--settle-seconds", type=float, default=None,
                        help="longest wait for the queue to stop changing before the idle window (default 300 s)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config.toml setting for every run, e.g. agents.poll_seconds=0.2 (default: the shipped defaults)")
    args = parser.parse_args(argv)
    args.idle_seconds = args.idle_seconds or (10.0 if args.quick else 20.0)
    args.settle_seconds = args.settle_seconds or (90.0 if args.quick else 300.0)
    for item in args.set:
        name, sep, value = item.partition("=")
        section, dot, key = name.partition(".")
        if not (sep and dot and section and key and value):
            parser.error(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. agents.poll_seconds=0.2")
        SETTINGS.append((section, key, value))
    sizes = [int(x) for x in (args.sizes or ("20,100" if args.quick else "20,100,500")).split(",")]
    skip = {x for x in args.skip.split(",") if x}
    print(f"cores: {os.cpu_count()}  load average (1 min) at start: {os.getloadavg()[0]:.2f}  "
          "CPU: getrusage(RUSAGE_CHILDREN) of `oodatcaa run` (agents, git, jobs); idle: /proc of the run's process tree")
    print("config.toml: " + (", ".join(f"[{s}] {k} = {v}" for s, k, v in SETTINGS) or "the shipped defaults")
          + " (the parallel run adds [wip] builder = 3)")
    start = time.monotonic()
    rows: list[tuple[int, dict[str, float]]] = []
    idle = par = None
    with tempfile.TemporaryDirectory(prefix="bench-sprint-") as tmp:
        work = Path(tmp)
        if "trivial" not in skip:
            for n in sizes:
                repo = prepare(work, f"trivial-{n}", [("true", "None")] * n)
                r = run_sprint(repo, args.run_seconds, allow_bound=True)
                rows.append((n, r))
                print(f"  {n} trivial stories: {r['done']} done, {r['wall']:.1f} s wall, {r['cpu']:.1f} CPU-s", flush=True)
        if "idle" not in skip:
            idle = idle_overhead(work, args.idle_seconds, args.settle_seconds)
            print(f"  idle: {idle['cores']:.4f} cores", flush=True)
        if "parallel" not in skip:
            c = rows[0][1]["wall"] / rows[0][1]["done"] if rows else 0.0
            par = parallel(work, c)
            print(f"  parallel: {par['wall']:.1f} s wall", flush=True)

    report(rows, idle, par)
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}; {time.monotonic() - start:.0f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
