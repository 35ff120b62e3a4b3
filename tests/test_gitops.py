"""``gitops`` on real repositories: HEAD states, the trunk setting, merges, resets and ancestry."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from oodatcaa.core.errors import BranchMissingError, GitOperationError, MergeConflictError, WorkspaceError
from oodatcaa.core.workspace import Workspace
from oodatcaa.gitops import DEFAULT_TRUNK, GitRepo, head_state, repo_root
from support import git_repo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit_file(repo: Path, name: str, text: str, message: str) -> str:
    (repo / name).write_text(text)
    git(repo, "add", name)
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def repo_on(tmp_path: Path, branch: str) -> GitRepo:
    root = git_repo(tmp_path / "r", branch)
    return GitRepo(root, tmp_path / "locks" / "git.lock", owner="builder-1", trunk=branch)


def test_head_state_tells_branch_unborn_and_detached(tmp_path):
    unborn = git_repo(tmp_path / "u", "master", first_commit=False)
    assert head_state(unborn) == ("master", "unborn")
    born = git_repo(tmp_path / "b", "develop")
    assert head_state(born) == ("develop", "branch")
    git(born, "checkout", "-q", "--detach")
    assert head_state(born) == (None, "detached")


def test_repo_root_refuses_outside_a_repository(tmp_path):
    with pytest.raises(WorkspaceError, match="git init"):
        repo_root(tmp_path)


@pytest.mark.parametrize("trunk", ["master", "main", "trunk", "develop"])
def test_merges_land_on_the_configured_trunk(tmp_path, trunk):
    repo = repo_on(tmp_path, trunk)
    git(repo.root, "checkout", "-qb", "feat/T001-step-01-x")
    commit_file(repo.root, "a.txt", "a\n", "[impl] T001: a")
    git(repo.root, "checkout", "-q", trunk)
    merge = repo.merge_no_ff("feat/T001-step-01-x", "[impl] T001: merge feat/T001-step-01-x — a")
    assert git(repo.root, "rev-parse", trunk) == merge
    assert repo.is_ancestor("feat/T001-step-01-x")
    assert repo.merge_commit_of("feat/T001-step-01-x") == merge


def test_merge_refuses_off_the_trunk_and_names_the_setting(tmp_path):
    repo = repo_on(tmp_path, "master")
    git(repo.root, "checkout", "-qb", "elsewhere")
    with pytest.raises(GitOperationError, match=r"\[git\] trunk"):
        repo.merge_no_ff("master", "x")


def test_conflicting_merge_is_aborted_and_names_the_files(tmp_path):
    repo = repo_on(tmp_path, "master")
    git(repo.root, "checkout", "-qb", "feat/T001-step-01-x")
    commit_file(repo.root, "a.txt", "branch\n", "[impl] T001: a")
    git(repo.root, "checkout", "-q", "master")
    before = commit_file(repo.root, "a.txt", "trunk\n", "[impl] T000: a")
    with pytest.raises(MergeConflictError) as info:
        repo.merge_no_ff("feat/T001-step-01-x", "[impl] T001: merge feat/T001-step-01-x")
    assert info.value.files == ["a.txt"] and not repo.merge_in_progress()
    assert git(repo.root, "rev-parse", "master") == before


def test_require_trunk_names_the_setting_and_the_branches(tmp_path):
    repo = GitRepo(git_repo(tmp_path / "r", "master"), tmp_path / "git.lock", trunk="mian")
    with pytest.raises(WorkspaceError) as info:
        repo.require_trunk(Path("cfg/config.toml"))
    text = str(info.value)
    assert "[git] trunk = 'mian'" in text and "cfg/config.toml" in text and "master" in text and "fix:" in text
    GitRepo(repo.root, tmp_path / "git.lock", trunk="master").require_trunk()


def test_ensure_trunk_makes_the_first_commit_on_the_trunk_and_refuses_another_branch(tmp_path):
    root = git_repo(tmp_path / "r", "trunk", first_commit=False)
    repo = GitRepo(root, tmp_path / "git.lock", trunk="trunk")
    repo.ensure_trunk()
    assert repo.has_commits() and repo.current_branch() == "trunk"
    git(root, "checkout", "-qb", "other")
    with pytest.raises(GitOperationError, match="git checkout trunk"):
        repo.ensure_trunk()


def test_reset_branch_moves_a_feature_branch_and_never_the_trunk(tmp_path):
    repo = repo_on(tmp_path, "master")
    base = git(repo.root, "rev-parse", "HEAD")
    git(repo.root, "checkout", "-qb", "feat/T001-step-01-x")
    commit_file(repo.root, "a.txt", "a\n", "[impl] T001: a")
    git(repo.root, "checkout", "-q", "master")
    later = commit_file(repo.root, "b.txt", "b\n", "[impl] T000: b")
    repo.reset_branch("feat/T001-step-01-x")
    assert git(repo.root, "rev-parse", "feat/T001-step-01-x") == later
    repo.reset_branch("feat/T001-step-01-x", base)
    assert git(repo.root, "rev-parse", "feat/T001-step-01-x") == base
    with pytest.raises(GitOperationError, match="refusing to reset the trunk"):
        repo.reset_branch("master", base)
    with pytest.raises(GitOperationError, match="could not reset"):
        repo.reset_branch("feat/T001-step-01-x", "no-such-ref")


def test_is_ancestor_and_require_branch(tmp_path):
    repo = repo_on(tmp_path, "main")
    git(repo.root, "checkout", "-qb", "feat/T001-step-01-x")
    commit_file(repo.root, "a.txt", "a\n", "[impl] T001: a")
    git(repo.root, "checkout", "-q", "main")
    assert not repo.is_ancestor("feat/T001-step-01-x")
    assert repo.is_ancestor("main", "feat/T001-step-01-x")
    repo.require_branch("feat/T001-step-01-x")
    with pytest.raises(BranchMissingError) as info:
        repo.require_branch("feat/T009-step-01-gone")
    assert info.value.branch == "feat/T009-step-01-gone"


def test_commits_are_authored_as_the_agent(tmp_path):
    repo = repo_on(tmp_path, "main")
    (repo.root / "x.txt").write_text("x\n")
    sha = repo.commit_all(["x.txt"], "[docs] demo: x")
    author = git(repo.root, "log", "-1", "--format=%an <%ae> %s", sha)
    assert author == "oodatcaa builder-1 <builder-1@oodatcaa.local> [docs] demo: x"
    assert repo.commit_paths(["x.txt"], "[docs] nothing changed") is None


def test_worktrees_are_private_and_removed(tmp_path):
    repo = repo_on(tmp_path, "master")
    wt = tmp_path / "wt" / "T001-B01"
    repo.add_worktree(wt, "feat/T001-step-01-x", repo.trunk)
    (wt / "out.txt").write_text("o\n")
    sha, left_out = repo.commit_worktree(wt, "[impl] T001: out")
    assert left_out == [] and git(repo.root, "rev-parse", "feat/T001-step-01-x") == sha
    repo.remove_worktree(wt)
    assert not wt.exists() and repo.current_branch() == "master"


def test_for_workspace_reads_the_trunk_setting(tmp_path):
    root = git_repo(tmp_path / "r", "master")
    ws = Workspace(root)
    ws.dir.mkdir()
    assert GitRepo.for_workspace(ws, "x").trunk == DEFAULT_TRUNK
    ws.config_path.write_text('[git]\ntrunk = "master"\n')
    repo = GitRepo.for_workspace(ws, "integrator-1")
    assert repo.trunk == "master" and repo.owner == "integrator-1"
    assert GitRepo.for_workspace(ws, "x", trunk="develop").trunk == "develop"


def test_detached_worktree_is_the_trunk_tip_and_moves_no_branch(tmp_path):
    repo = repo_on(tmp_path, "master")
    tip = commit_file(repo.root, "on_trunk.txt", "t\n", "[docs] trunk file")
    git(repo.root, "checkout", "-qb", "feat/T001-step-01-x")
    commit_file(repo.root, "on_branch.txt", "b\n", "[impl] T001: branch file")
    branches = git(repo.root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads")
    wt = tmp_path / "state" / "checks" / "trunk"
    assert repo.add_detached_worktree(wt) == tip
    assert (wt / "on_trunk.txt").exists() and not (wt / "on_branch.txt").exists()
    assert git(wt, "rev-parse", "HEAD") == tip and git(wt, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"
    assert git(repo.root, "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads") == branches
    # a second checkout at the same path replaces the first (a killed evaluation's leftover)
    (wt / "stray.txt").write_text("x\n")
    assert repo.add_detached_worktree(wt, "feat/T001-step-01-x") != tip and not (wt / "stray.txt").exists()
    repo.remove_worktree(wt)
    assert not wt.exists() and repo.current_branch() == "feat/T001-step-01-x"
    with pytest.raises(GitOperationError, match="names no commit"):
        repo.add_detached_worktree(wt, "no-such-ref")
