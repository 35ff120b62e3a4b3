"""End to end: ``oodatcaa run --until-objective`` over a two-backlog roadmap, real agents, the tiny model.

Sprint 1 checks the model and trains a LoRA adapter; sprint 2 fuses the adapter sprint 1 trained (the
Builder finds it in the artifacts of the story it depends on). The objective's criteria are metric checks
on stories of both sprints, so the project ends ``project_complete``. A second roadmap runs out with a
criterion still unmet and must say which.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import configure, git, git_repo

pytestmark = pytest.mark.slow

SPRINT_1 = """\
# Sprint 1 — tiny foundation

> **Sprint Goal:** check the tiny model and train an adapter on it.

## Exit Criteria

- [ ] T001: the model loads
- [ ] T002: an adapter is trained `metric: T002.train.final_loss < T002.train.first_loss`

### T001: Check the tiny model
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Links to Objective:** OBJECTIVE.md → Success Criteria → Framework
**Estimated Time:** 5 minutes

```job
kind: model_check
model: default
```

**Acceptance Criteria:**
- [ ] tokenizer round trip `metric: model.tokenizer_roundtrip == 1` (critical)

### T002: Train a LoRA adapter
**Type:** Story  **Complexity:** S  **Priority:** 2  **Dependencies:** T001

```job
kind: lora_train
model: default
data: data/tiny
iters: 8
learning_rate: 0.001
steps_per_report: 2
```

**Acceptance Criteria:**
- [ ] adapter saved `file: adapters/adapter_config.json` (critical)
"""

SPRINT_2 = """\
# Sprint 2 — ship it

## Exit Criteria

- [ ] T003: the adapter is fused `metric: T003.fuse.fused_modules >= 1`
- [ ] T003 is merged

### T003: Fuse the adapter of sprint 1
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** T002

```job
kind: fuse
model: default
adapter: adapters
```

**Acceptance Criteria:**
- [ ] the fused model agrees with the adapted one `metric: fuse.top1_agreement >= 0.9` (critical)
"""

OBJECTIVE = """\
# OBJECTIVE — tiny model shipped

## Vision
A fine-tuned tiny model, fused.

## Success Criteria
- [ ] **Framework:** the model round-trips its tokenizer `metric: T001.model.tokenizer_roundtrip == 1`
- [ ] **Fine-tune:** LoRA lowers the training loss `metric: T002.train.final_loss < T002.train.first_loss`
- [ ] **Ship:** the adapter is fused into the model `metric: T003.fuse.fused_modules >= 1`
"""


def oodatcaa(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(repo), *args], capture_output=True,
                          text=True, timeout=timeout)


def roadmap_repo(tmp_path: Path, tiny_model: Path, objective: str, backlogs: dict[str, str]) -> Path:
    from conftest import write_tiny_dataset

    repo = git_repo(tmp_path / "repo")
    assert oodatcaa(repo, "init").returncode == 0
    configure(repo / ".oodatcaa" / "config.toml", wip={"builder": 2, "tester": 1},
              agents={"heartbeat_seconds": 2, "poll_seconds": 0.2}, negotiator={"tick_seconds": 0.2},
              jobs={"default_model": str(tiny_model)})
    write_tiny_dataset(repo / "data" / "tiny")
    (repo / ".oodatcaa" / "objectives" / "OBJECTIVE.md").write_text(objective)
    roadmap = repo / ".oodatcaa" / "work" / "backlogs"
    roadmap.mkdir(parents=True)
    for name, text in backlogs.items():
        (roadmap / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "[docs] test: data, objective and roadmap")
    return repo


def test_a_two_backlog_roadmap_runs_to_project_complete(tmp_path, tiny_model):
    repo = roadmap_repo(tmp_path, tiny_model, OBJECTIVE, {"sprint-01.md": SPRINT_1, "sprint-02.md": SPRINT_2})
    run = oodatcaa(repo, "run", "--until-objective", "--max-seconds", "400", timeout=460)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "project complete: 3/3 success criteria met after 2 sprint(s)" in run.stdout

    status = json.loads(oodatcaa(repo, "status", "--json").stdout)
    assert status["sprint"]["status"] == "project_complete" and status["sprint"]["number"] == 2
    assert status["objective"]["percent"] == 100.0
    tags = git(repo, "tag").split()
    assert {"sprint-1-complete", "sprint-2-complete", "project-complete", "T003-complete"} <= set(tags)
    assert git(repo, "cat-file", "-t", "project-complete") == "tag"

    work = repo / ".oodatcaa" / "work"
    report = (repo / ".oodatcaa" / "objectives" / "PROJECT_COMPLETION_REPORT.md").read_text()
    assert all(f"| SC{i} | met |" in report for i in (1, 2, 3)) and "SPRINT-" in report
    for n in (1, 2):
        retro = (work / "archive" / f"sprint_{n}" / "RETROSPECTIVE.md").read_text()
        assert "## Exit criteria" in retro and "2/2 met" in retro
    # sprint 2's fuse step used the adapter sprint 1 trained
    queue = json.loads((work / "archive" / "sprint_2" / "SPRINT_QUEUE.json").read_text())
    t3 = next(t for t in queue["tasks"] if t["id"] == "T003")
    assert t3["prior_dependencies"] == ["T002"] and t3["metrics"]["fuse.fused_modules"] >= 1
    job = json.loads(git(repo, "show", "main:.oodatcaa/runs/T003-B01/job.json"))
    assert "/artifacts/T002-B01/" in job["spec"]["adapter"]  # the adapter path resolved into T002's artifacts
    goal = (repo / ".oodatcaa" / "objectives" / "SPRINT_GOAL.md").read_text()
    assert "Sprint 1 completed" in goal and "Sprint 2 completed" in goal
    assert not git(repo, "status", "--porcelain", "--untracked-files=no")
    objective = json.loads(oodatcaa(repo, "objective", "--json").stdout)
    assert objective["completion_percent"] == 100.0


def test_a_roadmap_that_runs_out_first_exits_non_zero_naming_the_unmet_criterion(tmp_path, tiny_model):
    objective = OBJECTIVE.replace("`metric: T003.fuse.fused_modules >= 1`", "`metric: T001.model.parameters_total > 1e12`")
    sprint = SPRINT_1.split("### T002")[0].replace(
        "- [ ] T002: an adapter is trained `metric: T002.train.final_loss < T002.train.first_loss`\n", "")
    repo = roadmap_repo(tmp_path, tiny_model, objective, {"sprint-01.md": sprint})
    run = oodatcaa(repo, "run", "--until-objective", "--max-seconds", "200", timeout=260)
    assert run.returncode == 7, run.stdout + run.stderr
    assert "the roadmap ran out" in run.stderr and "SC3 unmet" in run.stderr and "SC2 unmet" in run.stderr
    assert "SC1" not in run.stderr.split("unmet:")[1]
    status = json.loads(oodatcaa(repo, "status", "--json").stdout)
    assert status["sprint"]["status"] == "completed" and status["objective"]["met"] == 1
