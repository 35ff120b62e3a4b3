"""The Check decision, recorded as the original process did: its rationale, and ``SPRINT_DISCUSS.md``.

:func:`rationale` writes why the Tester decided what it did (critical criteria, the pass ratio
against the accept and gray-zone ratios, regressions against their baselines, criteria only a
person can settle, the gray-zone rule) as Markdown lines for the Tester's report. A decision that a
rule could not make alone — a ``needs_manual`` verdict (a person must decide) or one made by the
gray-zone rule (the policy's ``gray_zone_decision``) — is also appended to
``.oodatcaa/work/SPRINT_DISCUSS.md`` by :func:`append_discussion`, one entry per decision, with its
date, story, verdict, rationale and evidence. ``sprint complete`` moves the file into the sprint's
archive.

Text from the backlog and from job output (criterion text, observed values, details) is data: it
is shown inside code spans with backticks and newlines neutralised, so it never becomes Markdown.
"""

from __future__ import annotations

import re
from pathlib import Path

from filelock import FileLock

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock, utc_stamp
from oodatcaa.core.criteria import CheckPolicy, CriterionResult, Verdict, regression_summary
from oodatcaa.core.workspace import Workspace

__all__ = ["DISCUSS_HEADER", "append_discussion", "archive_discussion", "discuss_path", "needs_discussion", "rationale"]

DISCUSS_HEADER = (
    "# SPRINT_DISCUSS\n\nCheck decisions that a rule did not make alone: gray-zone verdicts and those left to a "
    "person (newest last).\n"
)


def discuss_path(ws: Workspace) -> Path:
    """``.oodatcaa/work/SPRINT_DISCUSS.md``."""
    return ws.work_dir / "SPRINT_DISCUSS.md"


def _literal(text: str, limit: int = 300) -> str:
    """``text`` as one inline code span: whitespace folded, cut at ``limit`` characters, backticks fenced."""
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    if not flat:
        return "(empty)"
    longest = max((len(m) for m in re.findall(r"`+", flat)), default=0)
    fence = "`" * (longest + 1)
    return f"{fence} {flat} {fence}" if longest else f"`{flat}`"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.4g} %"


def rationale(results: list[CriterionResult], verdict: Verdict, policy: CheckPolicy | None = None) -> list[str]:
    """The reasons behind ``verdict`` as Markdown bullet lines (no trailing newlines), in the order of the rules.

    ``policy`` must be the one :func:`~oodatcaa.core.criteria.decide` used (its ratios and
    regression thresholds are quoted); the defaults when ``None``.
    """
    policy = policy or CheckPolicy()
    lines: list[str] = []
    critical = [r for r in results if r.critical]
    bad = [r for r in critical if r.outcome != "PASS"]
    if not critical:
        lines.append("- **Critical criteria:** none")
    elif not bad:
        lines.append(f"- **Critical criteria:** all {len(critical)} passed ({', '.join(r.criterion_id for r in critical)})")
    else:
        shown = "; ".join(f"{r.criterion_id} {r.outcome}: {_literal(r.detail or r.observed, 160)}" for r in bad)
        lines.append(f"- **Critical criteria not passing:** {shown}")
    if verdict.total:
        if verdict.pass_ratio >= policy.accept_ratio:
            zone = f"at or above the accept ratio {_pct(policy.accept_ratio)}"
        elif verdict.pass_ratio >= policy.gray_zone_ratio:
            zone = f"in the gray zone ({_pct(policy.gray_zone_ratio)} to {_pct(policy.accept_ratio)})"
        else:
            zone = f"below the gray-zone ratio {_pct(policy.gray_zone_ratio)}"
        lines.append(f"- **Pass ratio:** {verdict.passed}/{verdict.total} = {_pct(verdict.pass_ratio)}, {zone}")
    else:
        lines.append("- **Pass ratio:** no criteria to count")
    regressions = [r for r in results if r.regression is not None]
    if regressions:
        lines.append(f"- **Regressions** (investigate above {policy.regression_investigate_percent:g} % worse, "
                     f"fail above {policy.regression_fail_percent:g} %):")
        lines += [f"  - {_literal(regression_summary(r))}" for r in regressions]
    else:
        lines.append("- **Regressions:** none checked")
    unverified = [r.criterion_id for r in results if r.outcome == "UNVERIFIED"]
    lines.append(f"- **Need a person (unverified):** {', '.join(unverified) if unverified else 'none'}")
    if verdict.gray_zone:
        lines.append(f"- **Gray-zone decision:** `{policy.gray_zone_decision}` (config `[check] gray_zone_decision`)")
    lines.append(f"- **Decision:** `{verdict.decision}` — {_literal(verdict.reason, 1000)}")
    return lines


