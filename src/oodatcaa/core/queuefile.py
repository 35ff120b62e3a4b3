"""Reading ``SPRINT_QUEUE.json`` text: the one parser, shared by the store and ``queue validate``.

It lives apart from :mod:`oodatcaa.core.store` and :mod:`oodatcaa.core.invariants` so that both can
use it without importing each other: the store imports the invariants (it checks them before every
write), and the invariants import only this module.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from oodatcaa.core.errors import QueueFileError
from oodatcaa.core.models import Queue

#: The fix offered for a queue file that cannot be read.
RESTORE_FIX = "fix the file by hand, or restore a previous version from state/queue_history/"


def format_loc(loc: tuple[str | int, ...] | list[str | int]) -> str:
    """A pydantic or jsonschema error location as a JSON path.

    ``("tasks", 2, "subtasks", 0, "status")`` -> ``"tasks[2].subtasks[0].status"``;
    the empty location -> ``"(top level)"``.
    """
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def parse_queue(text: str, path: Path) -> Queue:
    """Validate queue JSON text and build the :class:`Queue`.

    Raises :class:`QueueFileError` naming ``path`` and the first bad field (with a count of the
    others); ``queue validate`` lists them all.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueueFileError(path, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                             fix=RESTORE_FIX) from None
    try:
        return Queue.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise QueueFileError(path, f"{err['msg']}{more}", field=format_loc(err["loc"]), fix=RESTORE_FIX) from None
