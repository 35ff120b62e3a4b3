"""What was learned carries forward: settings an accepted adaptation found, inherited by dependent stories.

When a story's builder step was adapted by the Refiner and the story was then accepted and merged
(``done``), the settings that adaptation changed are *learned*: the step's final job spec differs
from the job block written in the backlog (``Task.jobs``) in those fields. A dependent story — one
that lists it in ``dependencies`` or ``prior_dependencies`` — whose builder step has a job of the
same **kind family** (the training kinds ``memory_profile``, ``lora_train`` and ``evaluate``) on the
same ``model``, and whose backlog job block leaves such a field **unset**, inherits the accepted
value before its first run. A field the dependent's own job block writes is never overridden, a
field its job kind does not have is skipped, and ``inherit: false`` in the job block opts out.

Example (the demo): T004's memory profile missed its 1.0 GB target with batch 4, and the Refiner
adapted it to ``grad_checkpoint: true``, ``batch_size: 2``, ``grad_accumulation_steps: 2``; T005's
fine-tune, depending on T004 and writing none of those fields, runs with them from its first attempt.

Pure functions of queue data and the job-spec models; the Builder applies the result and says so in
the story's plan and its report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from oodatcaa.core.models import Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.jobs.spec import JobSpecError, model_of_kind, parse_job_spec

#: Job kinds whose adapted settings carry forward to each other (DESIGN.md: the training kinds).
TRAINING_FAMILY = frozenset({"memory_profile", "lora_train", "evaluate"})
#: Fields that describe *what* a job works on, never a learned setting.
_NOT_LEARNED = frozenset({"kind", "model", "data", "adapter", "source", "output", "title", "slug", "inherit"})


@dataclass(frozen=True)
class Inheritance:
    """Settings a step inherits: ``fields`` (name -> value) and, per field, the step it was learned from."""

    fields: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``inherits grad_checkpoint true, batch_size 2 from T004-B01's accepted adaptation``, one clause per source."""
        by_source: dict[str, list[str]] = {}
        for name, value in self.fields.items():
            text = str(value).lower() if isinstance(value, bool) else str(value)
            by_source.setdefault(self.sources[name], []).append(f"{name} {text}")
        return "; ".join(f"inherits {', '.join(parts)} from {src}'s accepted adaptation" for src, parts in by_source.items())


def learned_settings(story: Task) -> list[tuple[Subtask, dict[str, Any]]]:
    """For a ``done`` story, each adapted builder step with the fields its accepted job changed.

    A step counts as adapted when a Refiner loop (``Task.adaptations``) named it; the changed fields
    are those whose value in the step's final job differs from the backlog's job block of that step.
    """
    if story.status != TaskStatus.DONE:
        return []
    adapted = {record.step for record in story.adaptations}
    out = []
    for step in story.builds():
        if step.id not in adapted or step.job is None or step.step > len(story.jobs):
            continue
        written = story.jobs[step.step - 1]
        changed = {k: v for k, v in step.job.items()
                   if k not in _NOT_LEARNED and written.get(k) != v}
        if changed:
            out.append((step, changed))
    return out


def inherited_settings(written: Mapping[str, Any], job: Mapping[str, Any],
                       dependencies: Iterable[Task]) -> Inheritance | None:
    """What a step whose backlog job block is ``written`` (current spec ``job``) inherits from ``dependencies``.

    ``dependencies``: the stories it depends on (this sprint's and earlier sprints'), in dependency
    order; a later one wins for the same field. Returns ``None`` when nothing applies: the job opts
    out (``inherit: false``), is not of the training family, or no adapted field is left unset.
    Only fields the job's kind has are inherited, and the result must still validate as a job spec
    (a combination the spec refuses is dropped, never written).
    """
    kind = job.get("kind")
    if written.get("inherit") is False or kind not in TRAINING_FAMILY:
        return None
    fields_of_kind = set(model_of_kind(str(kind)).model_fields)
    model = job.get("model", "default")
    fields: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for story in dependencies:
        for step, changed in learned_settings(story):
            assert step.job is not None
            if step.job.get("kind") not in TRAINING_FAMILY or step.job.get("model", "default") != model:
                continue
            for name, value in changed.items():
                if name in fields_of_kind and name not in written:
                    fields[name], sources[name] = value, step.id
    if not fields:
        return None
    try:
        parse_job_spec({**job, **fields})
    except JobSpecError:
        return None
    return Inheritance(fields, sources)
