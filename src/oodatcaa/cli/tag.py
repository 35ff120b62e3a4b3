"""``oodatcaa tag`` for the command line: its argument parser and the ``tag list`` table.

The logic is :mod:`oodatcaa.tagging`; :func:`oodatcaa.cli.main.cmd_tag` binds the two.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from rich.table import Table

from oodatcaa.cli.render import cell
from oodatcaa.tagging import MergedStory

TAG_HELP = "list merged stories and their tags, tag a merged story by hand, or cut a release"
TAG_EPILOG = """\
forms:
  oodatcaa tag list [--json]                   every merged story: its TASK-complete tag, merge commit,
                                               date, headline metrics, reverted or not; untagged ones flagged
  oodatcaa tag TASK                            tag a merged story whose TASK-complete tag is missing, with
                                               the Integrator's message, on its landed commit
  oodatcaa tag release vX.Y.Z [--notes TEXT]   move the CHANGELOG's unreleased entries into
                                               '## [X.Y.Z] - YYYY-MM-DD', commit that on the trunk and make
                                               the annotated tag vX.Y.Z with the release notes
"""


def add_tag_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                   func: Callable[[argparse.Namespace], int]) -> None:
    """Add ``tag`` to ``sub``: first positional ``list``, ``release`` or a task ID; bound to ``func``."""
    p = sub.add_parser("tag", help=TAG_HELP, description=TAG_HELP + ".", epilog=TAG_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       usage="oodatcaa tag {list | TASK | release vX.Y.Z} [--notes TEXT] [--json]")
    p.add_argument("what", metavar="list|TASK|release", help="'list', 'release' or a story ID such as T003")
    p.add_argument("version", nargs="?", default=None, metavar="vX.Y.Z",
                   help="release only: v + a semantic version (https://semver.org), e.g. v0.1.0")
    p.add_argument("--notes", default=None, metavar="TEXT", help="release only: text for the release tag's notes")
    p.add_argument("--json", action="store_true", help="list only: print JSON rows")
    p.set_defaults(func=func)


def tag_table(stories: Sequence[MergedStory]) -> Table:
    """The ``tag list`` table (fits 80 columns): task, sprint number, tag (``MISSING`` in red when the
    story was merged without one), merge commit, merge date, reverted (``yes``), headline metrics."""
    table = Table(title="Merged stories")
    # short columns never wrap (an ID or a sha split over two lines cannot be copied); metrics fold
    for name in ("task", "spr", "tag", "merge", "date", "rev"):
        table.add_column(name, no_wrap=True)
    table.add_column("metrics", overflow="fold")
    for s in stories:
        tag = cell(s.tag) if s.tag_commit else cell("MISSING", "bold red")
        metrics = ", ".join(f"{k}={v}" for k, v in sorted(s.metrics.items()))
        table.add_row(cell(s.task.id), cell(s.sprint_number), tag, cell(s.merge_commit[:8]),
                      cell((s.date or "")[:10]), cell("yes" if s.reverted else "", "yellow"), cell(metrics))
    return table
