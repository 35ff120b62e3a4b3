"""Strict ID patterns, checked before an ID reaches a path, a branch name or a git ref.

Patterns (DESIGN.md §2): story ``T001``; builder subtask ``T001-B01``; tester subtask
``T001-T01``; sprint ``SPRINT-2026-004``. Anything else (``../x``, ``T1:2``) is refused.
"""

from __future__ import annotations

import re

from oodatcaa.core.errors import InvalidIdError

TASK_ID_PATTERN = r"^[A-Z][0-9]{3}(-[BT][0-9]{2})?$"
STORY_ID_PATTERN = r"^[A-Z][0-9]{3}$"
SUBTASK_ID_PATTERN = r"^[A-Z][0-9]{3}-[BT][0-9]{2}$"
SPRINT_ID_PATTERN = r"^SPRINT-[0-9]{4}-[0-9]{3}$"
SLUG_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"

_TASK = re.compile(TASK_ID_PATTERN)
_STORY = re.compile(STORY_ID_PATTERN)
_SUBTASK = re.compile(SUBTASK_ID_PATTERN)
_SPRINT = re.compile(SPRINT_ID_PATTERN)


def _check(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidIdError(f"invalid {what} {value!r}: must match {pattern.pattern}")
    return value


def validate_task_id(value: object) -> str:
    """Return ``value`` if it is a story or subtask ID; raise :class:`InvalidIdError` otherwise."""
    return _check(value, _TASK, "task ID")


def validate_story_id(value: object) -> str:
    """Return ``value`` if it is a story ID such as ``T001``; raise :class:`InvalidIdError` otherwise."""
    return _check(value, _STORY, "story ID")


def validate_subtask_id(value: object) -> str:
    """Return ``value`` if it is a subtask ID such as ``T001-B01``; raise :class:`InvalidIdError`."""
    return _check(value, _SUBTASK, "subtask ID")


def validate_sprint_id(value: object) -> str:
    """Return ``value`` if it is a sprint ID such as ``SPRINT-2026-004``; raise :class:`InvalidIdError`."""
    return _check(value, _SPRINT, "sprint ID")


def story_of(task_id: str) -> str:
    """The story part of a task or subtask ID: ``T001-B02`` -> ``T001``."""
    return validate_task_id(task_id)[:4]


_STOPWORDS = frozenset({"a", "an", "the", "on", "of", "and", "to", "for", "with", "in", "at", "by"})


def slugify(text: str, max_len: int = 40) -> str:
    """Lower-case, ASCII, dash-separated slug safe for a branch name (may be ``"step"`` if empty).

    Short filler words are dropped so the words that say what the step is fit in ``max_len``.
    """
    words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]
    kept = [w for w in words if w not in _STOPWORDS] or words
    slug = "-".join(kept)
    if len(slug) > max_len:
        cut = slug[: max_len + 1]
        slug = cut[: cut.rfind("-")] if "-" in cut else slug[:max_len]
    slug = slug.rstrip("-")
    return slug or "step"


def branch_name(task_id: str, step: int, slug: str) -> str:
    """Feature branch ``feat/<TASK>-step-<NN>-<slug>`` (DESIGN.md §2 git conventions)."""
    validate_story_id(task_id)
    if not re.fullmatch(SLUG_PATTERN, slug):
        raise InvalidIdError(f"invalid branch slug {slug!r}: must match {SLUG_PATTERN}")
    if not 1 <= step <= 99:
        raise InvalidIdError(f"invalid step number {step}: must be 1..99")
    return f"feat/{task_id}-step-{step:02d}-{slug}"
