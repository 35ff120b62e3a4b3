"""``oodatcaa tag``: the merged stories and their tags, tagging one by hand, and cutting a release.

- :func:`list_stories` — every merged story (the current sprint's queue, then the archived sprints'
  final queues through :mod:`oodatcaa.archive`) with its ``<TASK>-complete`` tag, merge commit, date,
  headline metrics (:func:`oodatcaa.jobs.registry.headline`) and whether it was reverted
  (``Task.reverted`` or a ``<TASK>-reverted`` tag). A merged story without its tag is flagged.
- :func:`tag_story` — the missing ``<TASK>-complete`` tag of a merged story (a merge a person made,
  an Integrator that died before tagging), with the message the Integrator writes
  (:func:`completion_tag_message`, shared with :mod:`oodatcaa.roles.integrator`), on the story's
  landed commit: its ``[docs] <TASK>:`` commit right on the merge, else the merge commit.
- :func:`release` — Keep a Changelog: the unreleased entries of ``CHANGELOG.md`` (every section above
  the newest ``## [X.Y.Z]``, see :func:`oodatcaa.changelog.unreleased`) moved into
  ``## [X.Y.Z] - YYYY-MM-DD``, committed on the trunk in the primary checkout, and the annotated tag
  ``vX.Y.Z`` with the release notes.

Every refusal raises :class:`TagError` before anything changed. All git goes through
:class:`oodatcaa.gitops.GitRepo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from oodatcaa import baselines, changelog
from oodatcaa.archive import archived_sprints
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.config import load_config
from oodatcaa.core.errors import GitOperationError, OodatcaaError
from oodatcaa.core.ids import validate_story_id
from oodatcaa.core.models import Task
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo
from oodatcaa.jobs.registry import headline
from oodatcaa.person import approval_text

#: The Gates line of a tag made by ``oodatcaa tag TASK`` (no gate ran for it).
MANUAL_GATES = "not run by oodatcaa (tagged afterwards with `oodatcaa tag`)"


class TagError(OodatcaaError):
    """``oodatcaa tag`` refused; the message says why and what to do. Nothing was changed."""


def metrics_text(task: Task) -> str:
    """The story's headline metrics (each job kind's key metrics) as ``k=v, ...`` for its tag and CHANGELOG line."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(headline(task.metrics).items()))


def completion_tag_message(task: Task, sprint_id: str, branch: str, merge_commit: str, gates_line: str) -> str:
    """The annotated message of ``<TASK>-complete``, as the Integrator writes it.

    ``<TASK>: <title>`` then the lines Sprint, Branch, Merge, Metrics, Gates, and Approval (who
    approved, when) and Flag (a 20-50 % regression to investigate) when they apply.
    """
    metrics = metrics_text(task)
    approval = approval_text(task)
    investigate = baselines.investigate_note(task)
    return (f"{task.id}: {task.title}\n\nSprint: {sprint_id}\nBranch: {branch}\n"
            f"Merge: {merge_commit}\nMetrics: {metrics or 'none'}\nGates: {gates_line}\n"
            + (f"Approval: {approval}\n" if approval else "")
            + (f"Flag: {investigate}\n" if investigate else ""))


def landed_commit(git: GitRepo, task_id: str, merge_commit: str) -> str:
    """The commit a story's tag goes on: its ``[docs] <TASK>:`` commit right on the merge, else the merge."""
    child = git.first_parent_child(merge_commit)
    if child is not None and git.subject(child).startswith(f"[docs] {task_id}:"):
        return child
    return merge_commit


@dataclass(frozen=True)
class MergedStory:
    """One merged story as ``tag list`` shows it."""

    task: Task
    sprint_id: str
    sprint_number: int
    tag: str
    tag_commit: str | None
    merge_commit: str
    date: str | None
    metrics: dict[str, Any] = field(default_factory=dict)
    reverted: bool = False

    def to_json(self) -> dict[str, Any]:
        """The row of ``tag list --json``."""
        return {"task": self.task.id, "title": self.task.title, "sprint": self.sprint_id,
                "sprint_number": self.sprint_number, "tag": self.tag if self.tag_commit else None,
                "tag_commit": self.tag_commit, "tagged": self.tag_commit is not None,
                "merge_commit": self.merge_commit, "date": self.date, "metrics": self.metrics,
                "reverted": self.reverted}


