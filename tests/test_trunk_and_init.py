"""A user's repository as it is: any trunk name, atomic ``init`` and ``sprint new``, role overrides.

Bad input of the issue "one home per concept": ``init`` outside a repository, on an unborn or
detached HEAD, on an existing workspace (nothing created); a ``master`` repository end to end;
``[git] trunk`` naming no branch; workspace role definitions with an unknown role, a negative wip,
a zero TTL; and the documented precedence of role definitions and ``config.toml``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from oodatcaa.core.config import load_config
from oodatcaa.core.errors import ConfigError, GitOperationError, WorkspaceError
from oodatcaa.core.store import QueueStore
from oodatcaa.core.workspace import Workspace
from oodatcaa.sprints import init_workspace, new_sprint
from support import configure, git_repo

BACKLOG = """\
# Trunk sprint

### T001: Write a file
**Type:** Story  **Complexity:** S  **Priority:** 1  **Dependencies:** None

```job
kind: command
run: "echo hello > hello.txt"
```

**Acceptance Criteria:**
- [ ] it succeeds `metric: command.returncode == 0` (critical)

### T002: Write another file
**Type:** Story  **Complexity:** S  **Priority:** 2  **Dependencies:** T001

```job
kind: command
run: "echo again > again.txt"
```

**Acceptance Criteria:**
- [ ] it succeeds `metric: command.returncode == 0` (critical)
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def cli(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oodatcaa", "-C", str(repo), *args], capture_output=True, text=True,
                          timeout=timeout)


def snapshot(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if ".git" not in p.relative_to(root).parts}


# -- init ---------------------------------------------------------------------------------------

def test_init_on_an_unborn_head_refuses_and_creates_nothing(tmp_path):
    repo = git_repo(tmp_path / "r", "master", first_commit=False)
    with pytest.raises(WorkspaceError, match="no commit yet") as info:
        init_workspace(repo)
    assert "git commit --allow-empty" in str(info.value)
    assert snapshot(repo) == set()
    assert git(repo, "status", "--porcelain") == ""


def test_init_on_a_detached_head_refuses_and_creates_nothing(tmp_path):
    repo = git_repo(tmp_path / "r")
    git(repo, "checkout", "-q", "--detach")
    with pytest.raises(WorkspaceError, match="detached"):
        init_workspace(repo)
    assert snapshot(repo) == set()


def test_init_outside_a_repository_creates_nothing(tmp_path):
    with pytest.raises(WorkspaceError, match="git init"):
        init_workspace(tmp_path)
    assert snapshot(tmp_path) == set()


def test_init_on_an_existing_workspace_needs_force_and_keeps_files(tmp_path):
    repo = git_repo(tmp_path / "r")
    ws = init_workspace(repo)
    ws.config_path.write_text('[git]\ntrunk = "main"\n[wip]\nbuilder = 1\n')
    before = ws.config_path.read_bytes()
    with pytest.raises(WorkspaceError, match="--force"):
        init_workspace(repo)
    assert ws.config_path.read_bytes() == before
    (ws.objectives_dir / "OBJECTIVE.md").unlink()
    init_workspace(repo, force=True)
    assert ws.config_path.read_bytes() == before and (ws.objectives_dir / "OBJECTIVE.md").exists()


def test_init_whose_commit_fails_leaves_nothing_behind(tmp_path):
    repo = git_repo(tmp_path / "r")
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'refused by policy' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(Exception, match="refused by policy"):
        init_workspace(repo)
    assert snapshot(repo) == set()


@pytest.mark.parametrize("branch", ["master", "trunk", "develop"])
def test_init_detects_the_trunk_from_the_current_branch(tmp_path, branch):
    repo = git_repo(tmp_path / "r", branch)
    ws = init_workspace(repo)
    assert load_config(ws.config_path, ws.agents_dir).git.trunk == branch
    assert tomllib.loads(ws.config_path.read_text())["git"] == {"trunk": branch}
    assert git(repo, "log", "-1", "--format=%s", branch) == "[docs] oodatcaa: initialise workspace"


def test_init_writes_every_key_commented_out(tmp_path):
    ws = init_workspace(git_repo(tmp_path / "r"))
    text = ws.config_path.read_text()
    data = tomllib.loads(text)
    assert all(value == {} for name, value in data.items() if name != "git")
    for key in ("# builder = 3", "# integrator = 30", "# heartbeat_seconds = 30", "# max_adapt_loops = 3",
                "# accept_ratio = 0.8", "# timeout_minutes = 120",
                "# M = {low_minutes = 120, high_minutes = 240, buffer_percent = 20}"):
        assert key in text, key


# -- one source of defaults -----------------------------------------------------------------------

def _override(ws: Workspace, role: str, body: str) -> Path:
    path = ws.agents_dir / f"{role}.md"
    path.write_text(f"---\n{body}\n---\n# {role} playbook\n")
    return path


def test_a_workspace_role_definition_changes_wip_and_ttl_and_config_toml_still_wins(tmp_path):
    ws = init_workspace(git_repo(tmp_path / "r"))
    _override(ws, "builder", "role: builder\nsummary: fewer builders\nproduces: []\nlease_ttl_minutes: 10\nwip_limit: 1")
    config = load_config(ws.config_path, ws.agents_dir)
    assert config.wip_limit("builder") == 1 and config.lease_ttl_seconds("builder") == 600.0
    assert config.wip_limit("tester") == 2  # untouched roles keep the bundled definition
    configure(ws.config_path, wip={"builder": 2}, lease_ttl_minutes={"builder": 5})
    config = load_config(ws.config_path, ws.agents_dir)
    assert config.wip_limit("builder") == 2 and config.lease_ttl_seconds("builder") == 300.0


