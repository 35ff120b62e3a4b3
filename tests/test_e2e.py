"""End to end: ``oodatcaa run`` with real agent processes and real MLX jobs on a generated tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import configure, git_repo

pytestmark = pytest.mark.slow

BACKLOG = """\
# Tiny sprint

**Sprint Goal:** load, adapt and use a tiny model.

### T001: Check the tiny model
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None
**Description:** Load the model and round-trip the tokenizer.

```job
kind: model_check
model: default
```

**Acceptance Criteria:**
- [ ] it has parameters `metric: model.parameters_total > 0` (critical)
- [ ] tokenizer round trip `metric: model.tokenizer_roundtrip == 1` (critical)

### T002: LoRA dry run under a memory target
**Type:** Story  **Complexity:** M  **Priority:** 2  **Dependencies:** T001
**Description:** The first configuration needs ~0.0105 GB; the target forces an adaptation.

```job
kind: lora_train
model: default
data: data/tiny
iters: 6
batch_size: 4
steps_per_report: 2
```

**Acceptance Criteria:**
- [ ] peak memory under target `metric: train.peak_memory_gb <= 0.008` (critical)
- [ ] it trained `metric: train.iters >= 6`
- [ ] adapter saved `file: adapters/adapter_config.json` (critical)

### T003: Check the merged run files
**Type:** Story  **Complexity:** S  **Priority:** 3  **Dependencies:** T002
**Description:** T002's run files are on main once it is merged.

```job
kind: command
run: "test -f .oodatcaa/runs/T002-B01/summary.json && echo found"
```

**Acceptance Criteria:**
- [ ] the command succeeds `metric: command.returncode == 0` (critical)
"""


def oodatcaa(repo: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(repo), *args], capture_output=True,
                          text=True, timeout=timeout)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_a_three_task_sprint_runs_to_tagged_merges(tmp_path, tiny_model):
    from conftest import write_tiny_dataset

    repo = git_repo(tmp_path / "repo")
    assert oodatcaa(repo, "init").returncode == 0
    configure(repo / ".oodatcaa" / "config.toml", wip={"builder": 2, "tester": 1},
              agents={"heartbeat_seconds": 2, "poll_seconds": 0.2}, negotiator={"tick_seconds": 0.2},
              jobs={"default_model": str(tiny_model)})
    write_tiny_dataset(repo / "data" / "tiny")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "[docs] test: data and config")
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG)
    made = oodatcaa(repo, "sprint", "new", "--backlog", str(backlog))
    assert made.returncode == 0, made.stderr

    run = oodatcaa(repo, "run", "--max-seconds", "240", timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr + _agent_logs(repo)

    status = json.loads(oodatcaa(repo, "status", "--json").stdout)
    assert status["sprint"]["status"] == "completed"
    stories = [t for t in status["tasks"] if t["kind"] == "story"]
    assert [t["status"] for t in stories] == ["done", "done", "done"]
    assert all(t["status"] == "done" for t in status["tasks"])
    assert status["counters"]["totals"] == {"stories": 3, "subtasks": 6, "done": 3}

    tags = git(repo, "tag").split()
    for tag in ("T001-complete", "T002-complete", "T003-complete", "sprint-1-complete"):
        assert tag in tags
    assert len([t for t in tags if t.startswith("pre/")]) == 3
    assert "train.peak_memory_gb" in git(repo, "tag", "-n20", "T002-complete")
    merges = git(repo, "log", "--merges", "--format=%s", "main").splitlines()
    assert len(merges) == 3 and all(re.match(r"^\[impl\] T00\d: merge feat/T00\d-step-01-", m) for m in merges)
    for subject in git(repo, "log", "--format=%s", "main").splitlines():
        assert re.match(r"^\[(plan|impl|test|refactor|docs)\] ", subject), subject

    changelog = (repo / "CHANGELOG.md").read_text()
    assert changelog.count("- **T00") == 3 and "## [Sprint 1]" in changelog and "Keep a Changelog" in changelog

    reports = repo / ".oodatcaa" / "work" / "reports"
    names = {p.relative_to(reports).as_posix() for p in reports.rglob("*.md")}
    for role in ("planner", "integrator"):
        assert all(f"T00{i}/{role}.md" in names for i in (1, 2, 3))
    assert {"T002/builder_T002-B01.md", "T002/tester_T002-T01.md", "T002/refiner_1.md",
            "T002/builder_T002-B01_2.md", "T002/tester_T002-T01_2.md"} <= names
    refiner = (reports / "T002" / "refiner_1.md").read_text()
    # one rung per loop: gradient checkpointing first, then the batch halved (effective batch kept)
    assert "memory.grad_checkpoint" in refiner and "+grad_checkpoint: true" in refiner and "### Evidence" in refiner
    second = (reports / "T002" / "refiner_2.md").read_text()
    assert "memory.halve_batch" in second and "-batch_size: 4" in second and "+batch_size: 2" in second
    index = (repo / ".oodatcaa" / "work" / "AGENT_REPORTS.md").read_text()
    assert index.count("| T002 |") >= 6

    # the sprint's log moved into its archive when it closed; the live log keeps a note
    archive = repo / ".oodatcaa" / "work" / "archive" / "sprint_1"
    assert "sprint archived" in (repo / ".oodatcaa" / "work" / "AGENT_LOG.md").read_text()
    log = (archive / "AGENT_LOG.md").read_text()
    assert "| refiner-1 | T002 | adapting -> ready |" in log
    assert "| T002-B01 | in_progress -> awaiting_test |" in log

    queue = json.loads((repo / ".oodatcaa" / "work" / "SPRINT_QUEUE.json").read_text())
    t2 = next(t for t in queue["tasks"] if t["id"] == "T002")
    assert t2["adapt_loops"] == 2 and t2["metrics"]["train.peak_memory_gb"] <= 0.008
    branches = git(repo, "branch", "--format=%(refname:short)").split()
    assert len([b for b in branches if b.startswith("feat/")]) == 3
    for branch in branches:
        files = git(repo, "ls-tree", "-r", "--name-only", branch).splitlines()
        live = {".oodatcaa/work/SPRINT_QUEUE.json", ".oodatcaa/work/AGENT_LOG.md", ".oodatcaa/work/SPRINT_LOG.md"}
        assert not live & set(files), branch
        if branch.startswith("feat/"):
            assert not [f for f in files if f.endswith(("SPRINT_QUEUE.json", "AGENT_LOG.md", "SPRINT_LOG.md"))]
    assert not git(repo, "status", "--porcelain", "--untracked-files=no").strip()
    assert (archive / "SPRINT_QUEUE.json").exists()
    assert "Sprint 1 initiated" in (archive / "SPRINT_LOG.md").read_text()
    retrospective = (archive / "RETROSPECTIVE.md").read_text()
    assert "memory.grad_checkpoint on T002-B01 (criteria_failed); memory.halve_batch on T002-B01" in retrospective
    assert "## Exit criteria" in retrospective
    assert "sprint-1-complete" in git(repo, "tag")
    assert "Sprint 1 completed" in (repo / ".oodatcaa" / "objectives" / "SPRINT_GOAL.md").read_text()


def _agent_logs(repo: Path) -> str:
    out = []
    for log in sorted((repo / ".oodatcaa" / "state" / "agents").glob("*.log")):
        out.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-20:]))
    return "\n".join(out)
