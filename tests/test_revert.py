"""``oodatcaa revert``: a story's merge undone on the trunk through the gated landing, and its refusals."""

from __future__ import annotations

import pytest

from oodatcaa.cli.main import main
from oodatcaa.completion import read_story_book
from oodatcaa.core.clock import FakeClock
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.gitops import GitRepo
from oodatcaa.revert import RevertError, revert_story
from support import git, workspace
from test_gates import add_gates, gate, ready_stories, run_integrator, story_branch

S = TaskStatus


@pytest.fixture
def ws(tmp_path):
    """T001 (adds feature.txt) integrated on main; T002 ready for the Integrator, never merged."""
    ws = workspace(tmp_path)
    story_branch(ws, "T001", {"feature.txt": "feature\n"})
    story_branch(ws, "T002", {"other.txt": "other\n"})
    store = ready_stories(ws, 2)
    with store.transaction("test") as tx:
        tx.queue.task("T002").status = S.NEEDS_ADAPT  # keeps the Integrator off it
    run_integrator(ws)
    assert task(ws).status == S.DONE
    return ws


def task(ws, task_id: str = "T001"):
    return QueueStore.for_workspace(ws).read().task(task_id)


def test_revert_undoes_the_merge_on_the_trunk_and_records_it(ws):
    merge = task(ws).merged_commit
    clock = FakeClock()
    record = revert_story(ws, "T001", "  broke the\nevaluation  ", clock=clock)
    head = git(ws.root, "rev-parse", "main")
    assert record.commit == head and record.reverted_merge == merge
    assert record.reason == "broke the evaluation" and record.by == "test <test@example.com>"
    assert record.at == clock.now()
    assert task(ws).reverted == record and task(ws).status == S.DONE
    message = git(ws.root, "log", "-1", "--format=%B", "main")
    assert message.startswith(f"[revert] T001: revert merge {merge[:10]}") and f"Reverts-merge: {merge}" in message
    assert "feature.txt" not in git(ws.root, "ls-tree", "-r", "--name-only", "main").split()
    assert not (ws.root / "feature.txt").exists()  # the checked-out trunk's files moved with it
    assert git(ws.root, "rev-parse", "T001-reverted^{commit}") == head
    assert "Reason: broke the evaluation" in git(ws.root, "tag", "-n20", "T001-reverted")
    changelog = (ws.root / "CHANGELOG.md").read_text()
    reverted = changelog.split("### Reverted", 1)[1]
    assert "- **T001**:" in reverted and "reverted: broke the evaluation" in reverted
    assert "- **T001**:" in changelog.split("### Added", 1)[1].split("###", 1)[0]  # the Added line stays
    assert not git(ws.root, "status", "--porcelain", "--untracked-files=no")
    # the objective no longer counts the story as merged, so its metrics are no evidence
    fact = read_story_book(ws, GitRepo.for_workspace(ws, "test")).stories["T001"]
    assert fact.reverted and not fact.merged


def test_a_story_never_merged_is_refused(ws):
    before = git(ws.root, "rev-parse", "main")
    with pytest.raises(RevertError, match=r"T002 was never merged \(status needs_adapt\); there is nothing to revert"):
        revert_story(ws, "T002", "no")
    assert git(ws.root, "rev-parse", "main") == before


def test_a_story_already_reverted_is_refused(ws):
    first = revert_story(ws, "T001", "broke it")
    with pytest.raises(RevertError, match=rf"T001 is already reverted: commit {first.commit[:10]}.*: broke it"):
        revert_story(ws, "T001", "again")
    assert git(ws.root, "rev-parse", "main") == first.commit


def test_a_merge_that_is_not_on_the_trunk_is_refused(ws):
    git(ws.root, "checkout", "-qb", "elsewhere")
    git(ws.root, "commit", "-q", "--allow-empty", "-m", "side")
    side = git(ws.root, "rev-parse", "HEAD")
    git(ws.root, "checkout", "-q", "main")
    with QueueStore.for_workspace(ws).transaction("test") as tx:
        tx.queue.task("T001").merged_commit = side
    with pytest.raises(RevertError, match=rf"T001's merge commit {side[:10]} is not on the trunk 'main'"):
        revert_story(ws, "T001", "x")


def test_an_unknown_story_and_an_empty_reason_are_refused(ws):
    with pytest.raises(RevertError, match="no story T009 in"):
        revert_story(ws, "T009", "x")
    with pytest.raises(RevertError, match="--reason is empty"):
        revert_story(ws, "T001", "   ")


def test_a_revert_that_fails_a_gate_leaves_the_trunk_untouched(ws):
    add_gates(ws, gate("feature present", "test -f feature.txt || { echo feature.txt is gone; exit 1; }"))
    before = git(ws.root, "rev-parse", "main")
    with pytest.raises(RevertError, match=r"gate 'feature present' .* failed on the revert: exit 1; main is unchanged"
                                          r"\noutput tail:\nfeature.txt is gone"):
        revert_story(ws, "T001", "x")
    assert git(ws.root, "rev-parse", "main") == before
    assert task(ws).reverted is None and "T001-reverted" not in git(ws.root, "tag")
    assert (ws.root / "feature.txt").exists()


def test_a_revert_landed_but_not_recorded_is_finished_not_made_twice(ws):
    first = revert_story(ws, "T001", "broke it")
    git(ws.root, "tag", "-d", "T001-reverted")
    with QueueStore.for_workspace(ws).transaction("test") as tx:
        tx.queue.task("T001").reverted = None  # as if killed right after the compare-and-swap
    again = revert_story(ws, "T001", "broke it")
    assert again.commit == first.commit == git(ws.root, "rev-parse", "main")
    assert git(ws.root, "rev-parse", "T001-reverted^{commit}") == first.commit


def test_the_cli_reverts_and_exits_2_when_refused(ws, capsys):
    assert main(["-C", str(ws.root), "revert", "T001", "--reason", "regressed"]) == 0
    out = capsys.readouterr().out
    assert "T001: merge" in out and "(tag T001-reverted)" in out and "regressed" in out
    assert main(["-C", str(ws.root), "revert", "T001", "--reason", "again"]) == 2
    assert "already reverted" in capsys.readouterr().err


def test_revert_drops_the_storys_regression_baselines_on_the_trunk(tmp_path):
    import json

    ws = workspace(tmp_path)
    story_branch(ws, "T001", {"feature.txt": "feature\n"})
    store = ready_stories(ws, 1)
    with store.transaction("test") as tx:
        step = tx.queue.task("T001").builds()[0]
        step.job = {"kind": "inference_bench", "model": "default"}
        step.result = {"summary": {"inference": {"generation_tps": 120.0}}}
    run_integrator(ws)
    path = ".oodatcaa/work/baselines.json"
    landed = json.loads(git(ws.root, "show", f"main:{path}"))
    assert [e["task"] for e in landed["entries"]] == ["T001"]  # recorded in the landed commit
    revert_story(ws, "T001", "slower than it looked")
    after = json.loads(git(ws.root, "show", f"main:{path}"))
    assert after["entries"] == []
    assert json.loads((ws.root / path).read_text())["entries"] == []  # the checked-out trunk moved with it