def needs_discussion(verdict: Verdict) -> bool:
    """Whether the decision goes into ``SPRINT_DISCUSS.md``: ``needs_manual``, or made by the gray-zone rule."""
    return verdict.decision == "needs_manual" or verdict.gray_zone


def append_discussion(ws: Workspace, *, task_id: str, title: str, verdict: Verdict, rationale_lines: list[str],
                      evidence: list[str], clock: Clock | None = None) -> Path:
    """Append one decision entry to ``SPRINT_DISCUSS.md``; returns the file's path.

    The entry's header holds the date (UTC), the story and the verdict; then the rationale lines (as
    :func:`rationale` writes them) and the evidence lines (Markdown bullets written by the caller:
    the report, the results commit, the branch). Under the file's lock the whole file is read, the
    entry added and the file replaced atomically, then read back: concurrent Testers never lose or
    tear an entry. Raises ``OSError`` when the file does not read back as written.
    """
    now = (clock or Clock()).now()
    kind = "gray zone" if verdict.gray_zone else "a person decides"
    entry = (
        f"\n## {utc_stamp(now)} — {task_id} — {verdict.decision.upper()} ({kind})\n\n"
        f"- **Story:** {task_id} {_literal(title, 200)}\n- **Verdict:** `{verdict.decision}`\n\n"
        "### Rationale\n\n" + "\n".join(rationale_lines) + "\n\n### Evidence\n\n" + "\n".join(evidence) + "\n"
    )
    return _append_entry(ws, task_id, entry)


def append_person_decision(ws: Workspace, *, task_id: str, title: str, decision: str, who: str, reason: str,
                           outcome: str, clock: Clock | None = None) -> Path:
    """Append one entry for a person's decision (``approve``, ``reject``, ``resolve --accept`` ...) to ``SPRINT_DISCUSS.md``.

    ``decision`` is the command as typed (``resolve --accept``), ``who`` the git identity
    (``Name <email>``), ``reason`` the note or reason given (may be empty), ``outcome`` the status the
    story went to. Same locking and read-back as :func:`append_discussion`; raises ``OSError`` likewise.
    """
    now = (clock or Clock()).now()
    entry = (
        f"\n## {utc_stamp(now)} — {task_id} — {decision.upper()} (a person decided)\n\n"
        f"- **Story:** {task_id} {_literal(title, 200)}\n- **Decision:** `{decision}` by {_literal(who, 200)}\n"
        f"- **Reason:** {_literal(reason, 1000) if reason.strip() else '(none given)'}\n"
        f"- **Outcome:** the story is `{outcome}`\n"
    )
    return _append_entry(ws, task_id, entry)


def _append_entry(ws: Workspace, task_id: str, entry: str) -> Path:
    path = discuss_path(ws)
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(ws.lock_path("sprint_discuss")), timeout=60):
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if not old.strip():
            old = DISCUSS_HEADER
        text = old if old.endswith("\n") else old + "\n"
        text += entry
        atomic_write_text(path, text)
        if path.read_text(encoding="utf-8") != text:
            raise OSError(f"{path} did not read back with the entry for {task_id}")
    return path


def archive_discussion(ws: Workspace, archive: Path) -> int:
    """Move the live ``SPRINT_DISCUSS.md`` entries into ``archive/SPRINT_DISCUSS.md`` (``sprint complete``).

    Under the file's lock: the entries are appended after what the archive holds (with the header when
    the archive is new), the archive is read back, and only then is the live file removed. Run again
    after a crash between the two, it does not append the same entries twice. Returns the number of
    entries moved (0 when there is no live file). Raises ``OSError`` when the archive does not read back.
    """
    ws.locks_dir.mkdir(parents=True, exist_ok=True)
    path = discuss_path(ws)
    with FileLock(str(ws.lock_path("sprint_discuss")), timeout=60):
        if not path.exists():
            return 0
        live = path.read_text(encoding="utf-8")
        body = live[len(DISCUSS_HEADER):] if live.startswith(DISCUSS_HEADER) else live
        count = len(re.findall(r"^## ", body, re.M))
        target = archive / "SPRINT_DISCUSS.md"
        old = target.read_text(encoding="utf-8") if target.exists() else ""
        if body.strip() and not old.endswith(body):
            if old.strip():
                text = (old if old.endswith("\n") else old + "\n") + body
            else:
                text = DISCUSS_HEADER + body
            atomic_write_text(target, text)
            if target.read_text(encoding="utf-8") != text:
                raise OSError(f"{target} did not read back as written; {path} was left whole")
        path.unlink()
    return count
