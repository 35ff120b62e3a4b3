"""A person's decisions without editing JSON: approve, reject, resolve; and what waits for a person.

In-process, with fake clocks; the Negotiator's wait-then-resume runs its real loop with short ticks.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest

from oodatcaa.backlog.parser import parse_backlog
from oodatcaa.backlog.writer import format_item
from oodatcaa.cli.main import main
from oodatcaa.core.clock import FakeClock
from oodatcaa.core.config import default_config_toml, load_config
from oodatcaa.core.errors import BacklogError
from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.models import Queue, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import GitRepo
from oodatcaa.person import (
    Person,
    PersonError,
    approval_text,
    approve,
    awaiting_approval,
    is_approved,
    reject,
    resolve,
    waiting_for_person,
)
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.integrator import Integrator
from oodatcaa.roles.negotiator import EXIT_PERSON_WAIT, EXIT_STUCK, EXIT_TIMEOUT, Negotiator
from support import add_steps, configure, git, sample_queue, store_with, workspace

S = TaskStatus
ADA = Person("Ada Lovelace", "ada@example.org")
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def accepted(task: Task, commit: str = "c0ffee" * 6 + "beef") -> Task:
    """``task`` as the Tester leaves an accepted story: ready_for_integrator, its verdict committed."""
    add_steps(task, status=S.AWAITING_TEST)
    tester = task.tester()
    assert tester is not None
    tester.status = S.READY_FOR_INTEGRATOR
    tester.result = {"verdict": {"decision": "accept"}, "commit": commit}
    task.status = S.READY_FOR_INTEGRATOR
    return task


def gray(task: Task) -> Task:
    """``task`` as a gray-zone verdict (policy gray_zone_decision = needs_manual) leaves it."""
    add_steps(task, status=S.AWAITING_TEST)
    tester = task.tester()
    assert tester is not None
    tester.status = S.NEEDS_MANUAL
    tester.result = {"verdict": {"decision": "needs_manual"}, "commit": "ab" * 20}
    task.status = S.NEEDS_MANUAL
    task.failure = Failure.of(FailureKind.CRITERIA_FAILED, "tester: gray zone: 2/3 criteria passed",
                              item=tester.id, decision="needs_manual")
    task.manual_reason = "gray zone: 2/3 criteria passed (66.67%)"
    return task


def escalated(task: Task) -> Task:
    """``task`` after the Refiner ran out of loops on a failed builder step."""
    add_steps(task)
    task.builds()[0].status = S.NEEDS_MANUAL
    task.status = S.NEEDS_MANUAL
    task.adapt_loops = 3
    task.manual_reason = "adaptation limit reached (3 of 3 loops used)"
    task.failure = Failure.of(FailureKind.OOM, "ran out of memory", item=task.builds()[0].id)
    return task


def seeded(tmp_path, queue: Queue, **config: dict) -> tuple[Workspace, QueueStore, FakeClock]:
    ws = workspace(tmp_path)
    if config:
        configure(ws.config_path, **config)
    clock = FakeClock(START)
    return ws, store_with(ws, queue, clock), clock


def cfg(ws: Workspace):
    return load_config(ws.config_path, ws.agents_dir)


# -- where approval is asked for -------------------------------------------------------------


def test_approval_required_is_read_from_the_backlog_and_written_back():
    text = ("# S\n\n### T001: Tune\n**Type:** Story  **Dependencies:** None\n**Approval:** required\n\n"
            "### T002: Other\n**Type:** Story\n**Approval:** none\n")
    backlog = parse_backlog(text, source="b.md")
    assert [i.approval_required for i in backlog.items] == [True, False]
    again = parse_backlog("# S\n\n" + format_item(backlog.items[0]), source="b.md")
    assert again.items[0].approval_required


def test_an_approval_value_nobody_understands_is_refused_naming_the_line_and_the_fix():
    with pytest.raises(BacklogError, match=r"b\.md:4: \*\*Approval:\*\* 'maybe' of T001.*Approval:\*\* required"):
        parse_backlog("# S\n\n### T001: Tune\n**Approval:** maybe\n", source="b.md")


def test_config_has_an_integrator_section_and_a_person_wait():
    text = default_config_toml()
    assert "[integrator]" in text and "# require_approval = false" in text
    assert "# person_wait_minutes = 60" in text


def test_the_integrator_does_not_claim_a_story_awaiting_approval_until_it_is_approved(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, clock = seeded(tmp_path, q)
    integrator = Integrator(AgentContext.open(ws, "integrator-1", clock=clock))
    assert integrator.claim() is None
    assert store.read().task("T001").status == S.READY_FOR_INTEGRATOR
    approve(store, "T001", ADA, cfg(ws), note="numbers look right")
    claim = integrator.claim()
    assert claim is not None and claim.item_id == "T001"
    assert store.read().task("T001").status == S.INTEGRATING


def test_require_approval_in_config_holds_every_story(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0])
    ws, store, clock = seeded(tmp_path, q, integrator={"require_approval": True})
    assert awaiting_approval(store.read().task("T001"), cfg(ws))
    assert Integrator(AgentContext.open(ws, "integrator-1", clock=clock)).claim() is None
    configure(ws.config_path, integrator={"require_approval": False})
    assert Integrator(AgentContext.open(ws, "integrator-1", clock=clock)).claim() is not None


# -- approve and reject ----------------------------------------------------------------------


def test_approve_records_who_when_and_the_note_on_the_story_and_in_the_log(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, _ = seeded(tmp_path, q)
    assert main(["-C", str(ws.root), "approve", "T001", "--note", "loss | fine"]) == 0
    task = store.read().task("T001")
    record = task.approval
    assert record is not None and record.decision == "approved"
    # the repository's git identity (tests/support.py sets user.name and user.email)
    assert (record.by_name, record.by_email, record.note) == ("test", "test@example.com", "loss | fine")
    assert is_approved(task) and not awaiting_approval(task, cfg(ws))
    assert approval_text(task) == f"Approved by test <test@example.com> at {record.at:%Y-%m-%dT%H:%M:%SZ}: loss | fine"
    log = ws.agent_log_path.read_text()
    assert "| person | T001 | approved | by test <test@example.com>: loss \\| fine" in log
    discuss = (ws.work_dir / "SPRINT_DISCUSS.md").read_text()  # one decision entry, the note kept literal
    assert discuss.count("(a person decided)") == 1 and "— T001 — APPROVE (a person decided)" in discuss
    assert "- **Decision:** `approve` by `test <test@example.com>`" in discuss
    assert "- **Reason:** `loss | fine`" in discuss and "- **Outcome:** the story is `ready_for_integrator`" in discuss


def test_an_approval_holds_only_for_the_work_that_was_tested(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, clock = seeded(tmp_path, q)
    approve(store, "T001", ADA, cfg(ws))
    assert approval_text(store.read().task("T001")).startswith("Approved by Ada Lovelace <ada@example.org> at "
                                                                "2026-03-01T09:00:00Z")
    with store.transaction("tester-1") as tx:  # rebuilt and re-tested: a new results commit
        tx.task("T001").subtasks[-1].result = {"commit": "1" * 40}
    task = store.read().task("T001")
    assert not is_approved(task) and awaiting_approval(task, cfg(ws)) and approval_text(task) is None


def test_reject_sends_the_story_to_the_refiner_with_a_rejected_failure(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, _ = seeded(tmp_path, q)
    reject(store, "T001", ADA, cfg(ws), "answers are too short")
    task = store.read().task("T001")
    assert task.status == S.NEEDS_ADAPT and task.tester().status == S.NEEDS_ADAPT
    assert task.failure.kind == FailureKind.REJECTED and "answers are too short" in task.failure.message
    assert task.failure.details == {"by": "Ada Lovelace", "email": "ada@example.org"}
    assert task.approval.decision == "rejected" and task.approval.note == "answers are too short"
    assert "rejected at review by Ada Lovelace <ada@example.org>: answers are too short" in ws.agent_log_path.read_text()


def test_reject_to_a_person_sends_it_to_needs_manual_with_the_reason(tmp_path, capsys):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, _ = seeded(tmp_path, q)
    assert main(["-C", str(ws.root), "reject", "T001", "--reason", "wrong dataset", "--to-person"]) == 0
    task = store.read().task("T001")
    assert task.status == S.NEEDS_MANUAL and "wrong dataset" in task.manual_reason
    assert "T001 rejected by test <test@example.com> -> needs_manual" in capsys.readouterr().out
    discuss = (ws.work_dir / "SPRINT_DISCUSS.md").read_text()
    assert "REJECT --TO-PERSON (a person decided)" in discuss and "the story is `needs_manual`" in discuss
    assert [w.task_id for w in waiting_for_person(store.read(), cfg(ws))] == ["T001"]


@pytest.mark.parametrize("command", ["approve", "reject"])
def test_approve_or_reject_of_a_story_not_waiting_is_refused_naming_its_status(tmp_path, capsys, command):
    q = sample_queue(2)
    add_steps(q.tasks[0]).status = S.IN_PROGRESS
    accepted(q.tasks[1])  # accepted, but nobody asked for an approval
    ws, store, _ = seeded(tmp_path, q)
    extra = ["--reason", "no"] if command == "reject" else []
    before = store.read().revision
    assert main(["-C", str(ws.root), command, "T001", *extra]) == 2
    assert "T001 is in_progress, not waiting for an approval" in capsys.readouterr().err
    assert main(["-C", str(ws.root), command, "T002", *extra]) == 2
    assert "T002 is ready_for_integrator but needs no approval" in capsys.readouterr().err
    assert store.read().revision == before  # nothing written


def test_approving_twice_is_refused_saying_who_approved(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, _ = seeded(tmp_path, q)
    approve(store, "T001", ADA, cfg(ws))
    with pytest.raises(PersonError, match="already approved .Approved by Ada Lovelace"):
        approve(store, "T001", ADA, cfg(ws))


@pytest.mark.parametrize("argv", [["approve", "T009"], ["reject", "T009", "--reason", "x"],
                                  ["resolve", "T009", "--retry"]])
def test_an_unknown_story_is_an_error_naming_the_known_ones(tmp_path, capsys, argv):
    ws, _, _ = seeded(tmp_path, sample_queue(2))
    assert main(["-C", str(ws.root), *argv]) == 2
    err = capsys.readouterr().err
    assert "no story T009" in err and "the stories are: T001, T002" in err


def test_a_subtask_id_is_refused_saying_to_give_the_story(tmp_path, capsys):
    ws, _, _ = seeded(tmp_path, sample_queue(1))
    assert main(["-C", str(ws.root), "approve", "T001-B01"]) == 2
    assert "'T001-B01' is not a story ID" in capsys.readouterr().err


# -- resolve ---------------------------------------------------------------------------------


def test_retry_sends_the_failed_step_back_to_the_builder_keeping_the_loop_count(tmp_path):
    q = sample_queue(1)
    escalated(q.tasks[0])
    ws, store, _ = seeded(tmp_path, q)
    outcome = resolve(store, "T001", "retry", ADA)
    task = store.read().task("T001")
    assert outcome.status == S.READY and task.status == S.READY and task.builds()[0].status == S.READY
    assert task.tester().status == S.BLOCKED and task.adapt_loops == 3 and task.manual_reason is None
    assert "resolve --retry by Ada Lovelace <ada@example.org>" in ws.agent_log_path.read_text()


def test_retry_of_a_verdict_left_to_a_person_tests_again(tmp_path):
    q = sample_queue(1)
    gray(q.tasks[0])
    ws, store, _ = seeded(tmp_path, q)
    resolve(store, "T001", "retry", ADA)
    task = store.read().task("T001")
    assert task.status == S.AWAITING_TEST and task.tester().status == S.READY


def test_retry_of_a_story_the_planner_left_plans_it_again(tmp_path):
    q = sample_queue(1)
    q.tasks[0].status = S.NEEDS_MANUAL
    q.tasks[0].manual_reason = "no job block"
    ws, store, _ = seeded(tmp_path, q)
    assert resolve(store, "T001", "retry", ADA).status == S.NEEDS_PLAN


def test_replan_goes_through_the_start_over_gate(tmp_path):
    q = sample_queue(1)
    task = escalated(q.tasks[0])
    task.plan_version, task.baseline_tag = 1, "pre/T001-base"
    ws, store, _ = seeded(tmp_path, q)
    root = ws.root
    git(root, "tag", "-a", "pre/T001-base", "-m", "baseline")
    base = git(root, "rev-parse", "pre/T001-base^{commit}")
    branch = task.builds()[0].branch
    git(root, "checkout", "-qb", branch)
    git(root, "commit", "-q", "--allow-empty", "-m", "[impl] T001: work")
    git(root, "checkout", "-q", "main")
    assert main(["-C", str(root), "resolve", "T001", "--replan"]) == 0
    task = store.read().task("T001")
    assert task.status == S.NEEDS_PLAN and task.adapt_loops == 0 and task.plan_version == 1
    assert {s.status for s in task.subtasks} == {S.CANCELLED}
    assert git(root, "rev-parse", branch) == base
    assert f"to pre/T001-base: {branch}" in ws.agent_log_path.read_text()


def test_cancel_needs_a_reason_and_cancels_the_open_subtasks(tmp_path, capsys):
    q = sample_queue(1)
    escalated(q.tasks[0])
    ws, store, _ = seeded(tmp_path, q)
    assert main(["-C", str(ws.root), "resolve", "T001", "--cancel"]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert main(["-C", str(ws.root), "resolve", "T001", "--cancel", "--reason", "not worth it"]) == 0
    task = store.read().task("T001")
    assert task.status == S.CANCELLED and {s.status for s in task.subtasks} == {S.CANCELLED}
    assert "resolve --cancel by test <test@example.com>: not worth it" in ws.agent_log_path.read_text()


def test_accept_of_a_gray_zone_verdict_goes_to_the_integrator_as_approved(tmp_path):
    q = sample_queue(1)
    gray(q.tasks[0]).approval_required = True
    ws, store, _ = seeded(tmp_path, q)
    resolve(store, "T001", "accept", ADA, reason="the third answer is fine too")
    task = store.read().task("T001")
    assert task.status == S.READY_FOR_INTEGRATOR and task.tester().status == S.READY_FOR_INTEGRATOR
    assert task.failure is None and is_approved(task) and not awaiting_approval(task, cfg(ws))
    assert approval_text(task).endswith(": the third answer is fine too")


def test_accept_is_refused_for_a_story_the_tester_did_not_leave_to_a_person(tmp_path):
    q = sample_queue(1)
    escalated(q.tasks[0])
    ws, store, _ = seeded(tmp_path, q)
    with pytest.raises(PersonError, match="not on a Tester's open verdict .oom: ran out of memory"):
        resolve(store, "T001", "accept", ADA, reason="fine")


def test_resolve_of_a_story_not_in_needs_manual_is_refused_naming_its_status(tmp_path, capsys):
    q = sample_queue(1)
    accepted(q.tasks[0])
    ws, store, _ = seeded(tmp_path, q)
    for how in (["--retry"], ["--replan"], ["--accept", "--reason", "x"]):
        assert main(["-C", str(ws.root), "resolve", "T001", *how]) == 2
        assert "T001 is ready_for_integrator, not needs_manual" in capsys.readouterr().err
    assert store.read().task("T001").status == S.READY_FOR_INTEGRATOR


# -- what waits for a person -----------------------------------------------------------------


def test_waiting_names_each_story_its_reason_who_is_blocked_behind_it_and_the_command(tmp_path, capsys):
    q = sample_queue(4)
    gray(q.tasks[0])
    q.tasks[1].dependencies, q.tasks[1].status = ["T001"], S.BLOCKED
    q.tasks[2].dependencies, q.tasks[2].status = ["T002"], S.BLOCKED
    accepted(q.tasks[3]).approval_required = True
    ws, store, _ = seeded(tmp_path, q)
    waiting = waiting_for_person(store.read(), cfg(ws))
    assert [(w.task_id, w.blocked, w.awaiting_approval) for w in waiting] == [
        ("T001", ["T002", "T003"], False), ("T004", [], True)]
    assert waiting[0].command == "oodatcaa resolve T001 --retry | --replan | --cancel --reason TEXT | --accept --reason TEXT"
    assert waiting[1].command.startswith("oodatcaa approve T004")
    assert main(["-C", str(ws.root), "status"]) == 0
    out = capsys.readouterr().out
    assert "Waiting for a person:" in out and "T001 needs_manual: gray zone" in out and "blocked behind it: T002, T003" in out
    assert main(["-C", str(ws.root), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["id"]: r for r in data["tasks"] if r["kind"] == "story"}
    assert rows["T004"]["awaiting_approval"] is True and rows["T001"]["awaiting_approval"] is False
    assert [w["task"] for w in data["waiting_for_person"]] == ["T001", "T004"]


# -- the Negotiator --------------------------------------------------------------------------


def _negotiator_workspace(tmp_path, wait_minutes: float) -> tuple[Workspace, QueueStore]:
    q = sample_queue(2)
    q.tasks[0].status, q.tasks[0].manual_reason = S.NEEDS_MANUAL, "no job block"
    q.tasks[1].dependencies, q.tasks[1].status = ["T001"], S.BLOCKED
    ws = workspace(tmp_path)
    configure(ws.config_path, negotiator={"tick_seconds": 0.05, "person_wait_minutes": wait_minutes})
    return ws, store_with(ws, q)


def test_the_negotiator_says_at_once_what_waits_then_exits_8_when_nobody_acts(tmp_path):
    ws, _ = _negotiator_workspace(tmp_path, 0.01)
    said: list[str] = []
    code, message = Negotiator(AgentContext.open(ws, "negotiator"), spawn_agents=False, max_seconds=20,
                               on_event=said.append).run()
    assert code == EXIT_PERSON_WAIT
    assert "T001 needs_manual: no job block; blocked behind it: T002; resolve: oodatcaa resolve T001 --retry" in message
    assert "sprint complete --force" in message
    assert len(said) == 1 and said[0].startswith("waiting for a person: T001 needs_manual")
    log = ws.sprint_log_path.read_text()
    assert log.count("| waiting for a person |") == 1 and "exit 8" in log
    assert "needs_manual=1; waiting for a person (0 of 0.01 min): T001" in log  # the heartbeat says it too


def test_the_negotiator_resumes_as_soon_as_the_person_acts(tmp_path):
    ws, store = _negotiator_workspace(tmp_path, 0.01)
    acted = threading.Event()

    def person_acts(text: str) -> None:  # the person runs `oodatcaa resolve T001 --retry` on the announcement
        resolve(store, "T001", "retry", ADA)
        acted.set()

    code, message = Negotiator(AgentContext.open(ws, "negotiator"), spawn_agents=False, max_seconds=2,
                               on_event=person_acts).run()
    # no planner runs here: T001 waits in needs_plan, so the run goes on until its time limit, not exit 8
    assert acted.is_set() and code == EXIT_TIMEOUT, message
    assert store.read().task("T001").status == S.NEEDS_PLAN


def test_a_met_objective_does_not_wait_for_a_person(tmp_path):
    ws, _ = _negotiator_workspace(tmp_path, 60)
    (ws.objectives_dir / "OBJECTIVE.md").write_text("# OBJECTIVE\n\n## Success Criteria\n\n- [ ] there `file: x.txt`\n")
    (ws.root / "x.txt").write_text("x")
    git(ws.root, "add", "-A")
    git(ws.root, "commit", "-qm", "[docs] objective")
    code, message = Negotiator(AgentContext.open(ws, "negotiator"), spawn_agents=False, max_seconds=20).run()
    # exit 3 at once (after the stuck grace), for `run --until-objective` to close the sprint as it is
    assert code == EXIT_STUCK and "T001 needs_manual: no job block" in message


def test_person_identity_falls_back_on_the_user(tmp_path, monkeypatch):
    ws = workspace(tmp_path)
    repo = GitRepo.for_workspace(ws, "person")
    assert repo.person_identity() == ("test", "test@example.com")
    git(ws.root, "config", "--unset", "user.name")
    git(ws.root, "config", "--unset", "user.email")
    monkeypatch.setenv("HOME", str(tmp_path))  # no global identity either
    monkeypatch.setenv("USER", "ana")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    assert repo.person_identity() == ("ana", "")


def test_the_integrator_report_and_tag_message_say_who_approved(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, store, clock = seeded(tmp_path, q)
    branch = q.tasks[0].builds()[0].branch
    git(ws.root, "checkout", "-qb", branch)
    (ws.root / "T001.txt").write_text("work")
    git(ws.root, "add", "T001.txt")
    git(ws.root, "commit", "-qm", "[impl] T001: work")
    git(ws.root, "checkout", "-q", "main")
    approve(store, "T001", ADA, cfg(ws), note="good enough")
    assert Integrator(AgentContext.open(ws, "integrator-1", clock=clock)).run(once=True) == 0
    assert store.read().task("T001").status == S.DONE
    line = "Approved by Ada Lovelace <ada@example.org> at 2026-03-01T09:00:00Z: good enough"
    assert f"- **Approval:** {line}" in (ws.report_dir("T001") / "integrator.md").read_text()
    assert f"Approval: {line}" in git(ws.root, "tag", "-l", "--format=%(contents)", "T001-complete")


def test_status_still_shows_the_queue_when_the_config_is_malformed(tmp_path, capsys):
    q = sample_queue(1)
    accepted(q.tasks[0]).approval_required = True
    ws, _, _ = seeded(tmp_path, q)
    ws.config_path.write_text("[integrator\n")
    assert main(["-C", str(ws.root), "status", "--json"]) == 0
    out = capsys.readouterr()
    assert "require_approval read as false" in out.err
    assert json.loads(out.out)["waiting_for_person"][0]["task"] == "T001"  # the backlog's Approval still holds


def test_retry_after_the_refiner_crashed_gives_it_back_the_failure_it_was_adapting(tmp_path):
    q = sample_queue(1)
    task = escalated(q.tasks[0])
    step = task.builds()[0]
    step.status, step.failure = S.NEEDS_ADAPT, Failure.of(FailureKind.OOM, "ran out of memory", item=step.id)
    task.failure = Failure.of(FailureKind.AGENT_CRASHED, "refiner crashed: KeyError: x", item=task.id, role="refiner")
    ws, store, _ = seeded(tmp_path, q)
    assert resolve(store, "T001", "retry", ADA).status == S.NEEDS_ADAPT
    task = store.read().task("T001")
    assert task.failure.kind == FailureKind.OOM and task.adapt_loops == 3


def test_retry_after_the_integrator_stopped_merges_again(tmp_path):
    q = sample_queue(1)
    accepted(q.tasks[0]).status = S.NEEDS_MANUAL
    q.tasks[0].manual_reason = "main has uncommitted changes in: README.md"
    ws, store, _ = seeded(tmp_path, q)
    assert resolve(store, "T001", "retry", ADA).status == S.READY_FOR_INTEGRATOR
