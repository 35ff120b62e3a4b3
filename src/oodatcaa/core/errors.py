"""Domain exceptions of the coordination core.

Every error names what a person needs to fix the problem: the file, the field (or line) and
the fix. None of them is raised after a partial write: the store validates before it replaces.
"""

from __future__ import annotations

from pathlib import Path


class OodatcaaError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidIdError(OodatcaaError, ValueError):
    """An ID (task, subtask or sprint) does not match its strict pattern.

    Raised before the value reaches a path, a branch name or a git ref.
    """


class IllegalTransitionError(OodatcaaError):
    """A status change that the transition table does not allow; nothing was written."""

    def __init__(self, item_id: str, kind: str, from_status: str, to_status: str, allowed: list[str]):
        self.item_id = item_id
        self.kind = kind
        self.from_status = from_status
        self.to_status = to_status
        self.allowed = allowed
        allowed_text = ", ".join(allowed) if allowed else "none (terminal status)"
        super().__init__(
            f"illegal transition for {kind} {item_id}: {from_status} -> {to_status}; "
            f"allowed from {from_status}: {allowed_text}"
        )


class QueueFileError(OodatcaaError):
    """``SPRINT_QUEUE.json`` could not be read or does not satisfy its schema.

    The file is never overwritten when this is raised. ``field`` is a dotted/indexed path
    such as ``tasks[2].status`` (or ``None`` when the file is not JSON at all).
    """

    def __init__(self, path: Path | str, message: str, field: str | None = None, fix: str | None = None):
        self.path = Path(path)
        self.field = field
        self.fix = fix
        where = f"{self.path}" + (f": field {field}" if field else "")
        text = f"{where}: {message}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class LeaseError(OodatcaaError):
    """A write carried a claim id that does not hold the item's lease (fencing)."""


class WorkspaceError(OodatcaaError):
    """The workspace is missing, not in a git repository, or not in the expected shape."""


class ConfigError(OodatcaaError):
    """``config.toml`` or an agent definition is malformed; names the file and the key."""


class BacklogError(OodatcaaError):
    """A backlog file is malformed; names the file, the line number and the fix."""

    def __init__(self, source: str, line: int | None, message: str):
        self.source = source
        self.line = line
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {message}")


class GitOperationError(OodatcaaError):
    """A git operation failed; carries the command's output."""


class BranchMissingError(GitOperationError):
    """A feature branch recorded in the queue no longer exists (deleted by hand?)."""

    def __init__(self, branch: str):
        self.branch = branch
        super().__init__(
            f"branch {branch} does not exist (deleted by hand?); its steps must be rebuilt "
            "(the Refiner sends them back to the Builder)"
        )


class MergeConflictError(GitOperationError):
    """``git merge`` stopped on conflicts; the merge was aborted and main is unchanged."""

    def __init__(self, branch: str, files: list[str]):
        self.branch = branch
        self.files = files
        super().__init__(f"merge of {branch} conflicts in: {', '.join(files) or '(unknown files)'}")


class TrunkMovedError(GitOperationError):
    """The trunk was not at the commit a landing expected (compare-and-swap lost); nothing moved.

    ``expected`` is the commit the merge result was built on, ``actual`` where the trunk is now.
    The Integrator retries on the new trunk.
    """

    def __init__(self, trunk: str, expected: str, actual: str):
        self.trunk = trunk
        self.expected = expected
        self.actual = actual
        super().__init__(f"{trunk} moved from {expected[:10]} to {actual[:10]} while the merge result was tested")


class UncommittedChangesError(GitOperationError):
    """The trunk's checkout holds a person's uncommitted changes that landing would overwrite; nothing moved."""

    def __init__(self, trunk: str, files: list[str]):
        self.trunk = trunk
        self.files = files
        super().__init__(f"{trunk} has uncommitted changes in: {', '.join(files[:10])}; commit or stash them")
