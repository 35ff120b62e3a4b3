"""Parse the Markdown sprint backlog (DESIGN.md §4) into validated items.

A backlog is Markdown: an optional ``# Title``, a goal, an optional ``## Exit Criteria`` list,
then one ``### ID: Title`` section per item with bold field labels, fenced ``job`` blocks (one
Builder step each, in order) and an ``**Acceptance Criteria:**`` checkbox list::

    ### T004: LoRA fine-tune on the procedures dataset
    **Type:** Story  **Complexity:** M  **Priority:** 2  **Dependencies:** T003
    **Description:** Train a LoRA adapter on the procedures data.

    ```job
    kind: lora_train
    data: data/procedures
    ```

    **Acceptance Criteria:**
    - [ ] peak memory under target `metric: train.peak_memory_gb <= 16` (critical)

Every problem is a :class:`~oodatcaa.core.errors.BacklogError` naming the source, the 1-based
line and the fix. Job blocks are checked only for being a YAML mapping with a string ``kind``;
``oodatcaa.jobs.spec`` validates their fields. The format is documented for users in
``docs/backlog-format.md``.

It sits above the core because it reads the job-kind registry (for its hints); both import only the
standard library, pydantic and PyYAML.

The package's parts: :mod:`~oodatcaa.backlog.model` (the parsed shapes), :mod:`~oodatcaa.backlog.syntax`
(labels, line patterns, job-block YAML), :mod:`~oodatcaa.backlog.parser` and
:mod:`~oodatcaa.backlog.writer`.
"""

from __future__ import annotations

from oodatcaa.backlog.durations import parse_duration_range
from oodatcaa.backlog.model import Backlog, BacklogItem, BacklogWarning, JobBlock, status_kind
from oodatcaa.backlog.parser import load_backlog, parse_backlog, raise_warnings
from oodatcaa.backlog.syntax import FIELD_LABELS
from oodatcaa.backlog.writer import format_backlog, format_item

__all__ = [
    "FIELD_LABELS",
    "Backlog",
    "BacklogItem",
    "BacklogWarning",
    "JobBlock",
    "format_backlog",
    "format_item",
    "load_backlog",
    "parse_backlog",
    "parse_duration_range",
    "raise_warnings",
    "status_kind",
]
