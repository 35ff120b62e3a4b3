"""Backlog Markdown from parsed items (the inverse of the parser, in the documented format)."""

from __future__ import annotations

import yaml

from oodatcaa.backlog.model import Backlog, BacklogItem
from oodatcaa.core.models import Estimate

__all__ = ["format_backlog", "format_item"]


def format_item(item: BacklogItem) -> str:
    """One item as backlog Markdown (parsed back by :func:`parse_backlog` to an equal item,
    except ``line``)."""
    out = [f"### {item.id}: {item.title}"]
    fields = [f"**Type:** {item.type}"]
    if item.complexity:
        fields.append(f"**Complexity:** {item.complexity}")
    if item.status:
        fields.append(f"**Status:** {item.status}")
    if item.priority is not None:
        fields.append(f"**Priority:** {item.priority}")
    fields.append(f"**Dependencies:** {', '.join(item.dependencies) if item.dependencies else 'None'}")
    out.append("  ".join(fields))
    if item.description:
        out.append("")
        out.append(f"**Description:** {item.description}")
    for job in item.jobs:
        out.append("")
        out.append("```job")
        out.append(yaml.safe_dump(job.data, sort_keys=False, allow_unicode=True).rstrip("\n"))
        out.append("```")
    if item.acceptance_criteria:
        out.append("")
        out.append("**Acceptance Criteria:**")
        out.extend(c.to_markdown() for c in item.acceptance_criteria)
    if item.objective_links:
        # one bullet each: a link may hold the `;` that separates links on one line
        out += ["", "**Links to Objective:**", *(f"- {link}" for link in item.objective_links)]
    if item.estimate is not None:
        out += ["", f"**Estimated Time:** {item.estimate.text or _minutes_text(item.estimate)}"]
    if item.approval_required:
        out += ["", "**Approval:** required"]
    return "\n".join(out) + "\n"


def _minutes_text(estimate: Estimate) -> str:
    low, high = estimate.low_minutes, estimate.high_minutes
    return f"{low:g} minutes" if low == high else f"{low:g}-{high:g} minutes"


def format_backlog(backlog: Backlog) -> str:
    """A backlog as Markdown in the documented format (inverse of :func:`parse_backlog`)."""
    out: list[str] = []
    if backlog.title:
        out += [f"# {backlog.title}", ""]
    if backlog.goal:
        out += [f"**Sprint Goal:** {backlog.goal}", ""]
    if backlog.start_date:
        out += [f"**Sprint Start:** {backlog.start_date.isoformat()}", ""]
    if backlog.target_date:
        out += [f"**Target Completion:** {backlog.target_date.isoformat()}", ""]
    if backlog.exit_criteria:
        out += ["## Exit Criteria", *[f"- [ ] {c}" for c in backlog.exit_criteria], ""]
    if backlog.exit_criteria or backlog.title:
        out += ["## Items", ""]
    for item in backlog.items:
        out.append(format_item(item))
    return "\n".join(out)
