"""End to end on the generated tiny model: a failure, the Refiner's adaptation, and the final verdict.

Each test writes a one-story backlog, then drives the real role agents in this process (Planner,
Builder with real MLX job processes, Tester, Refiner; the Negotiator's promotion in between) until
the story is accepted (``ready_for_integrator``) or goes to a person. One test per failure family:
``diverged``, ``job_killed``, ``timeout``, peak memory, throughput and a loss that does not go down.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import write_tiny_dataset
from job_hooks.sitecustomize import arm as arm_kill_after_checkpoint
from oodatcaa.core.models import Task
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.roles import AGENT_CLASSES
from oodatcaa.roles.base import AgentContext
from oodatcaa.roles.negotiator import promote
from oodatcaa.sprints import new_sprint
from support import configure, workspace

pytestmark = pytest.mark.slow
S = TaskStatus
FINAL = (S.READY_FOR_INTEGRATOR, S.NEEDS_MANUAL, S.DONE)

BACKLOG = """\
# Refiner e2e

**Sprint Goal:** adapt until the story passes.

### T001: One training step
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Description:** A LoRA fine-tune on the tiny Q/A data.

```job
{job}
```

**Acceptance Criteria:**
{criteria}
"""


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def sprint(tmp_path: Path, job: dict[str, Any], criteria: list[str], **config: dict[str, Any]) -> Any:
    """A workspace with the tiny data committed and a one-story sprint of ``job`` and ``criteria``."""
    ws = workspace(tmp_path)
    write_tiny_dataset(ws.root / "data" / "tiny")
    configure(ws.config_path, **config) if config else None
    _git(ws.root, "add", "-A")
    _git(ws.root, "commit", "-qm", "[docs] test: data")
    backlog = tmp_path / "backlog.md"
    lines = "\n".join(f"- [ ] {c}" for c in criteria)
    backlog.write_text(BACKLOG.format(job="\n".join(f"{k}: {json.dumps(v)}" for k, v in job.items()), criteria=lines))
    new_sprint(ws, backlog)
    return ws


def drive(ws: Any, rounds: int = 6) -> Task:
    """Run planner, builder, tester and refiner once each per round until T001 is accepted or escalated."""
    store = QueueStore.for_workspace(ws)
    for _ in range(rounds):
        for role in ("planner", "builder", "tester", "refiner"):
            with store.transaction("negotiator") as tx:
                promote(tx)
            AGENT_CLASSES[role](AgentContext.open(ws, f"{role}-e2e")).run(once=True, exit_when_complete=False)
            task = store.read().task("T001")
            if task.status in FINAL:
                return task
    raise AssertionError(f"T001 still {store.read().task('T001').status} after {rounds} rounds")


def report(ws: Any, loop: int) -> str:
    return (ws.report_dir("T001") / f"refiner_{loop}.md").read_text()


def rules(task: Task) -> list[str]:
    return [a.rule for a in task.adaptations]


TRAIN = {"kind": "lora_train", "data": "data/tiny", "steps_per_report": 5}


@pytest.fixture(scope="module")
def trained_base(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model fine-tuned to a low loss and fused: a base a learning rate far too high ruins."""
    from oodatcaa.jobs.runner import run_job

    base = tmp_path_factory.mktemp("e2e-base")
    write_tiny_dataset(base / "data")
    spec = {"kind": "lora_train", "model": str(tiny_model), "data": "data", "iters": 40, "learning_rate": 1e-3}
    assert run_job(spec, workdir=base, run_dir=base / "t" / "run", artifacts_dir=base / "t" / "art").ok
    fuse = {"kind": "fuse", "model": str(tiny_model), "adapter": str(base / "t" / "art" / "adapters")}
    assert run_job(fuse, workdir=base, run_dir=base / "f" / "run", artifacts_dir=base / "f" / "art").ok
    return base / "f" / "art" / "fused"


def test_diverged_lowers_the_rate_twice_then_passes(tmp_path, trained_base):
    ws = sprint(tmp_path, {**TRAIN, "model": str(trained_base), "iters": 30, "learning_rate": 0.3},
                ["the validation loss goes down `metric: train.final_val_loss < train.first_val_loss` (critical)"])
    task = drive(ws)
    assert rules(task) == ["divergence.lower_lr_warmup", "divergence.lower_lr_again"]
    first = report(ws, 1)
    assert "reason: 'loss_ratio'" in first and "+max_grad_norm: 1.0" in first and "-learning_rate: 0.3" in first
    assert "-learning_rate: 0.03\n+learning_rate: 0.003" in report(ws, 2)
    assert task.status == S.READY_FOR_INTEGRATOR
    assert task.metrics["train.final_val_loss"] < task.metrics["train.first_val_loss"]


