"""What was learned carries forward: a dependent story inherits the settings an accepted adaptation found."""

from __future__ import annotations

from datetime import UTC, datetime

from oodatcaa.core.models import AdaptationRecord, Subtask, Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.roles.inheritance import inherited_settings, learned_settings

S = TaskStatus
AT = datetime(2026, 12, 2, tzinfo=UTC)
PROFILE = {"kind": "memory_profile", "model": "default", "data": "data/p", "batch_size": 4, "target_gb": 1.0}
ADAPTED = {**PROFILE, "batch_size": 2, "grad_accumulation_steps": 2, "grad_checkpoint": True}


def profiled(status: S = S.DONE, job: dict | None = None, adapted: bool = True) -> Task:
    step = Subtask(id="T004-B01", kind="build", status=S.DONE if status == S.DONE else S.READY, title="profile",
                   step=1, job=job or ADAPTED)
    records = [AdaptationRecord(loop=1, rule="reduce_peak_memory", step="T004-B01", at=AT)] if adapted else []
    return Task(id="T004", title="profile", status=status, jobs=[PROFILE], subtasks=[step], adaptations=records)


FINE_TUNE = {"kind": "lora_train", "model": "default", "data": "data/p", "iters": 30}


def test_learned_settings_are_the_fields_the_accepted_adaptation_changed():
    [(step, changed)] = learned_settings(profiled())
    assert step.id == "T004-B01"
    assert changed == {"batch_size": 2, "grad_accumulation_steps": 2, "grad_checkpoint": True}
    assert learned_settings(profiled(status=S.NEEDS_MANUAL)) == []  # not accepted: nothing learned
    assert learned_settings(profiled(adapted=False)) == []  # changed by hand, not by an adaptation


def test_a_dependent_training_job_inherits_the_unset_fields_and_says_so():
    found = inherited_settings(FINE_TUNE, FINE_TUNE, [profiled()])
    assert found is not None
    assert found.fields == {"batch_size": 2, "grad_accumulation_steps": 2, "grad_checkpoint": True}
    assert found.describe() == ("inherits batch_size 2, grad_accumulation_steps 2, grad_checkpoint true "
                                "from T004-B01's accepted adaptation")


def test_written_fields_win_other_models_and_kinds_and_inherit_false_opt_out():
    own = {**FINE_TUNE, "batch_size": 8}
    found = inherited_settings(own, own, [profiled()])
    assert found is not None and "batch_size" not in found.fields  # the block's own value is kept
    other_model = {**FINE_TUNE, "model": "models/other"}
    assert inherited_settings(other_model, other_model, [profiled()]) is None
    command = {"kind": "command", "run": "true"}
    assert inherited_settings(command, command, [profiled()]) is None
    opted_out = {**FINE_TUNE, "inherit": False}
    assert inherited_settings(opted_out, opted_out, [profiled()]) is None


def test_only_fields_of_the_job_kind_are_inherited():
    evaluate = {"kind": "evaluate", "model": "default", "data": "data/p"}
    found = inherited_settings(evaluate, evaluate, [profiled()])
    assert found is not None and found.fields == {"batch_size": 2}  # evaluate has no grad_checkpoint


def test_an_inheritance_the_spec_refuses_is_dropped():
    bad = {**ADAPTED, "batch_size": 0}  # would fail validation (batch_size >= 1)
    assert inherited_settings(FINE_TUNE, FINE_TUNE, [profiled(job=bad)]) is None
