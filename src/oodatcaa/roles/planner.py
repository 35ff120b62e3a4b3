"""Planner (Decide): turns a ``needs_plan`` story into a plan and subtasks.

Writes ``work/plans/<TASK>/AGENT_PLAN.md`` and ``TEST_PLAN.md`` for that task alone, tags the
baseline ``pre/<TASK>-<YYYYMMDDTHHMMSSZ>`` on the trunk, and creates one Builder step per job block
(``<TASK>-B01``.., each depending on the previous) and a Tester subtask ``<TASK>-T01`` depending on
all of them. A story with no job block cannot be built by a machine: it goes to ``needs_manual``
with that reason — never passed.
"""

from __future__ import annotations

from typing import Any

import yaml

from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import tag_stamp
from oodatcaa.core.criteria import Criterion, format_check
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.ids import branch_name, slugify
from oodatcaa.core.leases import Claim
from oodatcaa.core.models import Estimate, Item, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.gitops import DEFAULT_TRUNK
from oodatcaa.reports import write_report
from oodatcaa.roles.base import RoleAgent

S = TaskStatus


def step_title(job: dict[str, Any], task: Task, index: int) -> str:
    """Human title of a builder step, e.g. ``lora_train: LoRA fine-tune on procedures``."""
    return str(job.get("title") or f"{job.get('kind', 'job')}: {task.title}")


def plan_steps(task: Task) -> list[Subtask]:
    """Builder steps (one per job block, sequential) and the Tester subtask for ``task``."""
    steps: list[Subtask] = []
    for n, job in enumerate(task.jobs, start=1):
        sid = f"{task.id}-B{n:02d}"
        slug = slugify(str(job.get("slug") or task.title), max_len=32)
        steps.append(
            Subtask(
                id=sid,
                kind="build",
                status=S.READY,
                title=step_title(job, task, n),
                step=n,
                branch=branch_name(task.id, n, slug),
                job={k: v for k, v in job.items() if k not in ("title", "slug")},
                dependencies=[f"{task.id}-B{n - 1:02d}"] if n > 1 else [],
            )
        )
    steps.append(
        Subtask(
            id=f"{task.id}-T01",
            kind="test",
            status=S.BLOCKED,
            title=f"acceptance tests: {task.title}",
            step=1,
            branch=steps[-1].branch if steps else None,
            dependencies=[s.id for s in steps],
        )
    )
    return steps


def _criteria_lines(criteria: list[Criterion]) -> str:
    if not criteria:
        return "_No acceptance criteria were given._\n"
    lines = []
    for c in criteria:
        how = "needs a person (prose only)" if c.check is None else f"`{_check_text(c)}`"
        lines.append(f"- **{c.id}**{' (critical)' if c.critical else ''}: {c.text} — {how}")
    return "\n".join(lines) + "\n"


def _check_text(c: Criterion) -> str:
    return format_check(c.check) if c.check is not None else ""


def step_estimates(estimate: Estimate | None, steps: int) -> list[Estimate | None]:
    """The story's estimate split evenly over its ``steps`` builder steps (minutes, both ends).

    Even, not weighted by job kind: a kind's cost depends on its fields (60 iterations or 6000), and
    the backlog's estimate is for the whole story; an even share keeps the sum equal to it. With no
    estimate every step has none.
    """
    if estimate is None or steps <= 0:
        return [None] * max(steps, 0)
    share = estimate.model_copy(update={"low_minutes": estimate.low_minutes / steps,
                                        "high_minutes": estimate.high_minutes / steps})
    return [share] * steps


def _story_estimate_text(task: Task) -> str:
    if task.estimate is None:
        return "none (no Estimated Time, no complexity rule)"
    where = "Estimated Time" if task.estimate.source == "backlog" else f"complexity {task.complexity}"
    return f"{task.estimate.minutes()} (from its {where})"


def render_agent_plan(task: Task, steps: list[Subtask], baseline: str | None, version: int, trunk: str = DEFAULT_TRUNK) -> str:
    """``AGENT_PLAN.md``: problem, steps with job specs and branches, acceptance criteria."""
    out = [
        f"# AGENT_PLAN — {task.id}: {task.title}\n",
        f"- **Plan version:** {version}\n- **Type:** {task.type}  **Complexity:** {task.complexity or '-'}"
        f"  **Priority:** {task.priority if task.priority is not None else '-'}\n"
        f"- **Dependencies:** {', '.join(task.dependencies) or 'none'}\n"
        f"- **Estimate:** {_story_estimate_text(task)}\n"
        f"- **Baseline tag:** {baseline or '(none)'}\n",
        "\n## Problem\n\n" + (task.description.strip() or "_No description given._") + "\n",
        "\n## Steps\n",
    ]
    builds = [s for s in steps if s.kind == "build"]
    if not builds:
        out.append("\nNo job block: there is nothing a Builder can run. The task needs a person.\n")
    shares = step_estimates(task.estimate, len(builds))
    for s, share in zip(builds, shares, strict=True):
        spec = yaml.safe_dump(s.job, sort_keys=False).strip()
        deps = ", ".join(s.dependencies) or "none"
        estimate = (f"{share.minutes()} ({'all' if len(builds) == 1 else f'1/{len(builds)}'} of the story's "
                    f"{task.estimate.minutes()})" if share is not None and task.estimate is not None else "none")
        out.append(
            f"\n### {s.id} — step {s.step:02d}: {s.title}\n\n- **Branch:** `{s.branch}`\n"
            f"- **Starts from:** {trunk if s.step == 1 else 'the branch of step ' + f'{s.step - 1:02d}'}\n"
            f"- **Depends on:** {deps}\n- **Estimate:** {estimate}\n\n```yaml\n{spec}\n```\n"
        )
    out.append("\n## Acceptance criteria\n\n" + _criteria_lines(task.acceptance_criteria))
    tester = next((s for s in steps if s.kind == "test"), None)
    if tester:
        out.append(f"\nThe Tester subtask {tester.id} checks them on `{tester.branch}` once every step is built.\n")
    return "".join(out)


