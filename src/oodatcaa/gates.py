"""Workspace quality gates: the ``[[gates]]`` of ``config.toml``, run on a merge result before it lands.

Merge-queue semantics: the Integrator (and ``oodatcaa revert``) builds the commit that would become the
trunk in a detached integration checkout, runs every gate there, and moves the trunk to exactly that
commit only when all pass — so the trunk never holds an untested merge.

A gate is a command line run with bash through :func:`oodatcaa.core.process.run_process` (its own
process group, ``timeout_s``), cwd = the checkout. It fails when it exits non-zero, times out, cannot
start, is killed by a signal, or is not found (bash's exit 127). With ``baseline = "trunk"`` the same
command also runs on the trunk's commit; its normalised output lines are cached in
``state/gates/<trunk sha>/<gate>-<hash of the command>.txt``, and the gate then fails only on lines
the trunk did not print (one problem per line: the original's "0 new errors against a baseline of
28"), or when it could not run at all. Lines are compared stripped, with the checkout's own path
replaced by ``.``, so the two checkouts' paths do not count as new problems.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.config import GateSpec
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.process import CancelSignal, ProcessResult, child_env, run_process
from oodatcaa.core.workspace import Workspace

#: Characters of a gate's output kept in its failure and report.
OUTPUT_TAIL_CHARS = 3000
#: New problem lines listed in a failure's details (the rest are counted).
MAX_NEW_LINES = 50


@dataclass(frozen=True)
class GateResult:
    """How one gate went on one commit.

    Attributes:
        gate, command: the gate's ``name`` and ``run``.
        passed: the gate let the commit through.
        commit: the commit it ran on.
        returncode: the command's exit status (negative: killed by that signal); None when it never ran.
        reason: why it failed (``exit 1``, ``timed out after 5 s``, ``command not found (exit 127)``,
            ``2 new problem lines against a baseline of 28``); None when it passed.
        output_tail: the last :data:`OUTPUT_TAIL_CHARS` characters of its output.
        duration_s: wall seconds it ran.
        new_lines: with a baseline, the output lines the trunk did not print (at most :data:`MAX_NEW_LINES`).
        baseline_lines: with a baseline, how many problem lines the trunk printed; else None.
    """

    gate: str
    command: str
    passed: bool
    commit: str
    returncode: int | None
    reason: str | None
    output_tail: str
    duration_s: float
    new_lines: list[str] = field(default_factory=list)
    baseline_lines: int | None = None

    def failure(self, item: str) -> Failure:
        """The ``gate_failed`` :class:`Failure` of a failed gate (details: gate, command, returncode, reason, output_tail)."""
        details: dict[str, object] = {"gate": self.gate, "command": self.command, "returncode": self.returncode,
                                      "reason": self.reason, "output_tail": self.output_tail, "commit": self.commit}
        if self.baseline_lines is not None:
            details.update(new_lines=self.new_lines, baseline_lines=self.baseline_lines)
        return Failure.of(FailureKind.GATE_FAILED, f"gate {self.gate!r} failed on the merge result: {self.reason}",
                          item=item, **details)

    def markdown(self) -> str:
        """A report section: the gate, its command, the verdict and the output tail (fenced, as data)."""
        verdict = "passed" if self.passed else f"**failed**: {self.reason}"
        lines = [f"### Gate `{self.gate}` — {verdict}", "", f"- **Command:** `{self.command}`",
                 f"- **Commit:** `{self.commit}`", f"- **Exit status:** {self.returncode}",
                 f"- **Duration:** {self.duration_s:.2f} s"]
        if self.baseline_lines is not None:
            lines.append(f"- **Baseline (trunk):** {self.baseline_lines} problem line(s); new: {len(self.new_lines)}")
            if self.new_lines:
                lines += ["", "New problem lines:", "", _fence("\n".join(self.new_lines))]
        if not self.passed and self.output_tail.strip():
            lines += ["", "Output tail:", "", _fence(self.output_tail.rstrip())]
        return "\n".join(lines) + "\n"


def _fence(text: str) -> str:
    # a fence longer than any backtick run inside keeps the output from closing it (output is data)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def gate_slug(spec: GateSpec) -> str:
    """A file-name-safe key of a gate: its name's safe characters plus a hash of its command."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", spec.name).strip("-.")[:40] or "gate"
    return f"{safe}-{hashlib.sha256(spec.run.encode('utf-8')).hexdigest()[:10]}"


def problem_lines(text: str, checkout: Path) -> list[str]:
    """The output's non-empty lines, stripped, with the checkout's path (absolute) replaced by ``.``."""
    # longest first: the resolved path may contain the given one (or the reverse, through a symlink)
    roots = sorted({str(Path(checkout)), str(Path(checkout).resolve())}, key=len, reverse=True)
    lines = []
    for line in text.splitlines():
        if line.strip():
            for root in roots:
                line = line.replace(root, ".")
            lines.append(line.strip())
    return lines


