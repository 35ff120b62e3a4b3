"""The status vocabulary, its transition tables, and strict IDs."""

import pytest

from oodatcaa.core.errors import IllegalTransitionError, InvalidIdError
from oodatcaa.core.ids import branch_name, slugify, validate_sprint_id, validate_task_id
from oodatcaa.core.statuses import CLAIMED, TRANSITIONS, ItemKind, TaskStatus, allowed_next, check_transition

S = TaskStatus
VOCABULARY = {"needs_plan", "planning", "planning_complete", "blocked", "ready", "in_progress", "awaiting_test",
              "testing", "needs_adapt", "adapting", "ready_for_integrator", "integrating", "done", "cancelled",
              "needs_manual"}


def test_vocabulary_is_the_original_one_and_stale_is_not_a_status():
    assert {s.value for s in TaskStatus} == VOCABULARY
    assert "stale" not in VOCABULARY


def test_story_table_covers_every_status_and_terminals_are_terminal():
    table = TRANSITIONS[ItemKind.STORY]
    assert set(table) == set(TaskStatus)
    assert allowed_next(ItemKind.STORY, S.DONE) == frozenset()
    assert allowed_next(ItemKind.STORY, S.CANCELLED) == frozenset()


@pytest.mark.parametrize("kind", list(ItemKind))
def test_every_target_is_a_status_of_the_same_table(kind):
    table = TRANSITIONS[kind]
    for targets in table.values():
        assert targets <= set(table)


def test_the_original_illegal_jump_ready_to_done_is_refused_with_both_names():
    with pytest.raises(IllegalTransitionError) as info:
        check_transition("T001", ItemKind.STORY, S.READY, S.DONE)
    text = str(info.value)
    assert "ready -> done" in text and "T001" in text and "allowed from ready" in text


def test_happy_path_of_a_story_is_legal():
    path = [S.NEEDS_PLAN, S.PLANNING, S.PLANNING_COMPLETE, S.BLOCKED, S.READY, S.IN_PROGRESS, S.AWAITING_TEST,
            S.TESTING, S.NEEDS_ADAPT, S.ADAPTING, S.READY, S.IN_PROGRESS, S.AWAITING_TEST, S.TESTING,
            S.READY_FOR_INTEGRATOR, S.INTEGRATING, S.DONE]
    for a, b in zip(path, path[1:], strict=False):
        check_transition("T001", ItemKind.STORY, a, b)


def test_claimed_statuses_can_return_to_their_claimable_status():
    from oodatcaa.core.leases import RELEASE_TO

    for (kind, claimed), back in RELEASE_TO.items():
        assert claimed in CLAIMED
        check_transition("T001", ItemKind(kind), claimed, back)


@pytest.mark.parametrize("bad", ["../x", "T1:2", "t001", "T0001", "T001-X01", "T001-B1", "", "T001/../..", "T001\n", None, 7])
def test_bad_task_ids_are_refused(bad):
    with pytest.raises(InvalidIdError):
        validate_task_id(bad)


@pytest.mark.parametrize("good", ["T001", "A999", "T001-B01", "T001-T01"])
def test_good_task_ids(good):
    assert validate_task_id(good) == good


def test_sprint_ids():
    assert validate_sprint_id("SPRINT-2026-004") == "SPRINT-2026-004"
    for bad in ("SPRINT-26-4", "sprint-2026-004", "SPRINT-2026-004;rm"):
        with pytest.raises(InvalidIdError):
            validate_sprint_id(bad)


def test_branch_names_follow_the_convention_and_refuse_bad_parts():
    assert branch_name("T004", 1, slugify("LoRA fine-tune: procedures!")) == "feat/T004-step-01-lora-fine-tune-procedures"
    with pytest.raises(InvalidIdError):
        branch_name("../x", 1, "a")
    with pytest.raises(InvalidIdError):
        branch_name("T004", 1, "bad slug")
    assert slugify("a" * 80, max_len=10) == "a" * 10
    assert slugify("!!!") == "step"