def render_test_plan(task: Task, tester: Subtask | None, policy_text: str) -> str:
    """``TEST_PLAN.md``: each criterion, how it is checked, and the verdict rule."""
    out = [f"# TEST_PLAN — {task.id}: {task.title}\n\n"]
    if tester:
        out.append(f"- **Tester subtask:** {tester.id}\n- **Branch under test:** `{tester.branch}`\n\n")
    out.append("## Criteria\n\n| AC | criterion | critical | check |\n|---|---|---|---|\n")
    for c in task.acceptance_criteria:
        check = _check_text(c) or "prose only: needs a person (counts as not passing)"
        out.append(f"| {c.id} | {c.text} | {'yes' if c.critical else 'no'} | `{check}` |\n")
    out.append(
        "\n## How each check is evaluated\n\n"
        "- `metric: NAME OP VALUE` compares the run's summary metrics (`namespace.key`, merged over the builder steps).\n"
        "- `file: PATH` passes when PATH exists in a step's run directory, its artifacts, or the branch's tree.\n"
        "- `command: CMD` runs CMD in a checkout of the branch and passes on exit code 0.\n"
        f"\n## Verdict rule\n\n{policy_text}\n"
    )
    return "".join(out)


class Planner(RoleAgent):
    """Claims ``needs_plan`` stories and plans them."""

    role = "planner"
    crash_status = S.NEEDS_MANUAL

    def work(self, claim: Claim) -> None:
        ws, cfg = self.ctx.ws, self.ctx.config
        task = self.store.read().task(claim.task_id)
        version = task.plan_version + 1
        steps = plan_steps(task) if task.jobs else []
        git = self.git()
        baseline = task.baseline_tag
        if baseline is None or not git.tag_exists(baseline):
            baseline = f"pre/{task.id}-{tag_stamp(self.ctx.clock.now())}"
            if not git.tag_exists(baseline):
                git.tag(baseline, f"Baseline of {task.id} before plan v{version}", git.trunk)
        policy = cfg.check
        policy_text = (
            f"Any critical criterion not passing -> adapt. All critical passing and at least "
            f"{policy.accept_ratio:.0%} of all passing -> accept. {policy.gray_zone_ratio:.0%}–"
            f"{policy.accept_ratio:.0%} -> {policy.gray_zone_decision} (policy). Below "
            f"{policy.gray_zone_ratio:.0%} -> adapt. Prose-only criteria count as not passing."
        )
        if any(c.check is not None and c.check.kind == "regression" for c in task.acceptance_criteria):
            policy_text += (f" Regression criteria: up to {policy.regression_investigate_percent:g} % worse than the "
                            f"baseline passes, up to {policy.regression_fail_percent:g} % passes flagged investigate, "
                            "more is a critical failure; no baseline yet passes and becomes the baseline.")
        plan_dir = ws.plan_dir(task.id)
        tester = next((s for s in steps if s.kind == "test"), None)
        atomic_write_text(plan_dir / "AGENT_PLAN.md", render_agent_plan(task, steps, baseline, version, git.trunk))
        atomic_write_text(plan_dir / "TEST_PLAN.md", render_test_plan(task, tester, policy_text))
        self.check_abort()

        if not steps:
            reason = "no job block: nothing a Builder can run; a person must do or re-plan this item"
            body = f"## Decision\n\n{reason}.\n\nPlans written to `plans/{task.id}/` for the record.\n"
            write_report(ws, task.id, "planner", self.ctx.owner, f"Planner report — {task.id}", body,
                         f"needs_manual: {reason}", clock=self.ctx.clock)

            def manual(tx: Transaction, item: Item) -> None:
                assert isinstance(item, Task)
                item.manual_reason = reason
                item.failure = Failure.of(FailureKind.NO_JOB, reason, item=item.id)
                item.baseline_tag = baseline
                item.plan_version = version

            self.finish(claim, S.NEEDS_MANUAL, reason, manual)
            return

        lines = "\n".join(f"- {s.id} ({s.kind}): {s.title} — `{s.branch}`" for s in steps)
        body = (
            f"## Plan v{version}\n\nBaseline tag `{baseline}`.\n\n### Subtasks\n\n{lines}\n\n"
            f"Plans: `plans/{task.id}/AGENT_PLAN.md`, `plans/{task.id}/TEST_PLAN.md`.\n"
        )
        write_report(ws, task.id, "planner", self.ctx.owner, f"Planner report — {task.id}", body,
                     f"plan v{version}: {len(steps) - 1} builder step(s), 1 tester", clock=self.ctx.clock)

        def apply(tx: Transaction, item: Item) -> None:
            assert isinstance(item, Task)
            item.subtasks = steps
            item.plan_version = version
            item.baseline_tag = baseline
            for s in steps:
                tx.log(s.id, f"new -> {s.status.value}", f"created by plan v{version}: {s.title}")

        self.finish(claim, S.PLANNING_COMPLETE, f"plan v{version}: {len(steps)} subtasks", apply)
