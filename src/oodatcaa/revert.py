"""``oodatcaa revert TASK --reason TEXT``: undo a story's merge on the trunk through the gated path.

The revert is landed exactly like a merge (:mod:`oodatcaa.landing`): in a detached integration
checkout of the trunk's current commit, ``git revert -m 1 --no-commit <merge commit>`` plus the
CHANGELOG entry under the sprint's ``### Reverted`` heading naming the reason, one ``[revert]`` commit
(trailers ``Reason:``, ``Reverted-by:``, ``Reverts-merge:``), every ``[[gates]]`` run on it, and the
trunk moved to exactly that commit by compare-and-swap (retried when the trunk moved). Then the tag
``<TASK>-reverted`` on it and :class:`~oodatcaa.core.models.RevertRecord` on the story (commit, reason,
who — git ``user.name <user.email>`` — and when). A reverted story no longer counts as merged for the
objective (:func:`oodatcaa.completion.read_story_book`), so its metrics are no evidence.

Refused (:class:`RevertError`, nothing changed) when the story is not in the queue, was never merged,
is already reverted, its merge commit is not on the trunk, the revert conflicts, or a gate fails.
Idempotent: a revert that landed but was not recorded (a killed process) is found on the trunk by its
``Reverts-merge:`` trailer and finished rather than made twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from oodatcaa.baselines import baselines_path, forget_story
from oodatcaa.changelog import add_entry
from oodatcaa.core.atomic import atomic_write_text
from oodatcaa.core.clock import Clock
from oodatcaa.core.config import GateSpec, load_config
from oodatcaa.core.errors import MergeConflictError, OodatcaaError, UncommittedChangesError
from oodatcaa.core.ids import validate_story_id
from oodatcaa.core.models import RevertRecord, Task
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo
from oodatcaa.landing import land_gated


class RevertError(OodatcaaError):
    """A revert was refused; the message says why and what to do. Nothing was changed."""


def _who(git: GitRepo) -> str:
    name, email = git.user_identity()
    name = name or os.environ.get("USER", "") or "unknown"
    return f"{name} <{email}>" if email else name


def _checked(ws: Workspace, git: GitRepo, task_id: str) -> Task:
    """The story to revert, after the refusals (see the module doc)."""
    validate_story_id(task_id)
    store = QueueStore.for_workspace(ws)
    queue = store.read()
    try:
        task = queue.task(task_id)
    except KeyError:
        raise RevertError(f"no story {task_id} in {store.path}; only a story of the current sprint can be "
                          "reverted") from None
    if task.reverted is not None:
        r = task.reverted
        raise RevertError(f"{task_id} is already reverted: commit {r.commit[:10]} ({r.at.isoformat()}, by {r.by}): "
                          f"{r.reason}")
    if task.merged_commit is None:
        raise RevertError(f"{task_id} was never merged (status {task.status.value}); there is nothing to revert")
    if not git.is_ancestor(task.merged_commit):
        raise RevertError(f"{task_id}'s merge commit {task.merged_commit[:10]} is not on the trunk {git.trunk!r} "
                          f"(was the trunk reset?); nothing to revert there")
    return task


def revert_story(ws: Workspace, task_id: str, reason: str, *, clock: Clock | None = None,
                 owner: str = "revert") -> RevertRecord:
    """Revert story ``task_id``'s merge on the trunk, gated; returns the recorded :class:`RevertRecord`.

    ``reason`` (one line after whitespace is collapsed, 1-2000 characters) goes into the commit,
    the CHANGELOG, the tag and the record. Raises :class:`RevertError` (nothing changed) as the
    module doc lists; :class:`~oodatcaa.core.errors.ConfigError` for a malformed ``config.toml``.
    """
    reason = " ".join(reason.split())
    if not reason:
        raise RevertError("--reason is empty; say why the story is reverted (it goes into the CHANGELOG and the tag)")
    if len(reason) > 2000:
        raise RevertError(f"--reason is {len(reason)} characters; keep it under 2000")
    clock = clock or Clock()
    config = load_config(ws.config_path, ws.agents_dir)
    git = GitRepo.for_workspace(ws, owner, trunk=config.git.trunk)
    git.ensure_trunk_branch()
    task = _checked(ws, git, task_id)
    merge = task.merged_commit
    assert merge is not None
    who = _who(git)
    landed = git.commit_with_trailer(f"Reverts-merge: {merge}")
    if landed is None:
        landed = _land(ws, git, config.gates, task, merge, reason, who, clock, owner)
    tag = f"{task_id}-reverted"
    if not git.tag_exists(tag):
        git.tag(tag, f"{task_id} reverted: {task.title}\n\nReason: {reason}\nReverted-by: {who}\n"
                     f"Reverts-merge: {merge}\n", landed)
    record = RevertRecord(commit=landed, reverted_merge=merge, reason=reason, by=who, at=clock.now())
    with QueueStore.for_workspace(ws, clock=clock).transaction("person") as tx:
        story = tx.task(task_id)
        story.reverted = record
        tx.log(task_id, "reverted", f"merge {merge[:10]} reverted in {landed[:10]} by {who}: {reason}"[:300])
    return record


def _land(ws: Workspace, git: GitRepo, gates: Sequence[GateSpec], task: Task, merge: str, reason: str, who: str,
          clock: Clock, owner: str) -> str:
    """Build the revert commit in the integration checkout, gate it and land it; returns the landed commit."""
    queue = QueueStore.for_workspace(ws).read()
    sprint = queue.sprint
    tag = f"{task.id}-reverted"

    def build(checkout: Path, trunk: str) -> str:
        git.revert_merge_at(checkout, merge)
        if sprint is not None:
            changelog = checkout / "CHANGELOG.md"
            old = changelog.read_text(encoding="utf-8") if changelog.exists() else None
            atomic_write_text(changelog, add_entry(
                old, number=sprint.number, sprint_id=sprint.id, day=clock.now().date(), task_id=task.id,
                line=f"{task.title} — reverted: {reason} (tag `{tag}`; merge `{merge[:10]}`)", heading="Reverted"))
        # the story's baselines were committed after its merge, so `git revert -m 1` keeps them: drop them here
        forget_story(Workspace(checkout), task.id)
        message = (f"[revert] {task.id}: revert merge {merge[:10]} — {task.title}\n\n"
                   f"Reason: {reason}\nReverted-by: {who}\nReverts-merge: {merge}\n")
        commit = git.commit_at(checkout, ["CHANGELOG.md", ws.relative(baselines_path(ws))], message, allow_empty=True)
        assert commit is not None
        return commit

    try:
        # the checkout is per process: two reverts at once never share one
        outcome = land_gated(ws, git, gates, build, owner=f"{owner}-{os.getpid()}")
    except MergeConflictError as exc:
        raise RevertError(f"reverting {task.id}'s merge {merge[:10]} conflicts with later work in: "
                          f"{', '.join(exc.files)}; revert by hand, or revert the later stories first") from None
    except UncommittedChangesError as exc:
        raise RevertError(f"{exc}; then run the revert again") from None
    if outcome.status == "trunk_moving":
        raise RevertError(f"the trunk moved under {outcome.attempts} attempts in a row; run the revert again")
    gate = outcome.failed_gate
    if gate is not None:
        tail = gate.output_tail.rstrip()[-1500:]
        raise RevertError(f"gate {gate.gate!r} (`{gate.command}`) failed on the revert: {gate.reason}; "
                          f"{git.trunk} is unchanged" + (f"\noutput tail:\n{tail}" if tail else ""))
    return outcome.commit
