"""The sprint's HTML page: one self-contained file, every chart inline SVG, all file text escaped.

No ``<script>`` and no external resource: the charts are rendered here by ``vl_convert.vegalite_to_svg``
(Vega-Lite compiled and drawn in-process), so the page opens offline in any browser.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from oodatcaa.core.criteria import MetricCheck
from oodatcaa.core.models import Queue, Sprint, Task
from oodatcaa.core.workspace import Workspace
from oodatcaa.htmlreport import charts
from oodatcaa.htmlreport.metrics import RunMetrics, read_metrics
from oodatcaa.jobs.registry import headline
from oodatcaa.jobs.spec import flatten_spec

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}"
          "td,th{border:1px solid #999;padding:2px 6px;text-align:left}.PASS{color:#060}.FAIL{color:#a00}"
          ".note{color:#a60}.chart{display:inline-block;margin:4px}")


@dataclass
class StepRun:
    """One build step's run found on disk: its directory and metrics."""

    step_id: str
    attempt: int
    run_dir: Path
    metrics: RunMetrics
    commit: str = ""


@dataclass
class PageStats:
    """What rendering produced: chart count, problems said on the page, bytes and seconds."""

    charts: int = 0
    problems: list[str] = field(default_factory=list)
    size_bytes: int = 0
    seconds: float = 0.0


def find_runs(ws: Workspace, task: Task) -> list[StepRun]:
    """Run directories with a ``metrics.jsonl`` of the task's build steps (worktree run dir or artifacts dir)."""
    runs: list[StepRun] = []
    for step in task.builds():
        result = step.result or {}
        candidates = []
        attempt = int(result.get("attempt") or step.attempts)
        if result.get("run_dir"):
            # the attempt's own worktree while it still exists, else the checkout (the committed path)
            live = [ws.step_run_dir(step.id, attempt)] if attempt >= 1 else []
            candidates += [*live, ws.root / result["run_dir"]]
        if result.get("artifacts_dir"):
            candidates.append(Path(result["artifacts_dir"]))
        for directory in candidates:
            if (directory / "metrics.jsonl").is_file():
                runs.append(StepRun(step.id, attempt, directory,
                                    read_metrics(directory / "metrics.jsonl"), str(result.get("commit") or "")))
                break
    return runs