@pytest.mark.parametrize("name,body,field", [
    ("scheduler", "role: builder\nsummary: x\nproduces: []\nlease_ttl_minutes: 10\nwip_limit: 1", "scheduler"),
    ("builder", "role: builder\nsummary: x\nproduces: []\nlease_ttl_minutes: 10\nwip_limit: -1", "wip_limit"),
    ("tester", "role: tester\nsummary: x\nproduces: []\nlease_ttl_minutes: 0\nwip_limit: 1", "lease_ttl_minutes"),
    ("planner", "role: plannr\nsummary: x\nproduces: []\nlease_ttl_minutes: 10\nwip_limit: 1", "role"),
    ("refiner", "role: refiner\nsummary: x\nproduces: []\nconsumes: {kind: build, status: ready}\n"
                "lease_ttl_minutes: 10\nwip_limit: 1", "consumes"),
])
def test_bad_workspace_role_definitions_name_the_file_and_the_field(tmp_path, name, body, field):
    ws = init_workspace(git_repo(tmp_path / "r"))
    path = _override(ws, name, body)
    with pytest.raises(ConfigError) as info:
        load_config(ws.config_path, ws.agents_dir)
    assert str(path) in str(info.value) and field in str(info.value)


def test_bad_wip_in_config_toml_names_the_key(tmp_path):
    ws = init_workspace(git_repo(tmp_path / "r"))
    configure(ws.config_path, wip={"builder": -2})
    with pytest.raises(ConfigError, match=r"wip\.builder"):
        load_config(ws.config_path, ws.agents_dir)


# -- the trunk setting and an atomic sprint new --------------------------------------------------

def test_a_trunk_that_does_not_exist_is_named_with_the_fix(tmp_path):
    repo = git_repo(tmp_path / "r", "master")
    ws = init_workspace(repo)
    configure(ws.config_path, git={"trunk": "mian"})
    backlog = tmp_path / "b.md"
    backlog.write_text(BACKLOG)
    with pytest.raises(WorkspaceError) as info:
        new_sprint(ws, backlog)
    assert "[git] trunk = 'mian'" in str(info.value) and "master" in str(info.value)
    assert not ws.queue_path.exists()
    configure(ws.config_path, git={"trunk": "master"})
    new_sprint(ws, backlog)
    configure(ws.config_path, git={"trunk": "mian"})
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "[docs] config")
    run = cli(repo, "run", "--max-seconds", "20")
    assert run.returncode == 2 and "[git] trunk = 'mian'" in run.stderr


def test_sprint_new_whose_commit_fails_starts_no_sprint(tmp_path):
    repo = git_repo(tmp_path / "r")
    ws = init_workspace(repo)
    backlog = tmp_path / "b.md"
    backlog.write_text(BACKLOG)
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(GitOperationError, match="git commit failed"):
        new_sprint(ws, backlog)
    assert not ws.queue_path.exists() and not ws.backlog_path.exists()
    assert not (ws.objectives_dir / "SPRINT_GOAL.md").exists()
    assert git(repo, "status", "--porcelain") == ""
    hook.unlink()
    sprint = new_sprint(ws, backlog)  # the next attempt needs no --force
    assert sprint.number == 1 and QueueStore.for_workspace(ws).read().sprint.id == sprint.id


@pytest.mark.slow
def test_a_plain_git_init_on_master_runs_a_sprint_end_to_end(tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "-c", "init.defaultBranch=master", "init", "-q")
    git(repo, "config", "user.name", "someone")
    git(repo, "config", "user.email", "someone@example.com")
    (repo / "README.md").write_text("# my project\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-qm", "first")
    assert cli(repo, "init").returncode == 0
    configure(repo / ".oodatcaa" / "config.toml", agents={"poll_seconds": 0.2, "heartbeat_seconds": 1},
              negotiator={"tick_seconds": 0.2})
    git(repo, "commit", "-qam", "[docs] faster agents")
    backlog = tmp_path / "backlog.md"
    backlog.write_text(BACKLOG)
    made = cli(repo, "sprint", "new", "--backlog", str(backlog))
    assert made.returncode == 0, made.stderr
    run = cli(repo, "run", "--max-seconds", "150", timeout=200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert git(repo, "branch", "--show-current") == "master"
    assert "main" not in git(repo, "branch", "--format=%(refname:short)").split()
    merges = git(repo, "log", "--merges", "--format=%s", "master").splitlines()
    assert len(merges) == 2
    assert (repo / "hello.txt").read_text() == "hello\n" and (repo / "again.txt").exists()
    tags = git(repo, "tag").split()
    assert {"T001-complete", "T002-complete", "sprint-1-complete"} <= set(tags)
    assert git(repo, "merge-base", "--is-ancestor", "T002-complete", "master") == ""
    status = json.loads(cli(repo, "status", "--json").stdout)
    assert status["sprint"]["status"] == "completed"


def test_sprint_new_refuses_a_metric_typo_naming_the_closest_metric(tmp_path):
    from oodatcaa.core.errors import BacklogError

    ws = init_workspace(git_repo(tmp_path / "r"))
    backlog = tmp_path / "b.md"
    backlog.write_text("# S\n\n### T001: bench\n**Type:** Story\n\n```job\nkind: inference_bench\n```\n\n"
                       "**Acceptance Criteria:**\n- [ ] `metric: inference.generation_tokens >= 1` (critical)\n"
                       "- [ ] `metric: inference.generation_tps > inference.prompt_tsp`\n")
    with pytest.raises(BacklogError) as info:
        new_sprint(ws, backlog)
    text = str(info.value)
    assert "b.md:3" in text and "T001" in text
    assert "did you mean 'inference.generated_tokens'" in text and "'inference.prompt_tsp'" in text
    assert not ws.queue_path.exists()
