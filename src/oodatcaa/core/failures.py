"""Typed failures: what went wrong with a queue item, as data a policy can route on.

A :class:`Failure` is stored on the item that failed (a builder step, the Tester subtask or the
story) and copied to its story. It is set where the failure is *detected* — the job runner from the
process result, a job from its own exception type, the Tester from its verdict, the Integrator from
the exception class — and read by the Refiner, whose rules declare the :class:`FailureKind` values
they handle and never read ``message`` (which is for people and may be reworded freely).

The model follows filelock's typed ``CompromiseReason``: a closed set of reasons plus structured
details, so routing never depends on English text.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class FailureKind(str, Enum):
    """Why an item failed. A closed set: a new kind is a deliberate change to this enum.

    - ``job_error``: the job raised or exited non-zero with its own error report.
    - ``job_killed``: the job process died from a signal it did not send itself (OOM killer,
      an operator, a worker machine lost); details: ``signal``, ``returncode``.
    - ``oom``: the job ran out of memory (``MemoryError``, ``std::bad_alloc``, an allocation refused).
    - ``timeout``: the job ran past ``[jobs] timeout_minutes`` or its own ``timeout_s``; details:
      ``timeout_s``.
    - ``diverged``: training diverged (a non-finite loss, a loss far above where it started, a
      validation loss that ended higher or at the uniform level ln(vocab)); details: ``reason``,
      ``iteration``, ``loss``, ``initial_loss`` and the losses compared (docs/jobs.md).
    - ``criteria_failed``: the Tester's verdict was not ``accept``; details: ``failed`` (criterion
      id, outcome, observed value, expected), ``failed_metrics``, ``decision``.
    - ``merge_conflict``: merging the story into the trunk conflicted; details: ``files``.
    - ``gate_failed``: a ``[[gates]]`` command run on the merge result before the trunk moved failed
      (:mod:`oodatcaa.gates`); details: ``gate``, ``command``, ``returncode`` (None when it never
      ran), ``reason`` (``exit 1``, ``timed out after 900 s``, ``command not found (exit 127)``, ``N new
      problem line(s) against a baseline of M``), ``output_tail``, ``commit``; with a trunk baseline
      also ``new_lines`` and ``baseline_lines``.
    - ``branch_missing``: a feature branch recorded in the queue is gone; details: ``branch``.
    - ``rejected``: a person rejected the work at review.
    - ``agent_crashed``: the role agent itself raised (a bug, a full disk); details: ``role``,
      ``exception``.
    - ``no_job``: the story has no job block a Builder could run (prose-only).
    - ``cancelled``: the job was cancelled (agent stopping or its lease lost); never adapted.
    """

    JOB_ERROR = "job_error"
    JOB_KILLED = "job_killed"
    OOM = "oom"
    TIMEOUT = "timeout"
    DIVERGED = "diverged"
    CRITERIA_FAILED = "criteria_failed"
    MERGE_CONFLICT = "merge_conflict"
    GATE_FAILED = "gate_failed"
    BRANCH_MISSING = "branch_missing"
    REJECTED = "rejected"
    AGENT_CRASHED = "agent_crashed"
    NO_JOB = "no_job"
    CANCELLED = "cancelled"


class Failure(BaseModel):
    """One failure of one item.

    Attributes:
        kind: the :class:`FailureKind` policies route on.
        message: a human sentence (shown in status, reports and the log; never parsed).
        details: structured facts for the kind (see :class:`FailureKind`), JSON-serialisable.
        item: the ID of the item where it was detected (``T001-B01``), when it is not the carrier.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: FailureKind
    message: str = Field(max_length=4000)
    details: dict[str, Any] = Field(default_factory=dict)
    item: str | None = None

    def short(self, limit: int = 300) -> str:
        """``"<kind>: <message>"`` cut to ``limit`` characters (for log lines)."""
        text = f"{self.kind.value}: {self.message}"
        return text if len(text) <= limit else text[: limit - 1] + "…"

    @classmethod
    def of(cls, kind: FailureKind | str, message: str, item: str | None = None, **details: Any) -> Failure:
        """Shorthand: ``Failure.of("oom", "ran out of memory", item="T001-B01", peak_gb=3.2)``.

        ``message`` is cut to 4000 characters so a long output tail never makes the queue invalid.
        """
        return cls(kind=FailureKind(kind), message=message[:4000], details=details, item=item)