def _git(ws: Workspace) -> GitRepo:
    return GitRepo.for_workspace(ws, "person", trunk=load_config(ws.config_path).git.trunk)


def _all_stories(ws: Workspace) -> list[tuple[Task, str, int]]:
    """``(task, sprint id, sprint number)`` of every story: the current queue's, then the archived ones'
    (newest sprint first); a story ID appears once, its newest sprint winning."""
    rows: list[tuple[Task, str, int]] = []
    seen: set[str] = set()
    store = QueueStore.for_workspace(ws)
    queues = []
    if store.path.exists():
        current = store.read()
        if current.sprint is not None:
            queues.append(current)
    queues += [a.queue for a in reversed(archived_sprints(ws)) if a.queue.sprint is not None]
    for queue in queues:
        assert queue.sprint is not None
        for task in queue.tasks:
            if task.id not in seen:
                seen.add(task.id)
                rows.append((task, queue.sprint.id, queue.sprint.number))
    return rows


def merge_of(git: GitRepo, task: Task) -> str | None:
    """The story's merge commit: ``merged_commit`` as the Integrator recorded it, else — a merge a
    person made — the trunk's first-parent merge commit of its last step's branch tip, else None."""
    if task.merged_commit is not None:
        return task.merged_commit
    builds = task.builds()
    branch = builds[-1].branch if builds else None
    if not branch or not git.branch_exists(branch) or not git.is_ancestor(branch):
        return None
    return git.merge_commit_of(branch)


def list_stories(ws: Workspace, git: GitRepo | None = None) -> list[MergedStory]:
    """Every merged story (see :func:`merge_of`), oldest sprint first, then by task ID."""
    git = git or _git(ws)
    out = []
    for task, sprint_id, number in _all_stories(ws):
        merge = merge_of(git, task)
        if merge is None:
            continue
        tag = f"{task.id}-complete"
        try:
            when: str | None = git.commit_time(merge)
        except Exception:  # a merge commit that is gone (a rewritten trunk): listed without a date
            when = None
        reverted = task.reverted is not None or git.tag_exists(f"{task.id}-reverted")
        out.append(MergedStory(task, sprint_id, number, tag, git.tag_commit(tag), merge, when,
                               headline(task.metrics), reverted))
    return sorted(out, key=lambda s: (s.sprint_number, s.task.id))


def tag_story(ws: Workspace, task_id: str, git: GitRepo | None = None) -> tuple[str, str]:
    """Tag the merged story ``task_id`` as ``<TASK>-complete``; returns ``(tag, commit)``.

    Raises :class:`TagError` when no sprint has the story, it is not merged (:func:`merge_of`) or its
    merge commit is not on the trunk, or the tag already exists (naming its commit).
    """
    validate_story_id(task_id)
    git = git or _git(ws)
    found = next(((t, sid) for t, sid, _ in _all_stories(ws) if t.id == task_id), None)
    if found is None:
        raise TagError(f"no story {task_id} in the current sprint's queue or an archived sprint "
                       f"({ws.relative(ws.archive_dir)})")
    task, sprint_id = found
    tag = f"{task_id}-complete"
    existing = git.tag_commit(tag)
    if existing is not None:
        raise TagError(f"tag {tag} already exists at {existing[:10]} ({git.subject(existing)})")
    merge = merge_of(git, task)
    if merge is None:
        raise TagError(f"{task_id} is not merged (status {task.status.value}; no merge commit recorded, and no "
                       f"--no-ff merge of its branch on the trunk {git.trunk!r}); only a merged story is tagged")
    if not git.is_ancestor(merge):
        raise TagError(f"{task_id}'s merge commit {merge[:10]} is not on the trunk {git.trunk!r}; "
                       "refusing to tag a commit outside it")
    builds = task.builds()
    branch = builds[-1].branch if builds and builds[-1].branch else "unknown"
    target = landed_commit(git, task_id, merge)
    git.tag(tag, completion_tag_message(task, sprint_id, branch, merge, MANUAL_GATES), target)
    return tag, target