def test_a_killed_job_resumes_from_its_checkpoint_and_passes(tmp_path, tiny_model, monkeypatch):
    arm_kill_after_checkpoint(monkeypatch, 10)  # the first attempt dies by SIGKILL after checkpoint 10
    ws = sprint(tmp_path, {**TRAIN, "model": str(tiny_model), "iters": 20, "save_every": 5, "learning_rate": 1e-3},
                ["it trained to the end `metric: train.iterations_done == 20` (critical)"])
    task = drive(ws)
    assert rules(task) == ["interrupted.resume"] and task.status == S.READY_FOR_INTEGRATOR
    assert "killed from outside" in report(ws, 1)
    assert task.metrics["train.resumed_at_iteration"] == 10


def test_a_timed_out_job_resumes_from_its_checkpoint_and_passes(tmp_path, tiny_model, monkeypatch):
    from job_hooks.sitecustomize import arm_stall

    arm_stall(monkeypatch, 10)  # the first attempt hangs after checkpoint 10 until the timeout
    ws = sprint(tmp_path, {**TRAIN, "model": str(tiny_model), "iters": 20, "save_every": 5, "learning_rate": 1e-3},
                ["it trained to the end `metric: train.iterations_done == 20` (critical)"],
                jobs={"timeout_minutes": 0.25})
    task = drive(ws)
    assert rules(task) == ["interrupted.resume"] and task.status == S.READY_FOR_INTEGRATOR
    assert "timed out after 15 s" in report(ws, 1)
    assert task.metrics["train.resumed_at_iteration"] == 10


def test_peak_memory_over_target_climbs_the_memory_ladder_and_passes(tmp_path, tiny_model):
    ws = sprint(tmp_path, {**TRAIN, "model": str(tiny_model), "iters": 6, "batch_size": 4},
                ["peak memory under target `metric: train.peak_memory_gb <= 0.008` (critical)"])
    task = drive(ws)
    assert rules(task) == ["memory.grad_checkpoint", "memory.halve_batch"]
    assert "-batch_size: 4" in report(ws, 2) and "+grad_accumulation_steps: 2" in report(ws, 2)
    assert task.status == S.READY_FOR_INTEGRATOR and task.metrics["train.peak_memory_gb"] <= 0.008
    # compare shows the three attempts the Refiner's changes made, with their peak memory
    from oodatcaa.compare import collect_rows, param_columns

    rows = collect_rows(ws, QueueStore.for_workspace(ws).read(), ["T001"])
    assert [(r.step, r.attempt) for r in rows] == [("T001-B01", 1), ("T001-B01", 2), ("T001-B01", 3)]
    assert [r.params.get("batch_size") for r in rows] == [4, 4, 2]
    assert {"batch_size", "grad_checkpoint"} <= set(param_columns(rows, all_params=False))
    assert all(isinstance(r.metrics.get("peak_memory_gb"), float) for r in rows)
    assert rows[-1].metrics["criteria"] == "1/1" and rows[-1].metrics["peak_memory_target_gb"] == 0.008


def test_too_slow_tries_fewer_layers_then_qlora_then_asks_a_person(tmp_path, tiny_model):
    ws = sprint(tmp_path, {**TRAIN, "model": str(tiny_model), "iters": 4},
                ["throughput no machine reaches `metric: train.tokens_per_second >= 1e12` (critical)"])
    task = drive(ws)
    assert rules(task) == ["throughput.fewer_layers", "throughput.qlora"]
    assert "+num_layers: 1" in report(ws, 1) and "+quantize: 4" in report(ws, 2)
    assert task.status == S.NEEDS_MANUAL and "throughput ladder has no rung left" in (task.manual_reason or "")


def test_a_loss_that_does_not_go_down_enough_gets_more_iterations_and_passes(tmp_path, tiny_model):
    ws = sprint(tmp_path, {**TRAIN, "model": str(tiny_model), "iters": 4, "learning_rate": 1e-3},
                ["the validation loss is low enough `metric: train.final_val_loss < 4.5` (critical)"])
    task = drive(ws)
    assert rules(task) == ["loss.more_iterations"] and "+iters: 8" in report(ws, 1)
    assert task.status == S.READY_FOR_INTEGRATOR and task.metrics["train.final_val_loss"] < 4.5