def _execute(spec: GateSpec, checkout: Path, log_file: Path,
             cancel: CancelSignal | None) -> tuple[ProcessResult | None, str | None]:
    """Run the gate's command; ``(result, reason it could not run or failed to finish)``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = run_process(spec.run, cwd=checkout, env=child_env(), timeout_s=spec.timeout_s,
                             cancel=cancel, log_file=log_file, tail_chars=OUTPUT_TAIL_CHARS)
    except OSError as exc:  # no bash, a missing checkout: the gate cannot pass
        return None, f"could not start: {exc}"
    if result.timed_out:
        return result, f"timed out after {spec.timeout_s:g} s"
    if result.cancelled:
        return result, "cancelled (the agent is stopping or lost its lease)"
    if result.signal_name is not None:
        return result, f"killed by {result.signal_name}"
    if result.returncode == 127:
        return result, "command not found (exit 127)"
    if result.returncode == 126:
        return result, "command not executable (exit 126)"
    return result, None


def baseline_path(ws: Workspace, spec: GateSpec, commit: str) -> Path:
    """Where the trunk commit's problem lines for ``spec`` are cached."""
    return ws.state_dir / "gates" / commit / f"{gate_slug(spec)}.txt"


def trunk_baseline(ws: Workspace, spec: GateSpec, commit: str, checkout: Path,
                   cancel: CancelSignal | None = None) -> tuple[list[str] | None, str | None]:
    """The problem lines ``spec`` prints on trunk commit ``commit``, from the cache or by running it in ``checkout``.

    ``checkout`` must be a clean checkout of ``commit`` (only used on a cache miss). Returns
    ``(lines, None)``, or ``(None, reason)`` when the baseline run could not finish (nothing cached).
    """
    cached = baseline_path(ws, spec, commit)
    if cached.is_file():
        return cached.read_text(encoding="utf-8").splitlines(), None
    log = cached.with_suffix(".log")
    result, reason = _execute(spec, checkout, log, cancel)
    if reason is not None or result is None:
        return None, f"the trunk baseline run {reason}"
    lines = problem_lines(log.read_text(encoding="utf-8", errors="replace"), checkout)
    atomic_write_text(cached, "".join(line + "\n" for line in lines))
    return lines, None


def run_gate(ws: Workspace, spec: GateSpec, checkout: Path, commit: str, *,
             baseline: list[str] | None = None, cancel: CancelSignal | None = None) -> GateResult:
    """Run one gate in ``checkout`` (a clean checkout of ``commit``); its full output is kept in
    ``state/gates/<commit>/<gate>.log``. With ``baseline`` (the trunk's problem lines) only new lines fail it."""
    log = ws.state_dir / "gates" / commit / f"{gate_slug(spec)}.log"
    result, reason = _execute(spec, checkout, log, cancel)
    rc = result.returncode if result is not None else None

    def verdict(why: str | None, new: list[str] | None = None) -> GateResult:
        return GateResult(gate=spec.name, command=spec.run, passed=why is None, commit=commit, returncode=rc,
                          reason=why, output_tail=result.output_tail if result is not None else "",
                          duration_s=result.duration_s if result is not None else 0.0, new_lines=(new or [])[:MAX_NEW_LINES],
                          baseline_lines=None if baseline is None else len(baseline))

    if reason is not None or baseline is None:
        return verdict(reason if reason is not None else (None if rc == 0 else f"exit {rc}"))
    known = set(baseline)
    new: list[str] = []
    for line in problem_lines(log.read_text(encoding="utf-8", errors="replace"), checkout):
        if line not in known and line not in new:
            new.append(line)
    return verdict(f"{len(new)} new problem line(s) against a baseline of {len(baseline)}" if new else None, new)


def run_gates(ws: Workspace, gates: Sequence[GateSpec], checkout: Path, commit: str, *,
              trunk_commit: str, trunk_checkout: Path | None = None,
              prepare_trunk: Callable[[], Path] | None = None,
              cancel: CancelSignal | None = None) -> list[GateResult]:
    """Run ``gates`` in order on ``commit`` (checked out at ``checkout``), stopping at the first failure.

    ``trunk_commit`` is the trunk commit the merge result was built on; a gate with ``baseline =
    "trunk"`` compares against it. On a baseline cache miss ``prepare_trunk()`` is called once to get a
    clean checkout of ``trunk_commit`` (a path). Returns the results run (the last one failed, or all passed).
    """
    results: list[GateResult] = []
    for spec in gates:
        baseline = None
        if spec.baseline == "trunk":
            if trunk_checkout is None and not baseline_path(ws, spec, trunk_commit).is_file():
                trunk_checkout = prepare_trunk() if prepare_trunk is not None else None
            baseline, why = trunk_baseline(ws, spec, trunk_commit, trunk_checkout or checkout, cancel)
            if baseline is None:
                results.append(GateResult(gate=spec.name, command=spec.run, passed=False, commit=commit, returncode=None,
                                          reason=why, output_tail="", duration_s=0.0))
                break
        results.append(run_gate(ws, spec, checkout, commit, baseline=baseline, cancel=cancel))
        if not results[-1].passed:
            break
    return results
