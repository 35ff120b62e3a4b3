"""``oodatcaa tag``: list, tag TASK, tag release (issue 10 part 5), and the CHANGELOG's release sections."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from oodatcaa import changelog, tagging
from oodatcaa.cli.main import main
from oodatcaa.core.errors import GitOperationError
from oodatcaa.core.models import Queue, RevertRecord, Sprint
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.workspace import Workspace
from support import add_steps, git, merge_story, queue_of, store_with, story_branch, workspace

S = TaskStatus
DAY = date(2026, 3, 4)


def _merged_workspace(tmp_path: Path) -> Workspace:
    """T001 merged and tagged, T002 merged by a person (no tag, a [docs] commit on its merge), T003 planned."""
    ws = workspace(tmp_path)
    m1 = merge_story(ws, "T001", {"a.txt": "a\n"})
    m2 = merge_story(ws, "T002", {"b.txt": "b\n"}, tag=False)
    (ws.root / "CHANGELOG.md").write_text(changelog.add_entry(
        changelog.add_entry(None, number=1, sprint_id="SPRINT-2026-001", day=DAY, task_id="T001", line="task 1"),
        number=1, sprint_id="SPRINT-2026-001", day=DAY, task_id="T002", line="task 2"))
    git(ws.root, "add", "CHANGELOG.md")
    git(ws.root, "commit", "-qm", "[docs] T002: changelog, plan and reports")
    queue = queue_of(3, T001={"status": S.DONE, "merged_commit": m1, "metrics": {"train.final_loss": 1.25}},
                     T002={"status": S.DONE, "merged_commit": m2})
    add_steps(queue.tasks[1], status=S.DONE)
    for sub in queue.tasks[1].subtasks:
        sub.status = S.DONE
    store_with(ws, queue)
    return ws


def test_list_shows_tags_merge_commits_and_flags_untagged(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    stories = tagging.list_stories(ws)
    assert [s.task.id for s in stories] == ["T001", "T002"]  # T003 is not merged
    t1, t2 = stories
    assert t1.tag_commit == git(ws.root, "rev-parse", "T001-complete^{commit}") and t1.metrics == {"train.final_loss": 1.25}
    assert t2.tag_commit is None and t2.to_json()["tagged"] is False and t2.to_json()["tag"] is None
    assert t1.date is not None and t1.date.startswith(str(datetime.now(UTC).year)[:2])
    assert not t1.reverted and not t2.reverted


def test_list_includes_archived_sprints_and_reverted_stories(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    old = merge_story(ws, "T009", {"c.txt": "c\n"})
    archived = Queue(sprint=Sprint(id="SPRINT-2025-007", number=7, title="old", created_at=datetime(2025, 1, 1, tzinfo=UTC)),
                     tasks=queue_of(1).tasks)
    archived.tasks[0].id, archived.tasks[0].merged_commit = "T009", old
    archived.tasks[0].reverted = RevertRecord(commit=old, reverted_merge=old, reason="bad", by="p", at=datetime.now(UTC))
    ws.sprint_archive_dir(7).mkdir(parents=True, exist_ok=True)
    (ws.sprint_archive_dir(7) / "SPRINT_QUEUE.json").write_text(archived.model_dump_json())
    stories = {s.task.id: s for s in tagging.list_stories(ws)}
    assert set(stories) == {"T001", "T002", "T009"}
    assert stories["T009"].sprint_id == "SPRINT-2025-007" and stories["T009"].reverted


def test_reverted_tag_alone_marks_a_story_reverted(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    git(ws.root, "tag", "-a", "T001-reverted", "-m", "reverted")
    assert [s.reverted for s in tagging.list_stories(ws)] == [True, False]


def test_tag_task_tags_the_docs_commit_with_the_integrator_message(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    tag, commit = tagging.tag_story(ws, "T002")
    assert tag == "T002-complete"
    assert commit == git(ws.root, "rev-parse", "HEAD")  # the [docs] T002 commit, not the merge under it
    task = next(s.task for s in tagging.list_stories(ws) if s.task.id == "T002")
    expected = tagging.completion_tag_message(task, "SPRINT-2026-001", "feat/T002-step-01-x", task.merged_commit or "",
                                              tagging.MANUAL_GATES)
    assert git(ws.root, "tag", "-l", "--format=%(contents)", tag).strip() == expected.strip()
    assert f"Merge: {task.merged_commit}" in expected and "Sprint: SPRINT-2026-001" in expected
    assert tagging.list_stories(ws)[1].tag_commit == commit


def test_tag_task_on_the_merge_when_no_docs_commit_follows(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    m1 = merge_story(ws, "T001", {"a.txt": "a\n"}, tag=False)
    merge_story(ws, "T002", {"b.txt": "b\n"})  # a later story's merge is never the landed commit of T001
    store_with(ws, queue_of(2, T001={"status": S.DONE, "merged_commit": m1}))
    assert tagging.tag_story(ws, "T001") == ("T001-complete", m1)


def test_tag_task_refuses_an_unmerged_story_and_an_existing_tag(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    with pytest.raises(tagging.TagError, match="T003 is not merged"):
        tagging.tag_story(ws, "T003")
    existing = git(ws.root, "rev-parse", "T001-complete^{commit}")
    with pytest.raises(tagging.TagError, match=f"tag T001-complete already exists at {existing[:10]}"):
        tagging.tag_story(ws, "T001")
    with pytest.raises(tagging.TagError, match="no story T042"):
        tagging.tag_story(ws, "T042")


def test_changelog_release_moves_unreleased_and_add_entry_goes_to_unreleased_again() -> None:
    text = changelog.add_entry(None, number=1, sprint_id="SPRINT-2026-001", day=DAY, task_id="T001", line="one")
    text = changelog.add_entry(text, number=1, sprint_id="SPRINT-2026-001", day=DAY, task_id="T002", line="gone",
                               heading="Reverted")
    text = changelog.add_entry(text, number=2, sprint_id="SPRINT-2026-002", day=DAY, task_id="T003", line="three")
    assert changelog.unreleased(text) == {"Added": ["- **T003**: three", "- **T001**: one"],
                                          "Reverted": ["- **T002**: gone"]}
    released = changelog.release(text, "0.1.0", DAY)
    assert "## [Sprint" not in released and "## [0.1.0] - 2026-03-04" in released
    assert released.index("### Added") < released.index("- **T001**: one") < released.index("### Reverted")
    assert released.startswith(changelog.HEADER.rstrip("\n")) and changelog.unreleased(released) == {}
    assert changelog.released_versions(released) == ["0.1.0"]
    # the Integrator's next entry of the same sprint: a new sprint section above the release
    after = changelog.add_entry(released, number=2, sprint_id="SPRINT-2026-002", day=DAY, task_id="T004", line="four")
    assert after.index("## [Sprint 2]") < after.index("## [0.1.0]")
    assert changelog.unreleased(after) == {"Added": ["- **T004**: four"]}
    again = changelog.release(after, "0.2.0", DAY)
    assert changelog.released_versions(again) == ["0.2.0", "0.1.0"] and "- **T001**: one" in again
    with pytest.raises(ValueError, match="no unreleased"):
        changelog.release(again, "0.3.0", DAY)


def test_release_commits_the_changelog_on_the_trunk_and_tags_it(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    tag, commit = tagging.release(ws, "v0.1.0", notes="first cut", day=DAY)
    assert tag == "v0.1.0" and commit == git(ws.root, "rev-parse", "main")
    assert git(ws.root, "rev-parse", "v0.1.0^{commit}") == commit
    assert git(ws.root, "cat-file", "-t", "v0.1.0") == "tag"  # annotated
    text = (ws.root / "CHANGELOG.md").read_text()
    assert "## [0.1.0] - 2026-03-04" in text and "## [Sprint 1]" not in text
    assert git(ws.root, "status", "--porcelain", "--untracked-files=no") == ""
    notes = git(ws.root, "tag", "-l", "--format=%(contents)", "v0.1.0")
    assert "first cut" in notes and "T001: task 1 [train.final_loss=1.25]" in notes and "T002: task 2" in notes
    with pytest.raises(tagging.TagError, match="release v0.1.0 already exists: tag"):
        tagging.release(ws, "v0.1.0", day=DAY)
    with pytest.raises(tagging.TagError, match=r"nothing unreleased: .* ## \[0.1.0\]"):
        tagging.release(ws, "v0.2.0", day=DAY)


@pytest.mark.parametrize("name", ["0.1.0", "v1.0", "v01.0.0", "v1.0.0-", "version1", "v1.2.3.4", "v"])
def test_release_refuses_a_name_that_is_not_semver(tmp_path: Path, name: str) -> None:
    ws = _merged_workspace(tmp_path)
    with pytest.raises(tagging.TagError, match="not a release name"):
        tagging.release(ws, name, day=DAY)


def test_release_accepts_prerelease_and_build_metadata(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    assert tagging.release(ws, "v1.2.0-rc.1+build.5", day=DAY)[0] == "v1.2.0-rc.1+build.5"


def test_release_refuses_an_existing_heading_a_dirty_trunk_and_another_branch(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    path = ws.root / "CHANGELOG.md"
    committed = path.read_text()
    path.write_text(committed + "\n## [0.1.0] - 2025-01-01\n\n### Added\n\n- **T000**: old\n")
    git(ws.root, "commit", "-qam", "[docs] a hand-made release section")
    with pytest.raises(tagging.TagError, match=r"has a section ## \[0.1.0\]"):
        tagging.release(ws, "v0.1.0", day=DAY)
    (ws.root / "a.txt").write_text("changed\n")
    with pytest.raises(tagging.TagError, match="uncommitted changes in: a.txt"):
        tagging.release(ws, "v0.2.0", day=DAY)
    git(ws.root, "checkout", "-q", "--", "a.txt")
    git(ws.root, "checkout", "-qb", "elsewhere")
    with pytest.raises(tagging.TagError, match="trunk 'main' is not checked out"):
        tagging.release(ws, "v0.2.0", day=DAY)
    assert git(ws.root, "tag", "-l", "v*") == ""


def test_release_refuses_when_nothing_is_unreleased(tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    store_with(ws, queue_of(1))
    with pytest.raises(tagging.TagError, match="nothing unreleased"):
        tagging.release(ws, "v0.1.0", day=DAY)


def test_cli_tag_list_task_and_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws = _merged_workspace(tmp_path)
    root = str(ws.root)
    assert main(["-C", root, "tag", "list"]) == 0
    out = capsys.readouterr()
    assert "T001-complete" in out.out and "MISSING" in out.out and "merged without a tag: T002" in out.err
    assert main(["-C", root, "tag", "T003"]) == 2
    assert "T003 is not merged" in capsys.readouterr().err
    assert main(["-C", root, "tag", "T002"]) == 0
    assert "tagged T002-complete" in capsys.readouterr().out
    assert main(["-C", root, "tag", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["tagged"] for r in rows] == [True, True] and rows[1]["tag"] == "T002-complete"
    assert main(["-C", root, "tag", "release"]) == 2
    assert "needs a version" in capsys.readouterr().err
    assert main(["-C", root, "tag", "list", "v1.0.0"]) == 2
    assert main(["-C", root, "tag", "release", "v0.1.0", "--notes", "hello"]) == 0
    assert "released v0.1.0" in capsys.readouterr().out


def test_a_refused_release_commit_leaves_the_changelog_as_it_was(tmp_path: Path) -> None:
    ws = _merged_workspace(tmp_path)
    before = (ws.root / "CHANGELOG.md").read_text()
    hook = ws.root / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho refused by hook >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(GitOperationError, match="refused by hook"):
        tagging.release(ws, "v0.1.0", day=DAY)
    assert (ws.root / "CHANGELOG.md").read_text() == before
    assert git(ws.root, "status", "--porcelain", "--untracked-files=no") == "" and git(ws.root, "tag", "-l", "v*") == ""


def test_the_integrator_tags_with_the_shared_message_and_its_entries_after_a_release_are_unreleased(
        tmp_path: Path) -> None:
    from test_gates import ready_stories, run_integrator

    ws = workspace(tmp_path)
    story_branch(ws, "T001", {"one.txt": "1\n"})
    story_branch(ws, "T002", {"two.txt": "2\n"})
    store = ready_stories(ws, 2)
    run_integrator(ws)
    first = next(t for t in store.read().tasks if t.status == S.DONE)
    message = git(ws.root, "tag", "-l", "--format=%(contents)", f"{first.id}-complete").strip()
    assert message == tagging.completion_tag_message(first, "SPRINT-2026-001", first.builds()[-1].branch or "",
                                                     first.merged_commit or "", "none configured").strip()
    assert tagging.release(ws, "v0.1.0", day=DAY)[0] == "v0.1.0"
    run_integrator(ws)
    assert all(t.status == S.DONE for t in store.read().tasks)
    text = (ws.root / "CHANGELOG.md").read_text()
    second = "T002" if first.id == "T001" else "T001"
    assert text.index(f"**{second}**") < text.index("## [0.1.0]") < text.index(f"**{first.id}**")
    assert [changelog.entry_task(line) for line in changelog.unreleased(text)["Added"]] == [second]
    assert [s.tag_commit is not None for s in tagging.list_stories(ws)] == [True, True]


def test_a_hand_written_unreleased_section_is_released_too() -> None:
    text = changelog.HEADER + "\n## [Unreleased]\n\n### Added\n\n- **T007**: by hand\n\n## [0.1.0] - 2025-01-01\n\n" \
        "### Added\n\n- **T001**: old\n"
    assert changelog.unreleased(text) == {"Added": ["- **T007**: by hand"]}
    released = changelog.release(text, "0.2.0", DAY)
    assert "[Unreleased]" not in released and changelog.released_versions(released) == ["0.2.0", "0.1.0"]
    assert released.index("- **T007**") < released.index("## [0.1.0]")
    with pytest.raises(ValueError, match=r"already has a section ## \[0.1.0\]"):
        changelog.release(text, "0.1.0", DAY)


def test_a_merge_a_person_made_is_listed_untagged_and_tagged_on_request(tmp_path: Path) -> None:
    """The story is still ready_for_integrator in the queue (no merged_commit): its branch's merge counts."""
    ws = workspace(tmp_path)
    merge = merge_story(ws, "T001", {"a.txt": "a\n"}, tag=False)
    queue = queue_of(2)
    for t in queue.tasks:
        add_steps(t)
    store_with(ws, queue)
    [story] = tagging.list_stories(ws)  # T002's branch does not exist: not merged
    assert story.task.id == "T001" and story.merge_commit == merge and story.tag_commit is None
    assert tagging.tag_story(ws, "T001") == ("T001-complete", merge)
    assert f"Merge: {merge}" in git(ws.root, "tag", "-l", "--format=%(contents)", "T001-complete")
    with pytest.raises(tagging.TagError, match="T002 is not merged"):
        tagging.tag_story(ws, "T002")