def _release_notes(version: str, day: date, entries: dict[str, list[str]], stories: dict[str, MergedStory],
                   notes: str | None) -> str:
    """The annotated message of ``vX.Y.Z``: the stories with headline metrics, the reverted ones, the notes."""
    lines = [f"Release {version} ({day.isoformat()})", ""]
    if notes and notes.strip():
        lines += [notes.strip(), ""]
    for heading, items in entries.items():
        lines.append(f"{heading}:")
        for item in items:
            task_id = changelog.entry_task(item)
            story = stories.get(task_id or "")
            metrics = metrics_text(story.task) if story else ""
            text = item[2:].replace("**", "")
            # the Integrator's CHANGELOG line already holds the metrics; a hand-written one may not
            shown = metrics and heading == "Added" and metrics not in text
            lines.append(f"- {text}" + (f" [{metrics}]" if shown else ""))
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _check_release(ws: Workspace, git: GitRepo, version: str, text: str | None) -> None:
    """The refusals of a release after its name: heading taken, trunk not checked out or dirty, nothing new."""
    path = ws.root / "CHANGELOG.md"
    released = changelog.released_versions(text)
    if version in released:
        raise TagError(f"release {version} already exists: {path} has a section ## [{version}]")
    if not git.trunk_checked_out():
        raise TagError(f"{ws.root}: the trunk {git.trunk!r} is not checked out; a release is committed on the "
                       f"trunk in the primary checkout (fix: `git checkout {git.trunk}`)")
    dirty = git.dirty_tracked_files()
    if dirty:
        raise TagError(f"the trunk {git.trunk!r} has uncommitted changes in: {', '.join(dirty[:10])}; commit or "
                       "stash them first")
    if not changelog.unreleased(text):
        raise TagError(f"nothing unreleased: {path} has no entries above its newest release heading"
                       + (f" ## [{released[0]}]" if released else ""))


def release(ws: Workspace, name: str, *, notes: str | None = None, day: date | None = None,
            git: GitRepo | None = None) -> tuple[str, str]:
    """Cut release ``name`` (``vX.Y.Z``): the CHANGELOG section, its commit on the trunk, the tag.

    Returns ``(tag, commit)``. Raises :class:`TagError` (nothing changed) for a name that is not
    ``v`` + a semantic version (semver.org), a version already tagged or already a CHANGELOG heading,
    a primary checkout not on the trunk or with uncommitted changes to tracked files, or no
    unreleased entries.
    """
    git = git or _git(ws)
    version = name[1:] if name.startswith("v") else ""
    if changelog.SEMVER.fullmatch(version) is None:
        raise TagError(f"{name!r} is not a release name: use v + a semantic version (https://semver.org), "
                       "e.g. v0.1.0 or v1.2.0-rc.1")
    # under the git lock: an Integrator landing meanwhile (it moves the trunk under the same lock)
    # can neither change CHANGELOG.md between our read and our commit nor be overwritten by it
    with git.locked():
        if git.tag_exists(name):
            raise TagError(f"release {name} already exists: tag {name} at {git.tag_commit(name)}")
        path = ws.root / "CHANGELOG.md"
        text = path.read_text(encoding="utf-8") if path.exists() else None
        _check_release(ws, git, version, text)
        day = day or date.today()
        entries = changelog.unreleased(text)
        stories = {s.task.id: s for s in list_stories(ws, git)}
        atomic_write_text(path, changelog.release(text, version, day))
        try:
            commit = git.commit_paths(["CHANGELOG.md"], f"[docs] release {name}: CHANGELOG section [{version}]")
        except GitOperationError:  # a refused commit (a hook, no identity) leaves the CHANGELOG as it was
            if text is None:
                path.unlink()
            else:
                atomic_write_text(path, text)
            raise
        assert commit is not None  # the new section changed the file
        git.tag(name, _release_notes(name, day, entries, stories, notes), commit)
    return name, commit
