"""Every git operation oodatcaa performs, in one place (GitPython).

Operations that move the trunk or create refs and worktrees run under one repository-wide
``filelock`` lock (``state/locks/git.lock``) so agents never race each other inside git.
Branch, tag and worktree names are built only from validated IDs (:mod:`oodatcaa.core.ids`).
Commits are authored as the agent that made them (``oodatcaa <owner>``).

The trunk — the branch stories merge into — is the workspace setting ``[git] trunk``, which
``oodatcaa init`` detects from the repository's current branch (``main``, ``master``, ``trunk``,
``develop`` ...). No role names a branch literally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import git
from filelock import FileLock

from oodatcaa.core.errors import (
    BranchMissingError,
    GitOperationError,
    MergeConflictError,
    TrunkMovedError,
    UncommittedChangesError,
    WorkspaceError,
)

if TYPE_CHECKING:
    from oodatcaa.core.workspace import Workspace

#: Paths oodatcaa itself writes in the trunk's checkout (reports, plans, the CHANGELOG): a landing may
#: replace them; anything else uncommitted there is a person's and blocks it.
OWN_PATHS = (".oodatcaa/", "CHANGELOG.md")

#: The trunk of a workspace whose config names none (and of a repository ``init`` creates commits in).
DEFAULT_TRUNK = "main"


def repo_root(path: Path) -> Path:
    """Top level of the git repository containing ``path``.

    Raises :class:`WorkspaceError` outside a repository (naming ``git init`` as the fix).
    """
    try:
        repo = git.Repo(Path(path), search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        raise WorkspaceError(
            f"{Path(path).resolve()} is not inside a git repository; run `git init` there first "
            "(oodatcaa keeps every experiment on a git branch)"
        ) from None
    if repo.working_tree_dir is None:
        raise WorkspaceError(f"{path} is a bare git repository; oodatcaa needs a working tree")
    return Path(repo.working_tree_dir).resolve()


def head_state(path: Path) -> tuple[str | None, str]:
    """``(current branch or None, state)`` of the repository at ``path``, touching nothing.

    ``state`` is ``"branch"`` (a branch with commits is checked out), ``"unborn"`` (a branch with
    no commit yet: a fresh ``git init``) or ``"detached"`` (HEAD points at a commit, not a branch).
    """
    repo = git.Repo(path)
    try:
        branch = repo.active_branch.name
    except TypeError:
        return None, "detached"
    try:
        repo.git.rev_parse("--verify", "-q", "HEAD")
    except git.GitCommandError:
        return branch, "unborn"
    return branch, "branch"


def init_repository(path: Path, branch: str = DEFAULT_TRUNK) -> Path:
    """``git init`` at ``path`` with ``branch`` as the unborn first branch; returns the path."""
    git.Repo.init(Path(path), initial_branch=branch)
    return Path(path)


def identity_env(owner: str) -> dict[str, str]:
    """Author environment for commits made by agent ``owner``; committer falls back likewise."""
    env = {"GIT_AUTHOR_NAME": f"oodatcaa {owner}", "GIT_AUTHOR_EMAIL": f"{owner}@oodatcaa.local"}
    for var, value in (("GIT_COMMITTER_NAME", f"oodatcaa {owner}"), ("GIT_COMMITTER_EMAIL", f"{owner}@oodatcaa.local")):
        env[var] = os.environ.get(var, value)
    return env


class GitRepo:
    """A repository plus the lock that serialises ref- and trunk-changing operations."""

    def __init__(self, root: Path, lock_path: Path, owner: str = "oodatcaa", trunk: str = DEFAULT_TRUNK,
                 index_lock_path: Path | None = None):
        self.root = Path(root)
        self.repo = git.Repo(self.root)
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(lock_path), timeout=300)
        # the lock report writers append AGENT_REPORTS.md under: held while a fast-forward of the
        # primary checkout sets that tracked file aside, so no line is appended in between
        self.index_lock = FileLock(str(index_lock_path), timeout=300) if index_lock_path else None
        self.owner = owner
        self.trunk = trunk

    @classmethod
    def for_workspace(cls, ws: Workspace, owner: str, trunk: str | None = None) -> GitRepo:
        """The repository of ``ws`` with its git lock, acting as ``owner``, merging into ``trunk``.

        ``trunk`` defaults to the workspace's ``[git] trunk`` setting (read from ``config.toml``);
        raises :class:`~oodatcaa.core.errors.ConfigError` when that file is malformed.
        """
        if trunk is None:
            from oodatcaa.core.config import load_config

            trunk = load_config(ws.config_path, ws.agents_dir).git.trunk
        return cls(ws.root, ws.lock_path("git"), owner=owner, trunk=trunk, index_lock_path=ws.lock_path("agent_reports"))

    def require_trunk(self, config_path: Path | None = None) -> None:
        """Raise :class:`WorkspaceError` unless the trunk branch exists (or the repository is unborn).

        The message names the setting (``[git] trunk`` in ``config_path``) and the branches there are.
        """
        if not self.has_commits() or self.branch_exists(self.trunk):
            return
        where = f" in {config_path}" if config_path else ""
        branches = ", ".join(sorted(h.name for h in self.repo.heads if not h.name.startswith("feat/"))) or "none"
        raise WorkspaceError(
            f"[git] trunk = {self.trunk!r}{where} names no branch of {self.root} (branches: {branches}); "
            f"fix: set trunk to the branch stories should merge into, e.g. trunk = \"{self.current_branch() or DEFAULT_TRUNK}\"")

    def _git(self, repo: git.Repo | None = None) -> git.cmd.Git:
        g = (repo or self.repo).git
        g.update_environment(**identity_env(self.owner))
        return g

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the repository-wide git lock, first cleaning up after a holder that was killed:
        an oodatcaa merge left half-done is aborted (a person's merge is left alone), and git's own
        lock files older than a minute — which a killed git leaves behind — are removed."""
        with self.lock:
            self._clear_stale_git_locks()
            if self.merge_in_progress() and self._merge_is_ours():
                self.repo.git.merge("--abort")
            yield

    def _merge_is_ours(self) -> bool:
        message = Path(self.repo.git_dir) / "MERGE_MSG"
        try:
            text = message.read_text(encoding="utf-8")
        except OSError:
            return False
        return text.startswith("[impl] ") and ": merge feat/" in text

    def _clear_stale_git_locks(self, older_than_s: float = 60.0) -> None:
        # we hold the repository-wide lock, so no oodatcaa git command is running; a lock file
        # this old was left by a git that was killed
        import time

        git_dir = Path(self.repo.git_dir)
        for name in ("index.lock", "HEAD.lock", "MERGE_HEAD.lock", f"refs/heads/{self.trunk}.lock"):
            lock = git_dir / name
            try:
                if time.time() - lock.stat().st_mtime > older_than_s:
                    lock.unlink()
            except FileNotFoundError:
                pass

    # -- inspection -------------------------------------------------------------------------
    def head_sha(self, ref: str = "HEAD") -> str:
        return self.repo.git.rev_parse(ref)

    def has_commits(self) -> bool:
        try:
            self.repo.git.rev_parse("--verify", "HEAD")
            return True
        except git.GitCommandError:
            return False

    def current_branch(self) -> str | None:
        try:
            return self.repo.active_branch.name
        except TypeError:
            return None

    def branch_exists(self, name: str) -> bool:
        return name in {h.name for h in self.repo.heads}

    def require_branch(self, name: str) -> None:
        """Raise :class:`BranchMissingError` unless local branch ``name`` exists."""
        if not self.branch_exists(name):
            raise BranchMissingError(name)

    def tag_exists(self, name: str) -> bool:
        return name in {t.name for t in self.repo.tags}

    def dirty_tracked_files(self) -> list[str]:
        """Tracked files with uncommitted changes (staged or not) in the primary checkout."""
        out = self.repo.git.status("--porcelain", "--untracked-files=no")
        return [line[3:] for line in out.splitlines() if line.strip()]

    def foreign_changes(self) -> list[str]:
        """Uncommitted changes to tracked files that oodatcaa did not make.

        ``.oodatcaa/`` (the reports index) and ``CHANGELOG.md`` (an Integrator killed between
        writing its entry and committing it) are oodatcaa's own and are finished by the next
        Integrator; anything else is a person's work in progress and blocks merging.
        """
        return [f for f in self.dirty_tracked_files() if not f.startswith(".oodatcaa/") and f != "CHANGELOG.md"]

    def unstage(self, paths: list[str]) -> None:
        """Reset the index entries of ``paths`` to HEAD (the working tree is untouched)."""
        with self.locked():
            self._git().reset("-q", "--", *paths)

    def merge_commit_of(self, branch: str) -> str | None:
        """The first-parent merge commit on the trunk whose second parent is ``branch``'s tip, if any."""
        tip = self.head_sha(branch)
        for sha in self.repo.git.rev_list("--first-parent", "--merges", self.trunk).split():
            if self.repo.git.rev_parse(f"{sha}^2") == tip:
                return sha
        return None

    def merge_in_progress(self) -> bool:
        return (Path(self.repo.git_dir) / "MERGE_HEAD").exists()

    def files_at(self, ref: str) -> list[str]:
        """Every path in the tree of ``ref``."""
        return self.repo.git.ls_tree("-r", "--name-only", ref).splitlines()

    # -- trunk checkout ---------------------------------------------------------------------
    def ensure_trunk(self) -> None:
        """Make sure the repository has a first commit and the trunk checked out.

        Raises :class:`GitOperationError` when another branch is checked out (we never switch a
        person's checkout behind their back).
        """
        with self.locked():
            g = self._git()
            if not self.has_commits():
                g.checkout("-B", self.trunk)
                g.commit("--allow-empty", "-m", "[docs] oodatcaa: initial commit")
                return
            self._require_on_trunk()

    def _require_on_trunk(self) -> None:
        branch = self.current_branch()
        if branch != self.trunk:
            raise GitOperationError(
                f"{self.root}: {'branch ' + repr(branch) if branch else 'a detached HEAD'} is checked out; oodatcaa "
                f"integrates into the trunk {self.trunk!r} ([git] trunk in .oodatcaa/config.toml) "
                f"(fix: `git checkout {self.trunk}`, or set [git] trunk to the branch you merge into)"
            )

    def is_ancestor(self, ancestor: str, descendant: str | None = None) -> bool:
        """True when ``ancestor`` is reachable from ``descendant`` (default: the trunk)."""
        try:
            self.repo.git.merge_base("--is-ancestor", ancestor, descendant or self.trunk)
            return True
        except git.GitCommandError:
            return False

    def person_identity(self) -> tuple[str, str]:
        """``(user.name, user.email)`` of this repository's git configuration (repo, then global).

        Who a person's decision (``oodatcaa approve``, ``reject``, ``resolve``) is recorded as. A
        missing ``user.name`` falls back on ``$USER`` (then ``person``), a missing email on ``""``.
        """
        def value(key: str) -> str:
            try:
                return str(self.repo.git.config("--get", key)).strip()
            except git.GitCommandError:
                return ""

        return value("user.name") or os.environ.get("USER", "") or "person", value("user.email")

    def reset_branch(self, branch: str, to: str | None = None) -> None:
        """Point ``branch`` at ``to`` (default: the trunk's tip) under the git lock, like ``git branch -f``.

        Only feature branches are reset this way; the trunk itself is never moved by this.
        Raises :class:`GitOperationError` for the trunk or when ``to`` does not resolve.
        """
        if branch == self.trunk:
            raise GitOperationError(f"refusing to reset the trunk {branch!r}")
        with self.locked():
            try:
                self._git().branch("-f", branch, to or self.trunk)
            except git.GitCommandError as exc:
                raise GitOperationError(f"could not reset {branch} to {to or self.trunk}: {exc.stderr.strip()}") from None

    def commit_all(self, paths: list[str], message: str) -> str:
        """Stage ``paths`` (relative to the root, added even when new) and commit on the trunk; returns the sha."""
        with self.locked():
            g = self._git()
            g.add("-A", "--", *paths)
            self._commit_or_unstage(g, paths, "-m", message)
            return self.head_sha()

    def commit_paths(self, paths: Sequence[Path | str], message: str, *, allow_empty: bool = False) -> str | None:
        """Stage ``paths`` (relative to the root) on the trunk and commit; ``None`` if nothing changed."""
        with self.locked():
            g = self._git()
            existing = [str(p) for p in paths if (self.root / p).exists()]
            if existing:
                g.add("-A", "--", *existing)
            staged = g.diff("--cached", "--name-only").strip()
            if not staged and not allow_empty:
                return None
            self._commit_or_unstage(g, existing, "-m", message, *(["--allow-empty"] if allow_empty else []))
            return self.head_sha()

    @staticmethod
    def _commit_or_unstage(g: git.cmd.Git, paths: list[str], *args: str) -> None:
        # a refused commit (a hook, a missing identity) must not leave our files staged for the
        # person's next commit
        try:
            g.commit(*args)
        except git.GitCommandError as exc:
            if paths:
                g.reset("-q", "--", *paths)
            raise GitOperationError(f"git commit failed: {(exc.stderr or exc.stdout or str(exc)).strip()}") from None

    def tag(self, name: str, message: str, ref: str = "HEAD") -> None:
        """Create an annotated tag (replacing none: an existing tag raises GitOperationError)."""
        with self.locked():
            if self.tag_exists(name):
                raise GitOperationError(f"tag {name} already exists at {self.repo.git.rev_parse(name)}")
            self._git().tag("-a", name, "-m", message, ref)

    def merge_no_ff(self, branch: str, message: str) -> str:
        """``git merge --no-ff branch`` into the trunk; returns the merge commit.

        On conflicts the merge is aborted (the trunk untouched) and :class:`MergeConflictError` lists
        the conflicting files.
        """
        with self.locked():
            self._require_on_trunk()
            self.require_branch(branch)
            g = self._git()
            try:
                g.merge("--no-ff", "-m", message, branch)
            except git.GitCommandError as exc:
                conflicts = self.repo.git.diff("--name-only", "--diff-filter=U").split()
                if self.merge_in_progress():
                    self.repo.git.merge("--abort")
                if conflicts:
                    raise MergeConflictError(branch, conflicts) from None
                raise GitOperationError(f"merge of {branch} failed: {exc.stderr.strip()}") from None
            return self.head_sha()

    # -- worktrees and branches -------------------------------------------------------------
    def add_worktree(self, path: Path, branch: str, base: str) -> Path:
        """A fresh worktree at ``path`` on new ``branch`` from ``base``; reuses an existing branch.

        An old worktree at the same path (a killed builder's) is removed first.
        """
        with self.locked():
            g = self._git()
            self._drop_worktree(g, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.branch_exists(branch):
                g.worktree("add", "--force", str(path), branch)
            else:
                g.worktree("add", "-b", branch, str(path), base)
        return path

    def add_detached_worktree(self, path: Path, ref: str | None = None) -> str:
        """A clean, detached checkout of ``ref`` (default: the trunk's tip) at ``path``; returns its sha.

        No branch is created or moved: the checkout sits on the commit itself, so what runs there
        (an objective's ``command:`` check) sees exactly the committed tree of that commit and can
        never commit onto a branch. An old worktree at ``path`` is removed first. Remove it with
        :meth:`remove_worktree`. Raises :class:`GitOperationError` when ``ref`` names no commit.
        """
        target = ref or self.trunk
        with self.locked():
            g = self._git()
            try:
                sha = self.repo.git.rev_parse("--verify", "--quiet", f"{target}^{{commit}}")
            except git.GitCommandError:
                raise GitOperationError(f"{target!r} names no commit in {self.root}") from None
            self._drop_worktree(g, path)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                g.worktree("add", "--detach", "--force", str(path), sha)
            except git.GitCommandError as exc:
                raise GitOperationError(f"could not check out {target} at {path}: {exc.stderr.strip()}") from None
        return sha

    def remove_worktree(self, path: Path) -> None:
        """Remove a worktree (its branch stays)."""
        with self.locked():
            self._drop_worktree(self._git(), path)

    @staticmethod
    def _drop_worktree(g: git.cmd.Git, path: Path) -> None:
        """Forget a worktree at ``path`` whatever state a killed process left it in.

        ``git worktree add`` killed midway leaves it registered and locked ("initializing"), which
        ``prune`` skips and a plain ``remove`` refuses; unlock it and remove it with ``-f -f``.
        """
        registered = str(path) in g.worktree("list", "--porcelain")
        if registered:
            try:
                g.worktree("unlock", str(path))
            except git.GitCommandError:
                pass  # not locked
            try:
                g.worktree("remove", "--force", "--force", str(path))
            except git.GitCommandError:
                pass
        if path.exists():
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        g.worktree("prune")

    def commit_worktree(self, path: Path, message: str, *, max_file_bytes: int = 5 * 1024 * 1024) -> tuple[str, list[str]]:
        """Commit every change in worktree ``path`` on its branch, except files over ``max_file_bytes``.

        Returns ``(commit sha, paths left out because they are too large for git)``; large
        artifacts belong in the state dir, hashed, not in history.
        """
        wt = git.Repo(path)
        g = self._git(wt)
        g.add("-A", "--", ".")
        too_big: list[str] = []
        for rel in wt.git.diff("--cached", "--name-only", "--diff-filter=AM").splitlines():
            file = Path(path) / rel
            if file.is_file() and file.stat().st_size > max_file_bytes:
                too_big.append(rel)
        if too_big:
            g.reset("-q", "--", *too_big)
        g.commit("--allow-empty", "-m", message)
        return wt.git.rev_parse("HEAD"), too_big

    # -- the merge queue: build a merge result off the trunk, land it by compare-and-swap ----------
    def ensure_trunk_branch(self) -> None:
        """Make sure the repository has a first commit and the trunk branch exists (checked out or not).

        Raises :class:`WorkspaceError` when ``[git] trunk`` names no branch.
        """
        with self.locked():
            if not self.has_commits():
                g = self._git()
                g.checkout("-B", self.trunk)
                g.commit("--allow-empty", "-m", "[docs] oodatcaa: initial commit")
                return
        self.require_trunk()

    def trunk_sha(self) -> str:
        """The commit the trunk branch points at now."""
        return self.head_sha(f"refs/heads/{self.trunk}")

    def trunk_checked_out(self) -> bool:
        """True when the primary checkout has the trunk checked out (a landing then updates its files)."""
        return self.current_branch() == self.trunk

    def merge_no_ff_at(self, path: Path, branch: str, message: str) -> str:
        """``git merge --no-ff branch`` in the detached checkout ``path``; returns the merge commit.

        Nothing outside ``path`` changes. On conflicts the merge is aborted and
        :class:`MergeConflictError` lists the conflicting files.
        """
        self.require_branch(branch)
        wt = git.Repo(path)
        try:
            self._git(wt).merge("--no-ff", "-m", message, branch)
        except git.GitCommandError as exc:
            conflicts = wt.git.diff("--name-only", "--diff-filter=U").split()
            try:
                wt.git.merge("--abort")
            except git.GitCommandError:
                pass  # nothing to abort: the merge never started
            if conflicts:
                raise MergeConflictError(branch, conflicts) from None
            raise GitOperationError(f"merge of {branch} failed: {exc.stderr.strip()}") from None
        return wt.git.rev_parse("HEAD")

    def revert_merge_at(self, path: Path, commit: str) -> list[str]:
        """``git revert -m 1 --no-commit commit`` in the checkout ``path`` (staged, not committed).

        Returns the paths it changes. On conflicts the revert is aborted and
        :class:`MergeConflictError` lists the files (its ``branch`` names the commit).
        """
        wt = git.Repo(path)
        try:
            self._git(wt).revert("-m", "1", "--no-commit", commit)
        except git.GitCommandError as exc:
            conflicts = wt.git.diff("--name-only", "--diff-filter=U").split()
            try:
                wt.git.revert("--abort")
            except git.GitCommandError:
                pass
            if conflicts:
                raise MergeConflictError(f"revert of {commit[:10]}", conflicts) from None
            raise GitOperationError(f"revert of {commit[:10]} failed: {exc.stderr.strip()}") from None
        return wt.git.diff("--cached", "--name-only").split()

    def commit_at(self, path: Path, paths: Sequence[str], message: str, *, allow_empty: bool = False) -> str | None:
        """Stage ``paths`` (relative, added even when new) in checkout ``path`` and commit; ``None`` if nothing changed."""
        wt = git.Repo(path)
        g = self._git(wt)
        existing = [p for p in paths if (Path(path) / p).exists()]
        if existing:
            g.add("-A", "--", *existing)
        if not wt.git.diff("--cached", "--name-only").strip() and not allow_empty:
            return None
        try:
            g.commit("-m", message, *(["--allow-empty"] if allow_empty else []))
        except git.GitCommandError as exc:
            raise GitOperationError(f"git commit in {path} failed: {(exc.stderr or exc.stdout or str(exc)).strip()}") from None
        return wt.git.rev_parse("HEAD")

    def subject(self, commit: str) -> str:
        """The first line of ``commit``'s message."""
        return str(self.repo.git.log("-1", "--format=%s", commit)).strip()

    def commit_time(self, commit: str) -> str:
        """The committer date of ``commit`` in ISO 8601 (``2026-01-02T10:00:00+00:00``)."""
        return str(self.repo.git.log("-1", "--format=%cI", commit)).strip()

    def tag_commit(self, name: str) -> str | None:
        """The commit tag ``name`` points at (through an annotated tag), or ``None`` when there is no such tag."""
        return self.head_sha(f"refs/tags/{name}^{{commit}}") if self.tag_exists(name) else None

    def first_parent_child(self, commit: str) -> str | None:
        """The commit on the trunk's first-parent line whose first parent is ``commit``, if any."""
        for line in self.repo.git.rev_list("--first-parent", "--parents", self.trunk).splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1] == commit:
                return parts[0]
        return None

    def commit_with_trailer(self, line: str) -> str | None:
        """The newest commit on the trunk whose message has the line ``line`` (a trailer such as
        ``Reverts-merge: <sha>``), or ``None``."""
        found = self.repo.git.log("--format=%H", "-n", "1", "--fixed-strings", f"--grep={line}", self.trunk).strip()
        return found or None

    def land(self, new: str, old: str) -> None:
        """Move the trunk from ``old`` to ``new`` by compare-and-swap (``new`` must descend from ``old``).

        When the trunk is checked out in the primary checkout, ``git merge --ff-only`` there moves it
        and updates its files; oodatcaa's own uncommitted files (:data:`OWN_PATHS`) that the landing
        touches are set aside first and the ones under ``.oodatcaa/`` put back where they are newer
        (report lines appended since). Otherwise ``git update-ref refs/heads/<trunk> new old``.

        Raises :class:`TrunkMovedError` when the trunk is no longer at ``old`` and
        :class:`UncommittedChangesError` when a person's uncommitted work is in the way; in both
        cases the trunk and the checkout are unchanged.
        """
        with self.locked():
            actual = self.trunk_sha()
            if actual != old:
                raise TrunkMovedError(self.trunk, old, actual)
            if not self.trunk_checked_out():
                elsewhere = self._worktree_holding_trunk()
                if elsewhere is not None:
                    raise GitOperationError(
                        f"{self.trunk} is checked out in the worktree {elsewhere}; oodatcaa moves the trunk only in the "
                        f"primary checkout or where it is checked out nowhere (fix: check out another branch there)")
                try:
                    self.repo.git.update_ref(f"refs/heads/{self.trunk}", new, old)
                except git.GitCommandError:
                    raise TrunkMovedError(self.trunk, old, self.trunk_sha()) from None
                return
            with self.index_lock or nullcontext():
                self._fast_forward_checkout(new, old)

    def _worktree_holding_trunk(self) -> str | None:
        """The path of a linked worktree that has the trunk checked out, if any."""
        path = None
        for line in self.repo.git.worktree("list", "--porcelain").splitlines():
            if line.startswith("worktree "):
                path = line[len("worktree "):]
            elif line == f"branch refs/heads/{self.trunk}" and path and Path(path).resolve() != self.root.resolve():
                return path
        return None

    def _fast_forward_checkout(self, new: str, old: str) -> None:
        foreign = self.foreign_changes()
        if foreign:
            raise UncommittedChangesError(self.trunk, foreign)
        touched = self.repo.git.diff("--name-only", "--no-renames", old, new).splitlines()
        tracked_old = set(self.repo.git.ls_tree("-r", "--name-only", old, "--", *touched).splitlines()) if touched else set()
        dirty = set(self.dirty_tracked_files())
        in_way = [p for p in touched if (self.root / p).is_file() and (p not in tracked_old or p in dirty)]
        blocked = [p for p in in_way if not p.startswith(OWN_PATHS)]
        if blocked:
            raise UncommittedChangesError(self.trunk, blocked)
        saved = {p: (self.root / p).read_bytes() for p in in_way}
        g = self._git()
        if in_way:
            g.reset("-q", old, "--", *in_way)
            for p in in_way:
                if p in tracked_old:
                    g.checkout(old, "--", p)
                else:
                    (self.root / p).unlink()
        try:
            g.merge("--ff-only", "-q", new)
        except git.GitCommandError as exc:
            for p, data in saved.items():
                (self.root / p).write_bytes(data)
            raise GitOperationError(f"fast-forward of {self.trunk} to {new[:10]} failed: {exc.stderr.strip()}") from None
        for p, data in saved.items():
            if p.startswith(".oodatcaa/") and (self.root / p).read_bytes() != data:
                (self.root / p).write_bytes(data)

    def user_identity(self) -> tuple[str, str]:
        """``(user.name, user.email)`` from git's configuration, ``("", "")`` parts where unset."""
        def value(key: str) -> str:
            try:
                return str(self.repo.git.config("--get", key)).strip()
            except git.GitCommandError:
                return ""

        return value("user.name"), value("user.email")