def _svg(spec: dict[str, Any]) -> str:
    import vl_convert as vlc

    return str(vlc.vegalite_to_svg(vl_spec=spec))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """An HTML table; cells must already be escaped."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict_text(verdict: object) -> str:
    """``accept (4/4 pass)`` from a Tester verdict record; anything else as it is."""
    if not isinstance(verdict, dict):
        return str(verdict)
    return f"{verdict.get('decision', '?')} ({verdict.get('passed', '?')}/{verdict.get('total', '?')} pass)"


def _story_row(task: Task) -> list[str]:
    verdict = next((_verdict_text(s.result["verdict"]) for s in task.subtasks if s.kind == "test" and s.result
                    and s.result.get("verdict")), "")
    spent = ""
    if task.started_at and task.finished_at:
        spent = f"{(task.finished_at - task.started_at).total_seconds() / 60:.0f} min"
    est = f"{task.estimate.low_minutes:.0f}-{task.estimate.high_minutes:.0f} min" if task.estimate else ""
    metrics = ", ".join(f"{k}={v}" for k, v in headline(task.metrics).items())
    tag = f"{task.id}-complete" if task.merged_commit else ""
    return [escape(x) for x in (task.id, task.title, task.status.value, verdict, f"{task.adapt_loops}/3",
                                f"{spent} / {est}" if est else spent, metrics, tag, (task.merged_commit or "")[:12])]


def _criteria(task: Task) -> str:
    outcomes: dict[str, str] = {}
    for s in task.subtasks:
        result = (s.result or {}) if s.kind == "test" else {}
        for r in result.get("criteria", []):
            if isinstance(r, dict) and "criterion_id" in r:
                outcomes[str(r["criterion_id"])] = str(r.get("outcome", ""))
        if result.get("verdict") and not result.get("criteria"):
            # a verdict recorded before outcomes were kept lists only what did not pass
            failed = {str(r.get("criterion_id")): str(r.get("outcome", "")) for r in result.get("failures", [])
                      if isinstance(r, dict)}
            outcomes.update({c.id: failed.get(c.id, "PASS") for c in task.acceptance_criteria})
    rows = []
    for c in task.acceptance_criteria:
        out = outcomes.get(c.id, "not tested")
        rows.append([escape(c.id), escape(c.text), f'<span class="{escape(out)}">{escape(out)}</span>'])
    return _table(["criterion", "text", "outcome"], rows) if rows else "<p>No acceptance criteria.</p>"


def _lineage(task: Task) -> str:
    if not task.adaptations:
        return "<p>No adaptations (the Refiner did not change this story).</p>"
    rows = [[escape(str(a.loop)), escape(a.step), escape(a.failure_kind.value if a.failure_kind else ""),
             escape(a.rule), escape(a.rationale)] for a in task.adaptations]
    return _table(["loop", "step", "failure", "rule", "change"], rows)


def _spec_value(spec: dict[str, object], key: str) -> str:
    """A job-spec value as YAML writes it (``true``, ``2``), ``-`` when the spec leaves it unset."""
    if key not in spec:
        return "-"
    value = spec[key]
    return str(value).lower() if isinstance(value, bool) else str(value)


def _attempts(task: Task) -> str:
    """Each step's attempts in order: outcome, then what its job spec changed against the attempt before.

    From ``attempt_history`` (the queue keeps a step's last attempts); empty when no step ran twice.
    """
    rows: list[list[str]] = []
    for step in task.builds():
        history = sorted(step.attempt_history, key=lambda r: r.attempt)
        if len(history) < 2:
            continue
        before: dict[str, object] | None = None
        for record in history:
            now = flatten_spec(record.job or {})
            if before is None:
                change = "(as planned)"
            else:
                keys = sorted(set(before) | set(now))
                change = "; ".join(f"{k}: {_spec_value(before, k)} -> {_spec_value(now, k)}" for k in keys
                                   if before.get(k) != now.get(k)) or "(unchanged: run again)"
            outcome = "ok" if record.ok else (record.failure_kind.value if record.failure_kind else "failed")
            rows.append([escape(step.id), escape(str(record.attempt)), escape(outcome), escape(change)])
            before = now
    if not rows:
        return ""
    return "<h4>Attempts</h4>" + _table(["step", "attempt", "job outcome", "job spec against the attempt before"], rows)


def memory_target(task: Task) -> float | None:
    """The tightest ``peak_memory_gb`` ceiling (``<``/``<=``) among the story's metric criteria, in GB; None without one."""
    limits = [float(c.check.value) for c in task.acceptance_criteria
              if isinstance(c.check, MetricCheck) and c.check.metric.endswith("peak_memory_gb")
              and c.check.op in ("<", "<=") and isinstance(c.check.value, (int, float))]
    return min(limits) if limits else None


def _earlier_attempts_memory(task: Task, shown: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Peak memory (GB) of each step's earlier attempts, from ``attempt_history`` (their run dirs are overwritten).

    An attempt's peak is the largest ``*peak_memory_gb`` metric it recorded; attempts already in
    ``shown`` (labels ``"<STEP> attempt <n>"``) and attempts without one are left out.
    """
    labels = {label for label, _ in shown}
    earlier: list[tuple[str, float]] = []
    for step in task.builds():
        for record in step.attempt_history:
            label = f"{step.id} attempt {record.attempt}"
            peaks = [float(v) for k, v in record.metrics.items()
                     if k.endswith("peak_memory_gb") and isinstance(v, (int, float)) and math.isfinite(float(v))]
            if peaks and label not in labels:
                earlier.append((label, max(peaks)))
                labels.add(label)
    return earlier


def _story_section(ws: Workspace, task: Task, stats: PageStats) -> str:
    parts = [f'<section id="{escape(task.id)}"><h2>{escape(task.id)}: {escape(task.title)}</h2>',
             "<h3>Acceptance criteria</h3>", _criteria(task)]
    runs = find_runs(ws, task)
    parts.append("<h3>Runs</h3>")
    with_metrics = {run.step_id for run in runs}
    for step in task.builds():  # a finished step whose job records no metrics (dataset, command) is a run too
        result = step.result or {}
        if step.id not in with_metrics and result.get("commit"):
            parts.append(f"<p>{escape(step.id)} attempt {escape(str(result.get('attempt') or step.attempts))}: commit "
                         f"<code>{escape(str(result['commit']))}</code> (its job records no metrics curve)</p>")
    if not runs and not any((s.result or {}).get("commit") for s in task.builds()):
        parts.append("<p>No runs yet for this story.</p>")
    memory: list[tuple[str, float]] = []
    for run in runs:
        label = f"{run.step_id} attempt {run.attempt}"
        if run.commit:
            parts.append(f"<p>{escape(label)}: commit <code>{escape(run.commit)}</code></p>")
        for problem in run.metrics.problems:
            stats.problems.append(f"{label}: {problem}")
            parts.append(f'<p class="note">{escape(label)}: {escape(problem)}</p>')
        peaks = [r["peak_memory_gb"] for r in run.metrics.records if isinstance(r.get("peak_memory_gb"), (int, float))]
        if peaks:
            memory.append((label, max(peaks)))
        specs = [("loss", charts.loss_chart(run.metrics, f"{label}: loss")),
                 ("throughput", charts.throughput_chart(run.metrics, f"{label}: tokens/s"))]
        for name, spec in specs:
            if spec is not None:
                charts.store_spec(run.run_dir, name, spec)
                parts.append(f'<div class="chart" data-spec="{escape(name)}">{_svg(spec)}</div>')
                stats.charts += 1
    memory = _earlier_attempts_memory(task, memory) + memory
    mem_spec = charts.memory_chart(memory, memory_target(task), f"{task.id}: peak memory per attempt")
    if mem_spec is not None:
        parts.append(f'<div class="chart" data-spec="memory">{_svg(mem_spec)}</div>')
        stats.charts += 1
    parts += ["<h3>Refiner lineage</h3>", _lineage(task), _attempts(task)]
    reports = sorted(ws.report_dir(task.id).glob("*.md")) if ws.report_dir(task.id).is_dir() else []
    if reports:
        links = "".join(f'<li><a href="{escape(p.resolve().as_uri())}">{escape(p.name)}</a></li>' for p in reports)
        parts.append(f"<h3>Reports</h3><ul>{links}</ul>")
    return "".join(parts) + "</section>"


def _exit_criteria(sprint: Sprint) -> str:
    """Each exit criterion with its state and reason as the Negotiator last evaluated them (or the bare list)."""
    if not sprint.exit_states:
        return "<ul>" + "".join(f"<li>{escape(c)}</li>" for c in sprint.exit_criteria) + "</ul>"
    rows = [[escape(c.id), f'<span class="{"PASS" if c.state == "met" else "FAIL"}">{escape(c.state)}</span>',
             escape(c.text), escape(c.reason)] for c in sprint.exit_states]
    when = sprint.exit_checked_at.strftime("%Y-%m-%d %H:%M UTC") if sprint.exit_checked_at else ""
    return _table(["id", "state", "criterion", "evidence"], rows) + (f"<p class=\"note\">evaluated {when}</p>" if when else "")


def render_sprint_report(ws: Workspace, queue: Queue) -> tuple[str, PageStats]:
    """The whole page as a string, and its stats. Raises nothing for bad metrics (they are noted on the page)."""
    tic = time.perf_counter()
    stats = PageStats()
    sprint = queue.sprint
    title = f"Sprint {sprint.number}: {sprint.title}" if sprint else "No sprint"
    parts = [f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>"]
    if sprint:
        parts.append(f"<p><b>Goal:</b> {escape(sprint.goal)}</p><h3>Exit criteria</h3>" + _exit_criteria(sprint))
    if queue.objective:
        o = queue.objective
        parts.append(f"<p><b>Objective:</b> {o.percent:.0f}% ({o.met}/{o.total} met, {o.needs_manual} need a person)"
                     f" at {escape(o.trunk_commit or '')}</p>")
    stories = [t for t in queue.tasks]
    rows = [_story_row(t) for t in stories]
    parts.append(_table(["story", "title", "status", "verdict", "loops", "time / estimate", "headline metrics",
                         "tag", "merge commit"], rows) if rows else "<p>No stories in this sprint.</p>")
    sections = [_story_section(ws, t, stats) for t in stories]
    if stats.charts == 0:
        parts.append('<p class="note">No runs yet: no charts to draw.</p>')
    if stats.problems:
        parts.append(f'<p class="note">{len(stats.problems)} metric line(s) skipped; see each story.</p>')
    parts += sections
    parts.append("</body></html>\n")
    page = "".join(parts)
    stats.size_bytes = len(page.encode("utf-8"))
    stats.seconds = time.perf_counter() - tic
    return page, stats


def write_sprint_report(ws: Workspace, queue: Queue, path: Path | None = None) -> tuple[Path, PageStats]:
    """Render and write the page (default ``.oodatcaa/work/reports/sprint_<N>.html``); returns path and stats."""
    number = queue.sprint.number if queue.sprint else 0
    target = path or ws.work_dir / "reports" / f"sprint_{number}.html"
    page, stats = render_sprint_report(ws, queue)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target, stats
