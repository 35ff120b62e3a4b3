"""The Refiner routes on the failure's kind and details, never on its message.

Every failure kind a rule handles is routed once with its usual message and again with the message
reworded (random text, and text that names another rule's trigger words); the chosen rule must not
change. Kinds no rule handles go to a person whatever their message says.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oodatcaa.core.failures import Failure, FailureKind
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.roles.policies import POLICIES
from oodatcaa.roles.refiner import choose_adaptation
from support import add_steps, sample_queue

S = TaskStatus
K = FailureKind

#: kind -> (usual message, details, item, the rule it must reach)
CASES = {
    K.JOB_KILLED: ("job process killed by SIGKILL (returncode -9)", {"signal": 9}, "T001-B01", "interrupted.resume"),
    K.TIMEOUT: ("job ran past its timeout", {"timeout_s": 60}, "T001-B01", "interrupted.resume"),
    K.BRANCH_MISSING: ("branch feat/T001-step-01-x does not exist (deleted by hand?)", {"branch": "feat/x"}, "T001-T01",
                       "branch_missing.rebuild"),
    K.MERGE_CONFLICT: ("merge conflict: merge of feat/x conflicts in: a.txt", {"files": ["a.txt"]}, "T001",
                       "merge_conflict.rebase_on_trunk"),
    K.OOM: ("MemoryError: std::bad_alloc", {}, "T001-B01", "memory.grad_checkpoint"),
    K.DIVERGED: ("training diverged: train_loss is nan (try a lower learning_rate)", {"iteration": 7}, "T001-B01",
                 "divergence.lower_lr_warmup"),
}
CRITERIA = {
    "memory.grad_checkpoint": ["train.peak_memory_gb"],
    "throughput.fewer_layers": ["train.tokens_per_second"],
    "loss.more_iterations": ["train.final_loss", "train.initial_loss"],
}
#: job_error is handled only for a dataset step whose details count rows too long
UNHANDLED = [K.JOB_ERROR, K.GATE_FAILED, K.REJECTED, K.AGENT_CRASHED, K.NO_JOB, K.CANCELLED]
TRIGGER_WORDS = ("out of memory; conflicts in; killed by sigkill; does not exist (deleted by hand?); diverged; loss; "
                 "timed out; rows too long; tokens_per_second")


def _story(failure: Failure):
    task = add_steps(sample_queue(1).tasks[0], 1, status=S.NEEDS_ADAPT)
    task.status = S.NEEDS_ADAPT
    task.subtasks[0].job = {"kind": "lora_train", "data": "d", "batch_size": 4, "iters": 10, "learning_rate": 1e-4,
                              "num_layers": 4}
    task.failure = failure
    return task


def _rule(kind: FailureKind, message: str, details: dict, item: str) -> str | None:
    adaptation = choose_adaptation(_story(Failure.of(kind, message, item=item, **details)))
    return adaptation.rule if adaptation else None


@pytest.mark.parametrize("kind", list(CASES))
def test_each_kind_reaches_its_rule_whatever_the_message(kind):
    message, details, item, rule = CASES[kind]
    assert _rule(kind, message, details, item) == rule
    for reworded in ("", "something else entirely", TRIGGER_WORDS, message.upper()[::-1]):
        assert _rule(kind, reworded, details, item) == rule


@pytest.mark.parametrize("rule,metrics", list(CRITERIA.items()))
def test_failed_criteria_route_by_the_metric_names_in_details(rule, metrics):
    for message in ("tester: critical criteria failed: AC1", TRIGGER_WORDS, "x"):
        assert _rule(K.CRITERIA_FAILED, message, {"failed_metrics": metrics}, "T001-T01") == rule


@pytest.mark.parametrize("kind", UNHANDLED)
def test_kinds_no_rule_handles_go_to_a_person_even_when_the_text_names_a_trigger(kind):
    assert _rule(kind, TRIGGER_WORDS, {}, "T001-B01") is None


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(list(CASES)), message=st.text(max_size=200))
def test_random_rewording_never_changes_routing(kind, message):
    _, details, item, rule = CASES[kind]
    assert _rule(kind, message, details, item) == rule


def test_every_policy_declares_the_kinds_it_handles():
    for policy in POLICIES.values():
        assert policy.handles and all(isinstance(k, FailureKind) for k in policy.handles), policy.name
    handled = {k for policy in POLICIES.values() for k in policy.handles}
    assert set(CASES) | {K.CRITERIA_FAILED, K.JOB_ERROR} == handled
