"""The backlog parser: Markdown text -> :class:`~oodatcaa.backlog.model.Backlog`, or a located error."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from oodatcaa.backlog.durations import ACCEPTED_FORMS, parse_duration_range
from oodatcaa.backlog.model import Backlog, BacklogItem, BacklogWarning, JobBlock
from oodatcaa.backlog.syntax import (
    _BULLET,
    _CHECKBOX,
    _EXIT_LABELS,
    _FENCE_OPEN,
    _GOAL_LABELS,
    _ID_FIX,
    _ID_LIKE,
    _ISO_DATE,
    _ITEM_HEADING,
    _JOB_LIKE,
    _KNOWN_LABELS_TEXT,
    _NO_DEPENDENCIES,
    _NUMBERED,
    _QUOTE_PREFIX,
    _RULE,
    _START_LABEL,
    _TARGET_LABEL,
    FIELD_LABELS,
    _heading,
    _labels,
    _norm_label,
    _parse_job,
)
from oodatcaa.core.config import complexity_key
from oodatcaa.core.criteria import Criterion, parse_criterion_line
from oodatcaa.core.errors import BacklogError, InvalidIdError
from oodatcaa.core.ids import validate_story_id
from oodatcaa.core.models import Estimate

__all__ = ["load_backlog", "parse_backlog", "raise_warnings"]


#: ``**Approval:**`` values (lower-cased) that make a person approve the story before its merge, and that do not.
_APPROVAL_REQUIRED = frozenset({"required", "yes", "true", "person", "human"})
_APPROVAL_NOT_REQUIRED = frozenset({"", "none", "no", "false", "not required", "-", "n/a"})


class _ItemBuilder:
    def __init__(self, item_id: str, title: str, line: int) -> None:
        self.id = item_id
        self.title = title
        self.line = line
        self.fields: dict[str, str] = {}
        self.field_lines: dict[str, int] = {}
        self.description: list[str] = []
        self.criteria: list[Criterion] = []
        self.jobs: list[JobBlock] = []
        self.links: list[str] = []
        self.pending: tuple[int, str] | None = None  # (line, text) of the criterion being read
        self.mode: str | None = None  # None | "description" | "criteria" | "links"


class _Parser:
    def __init__(self, text: str, source: str, known_stories: frozenset[str] = frozenset()) -> None:
        self.source = source
        self.known_stories = known_stories  # stories of earlier sprints: dependencies on them are allowed
        self.lines = text.lstrip("\ufeff").splitlines()
        self.title: str | None = None
        # Goal sources, best first: a **Sprint Goal:** label, a "## Goal" section, the paragraph
        # under the title.
        self.goal_parts: dict[str, list[str]] = {}
        self.goal_waiting: str | None = None  # source whose first paragraph is awaited
        self.goal_collecting: str | None = None  # source whose paragraph is being read
        self.exit_criteria: list[str] = []
        self.items: list[_ItemBuilder] = []
        self.item: _ItemBuilder | None = None
        # Outside items: "preamble" (before any ## heading), "exit" (an exit-criteria list),
        # "other" (any other section, such as ## Sprint Summary).
        self.section = "preamble"
        self.start_date: date | None = None
        self.target_date: date | None = None
        self.notes: list[str] = []
        # the last note takes following list or prose lines (`**Critical Path:**` then `T001 → T002`)
        self.note_open = False
        self.warnings: list[BacklogWarning] = []

    def error(self, line: int | None, message: str) -> BacklogError:
        return BacklogError(self.source, line, message)

    def warn(self, line: int | None, message: str) -> None:
        self.warnings.append(BacklogWarning(source=self.source, line=line, message=message))

    # -- the main loop ------------------------------------------------------------------------

    def parse(self) -> Backlog:
        n = 0
        total = len(self.lines)
        while n < total:
            line = self.lines[n]
            lineno = n + 1
            fence = _FENCE_OPEN.match(line)
            if fence:
                n = self._fence(n, fence)
                continue
            if _RULE.match(line):
                line = ""  # `---` between items separates them visually; it means nothing more
            heading = _heading(line)
            if heading:
                self._heading(lineno, *heading)
            elif self.item is not None:
                self._item_line(lineno, line)
            else:
                self._outside_line(lineno, line)
            n += 1
        self._close_item()
        if not self.items:
            raise self.error(
                None,
                "no items found; each backlog item is a section headed `### T001: Title` "
                "(a capital letter and three digits, a colon, the title)",
            )
        items = [self._build(b) for b in self.items]
        self._check_dependencies(items)
        goal_text = None
        for key in ("label", "section", "para"):
            if self.goal_parts.get(key):
                goal_text = " ".join(self.goal_parts[key]).strip()
                break
        return Backlog(
            source=self.source, title=self.title, goal=goal_text or None,
            exit_criteria=self.exit_criteria, items=items, start_date=self.start_date,
            target_date=self.target_date, notes=self.notes, warnings=self.warnings,
        )

    # -- fences -------------------------------------------------------------------------------

    def _fence(self, n: int, match: re.Match[str]) -> int:
        fence_line = n + 1
        marker = match.group("fence")
        info = match.group("info").lower()
        closing = re.compile(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}[ \t]*$")
        body: list[str] = []
        end = None
        for j in range(n + 1, len(self.lines)):
            if closing.match(self.lines[j]):
                end = j
                break
            body.append(self.lines[j])
        if end is None:
            raise self.error(
                fence_line,
                f"code fence {marker}{info} opened here is never closed; add a closing {marker} line",
            )
        if info == "job":
            if self.item is None:
                raise self.error(
                    fence_line,
                    "job block outside an item; put it in an item section under a `### T001: Title` heading",
                )
            self._end_criteria()
            self.item.mode = None
            self.item.jobs.append(_parse_job(body, fence_line, self.item.id, self.source))
        elif self.item is not None:
            # Any other code block is part of the description, verbatim.
            self._end_criteria()
            if _JOB_LIKE.search("\n".join(body)):
                raise self.error(
                    fence_line,
                    f"code block in {self.item.id} looks like a job but is fenced as {marker}{info}; "
                    f"open it with {marker}job so that it runs (or remove its `kind:` line)",
                )
            self.item.mode = "description"
            self.item.description.extend(self.lines[n : end + 1])
        else:
            self._goal_stop()
        return end + 1

    # -- headings -----------------------------------------------------------------------------

    def _heading(self, lineno: int, level: int, text: str) -> None:
        if level >= 4 and self.item is not None:
            self._end_criteria()
            self.item.mode = "description"
            self.item.description.append(self.lines[lineno - 1].strip())
            return
        self._goal_stop()
        if level == 1:
            self._close_item()
            if self.title is None:
                self.title = text or None
                self.goal_waiting = "para"
            return
        if level == 2:
            self._close_item()
            label = _norm_label(text)
            self.section = "exit" if label in _EXIT_LABELS else "other"
            if label in _GOAL_LABELS:
                self.goal_waiting = "section"
            return
        if level == 3:
            self._close_item()
            item = self._item_heading(lineno, text)
            if item is not None:
                self.item = item
            else:
                self.section = "other"
            return
        # level >= 4 outside items: ignored

    def _item_heading(self, lineno: int, text: str) -> _ItemBuilder | None:
        m = _ITEM_HEADING.match(text)
        if not m:
            if _ID_LIKE.match(text):
                raise self.error(
                    lineno,
                    f"item heading {text!r} is missing ': ' after the ID; write `### T001: Title`",
                )
            if self.items:
                raise self.error(
                    lineno,
                    f"level-3 heading {text!r} after the first item: level-3 headings are items "
                    "(`### T001: Title`); use `##` or `####` for other headings",
                )
            return None  # an ordinary level-3 heading before the items
        raw_id, title = m.group("id").strip(), (m.group("title") or "").strip()
        try:
            validate_story_id(raw_id)
        except InvalidIdError as exc:
            raise self.error(
                lineno,
                f"{exc}; {_ID_FIX} (`### T001: Title`); use `##` or `####` for headings that are not items",
            ) from None
        for other in self.items:
            if other.id == raw_id:
                raise self.error(
                    lineno, f"duplicate item ID {raw_id} (first defined on line {other.line}); give this item a new ID"
                )
        if not title:
            raise self.error(lineno, f"item {raw_id} has no title; write `### {raw_id}: A short title`")
        return _ItemBuilder(raw_id, title, lineno)

    # -- inside an item -----------------------------------------------------------------------

    def _item_line(self, lineno: int, line: str) -> None:
        item = self.item
        assert item is not None
        labels = _labels(line)
        if labels is not None:
            self._end_criteria()
            item.mode = None
            for label, value in labels:
                self._field(lineno, item, label, value)
            # A trailing description/criteria/links label opens a multi-line field.
            last = FIELD_LABELS.get(_norm_label(labels[-1][0]))
            if last == "description":
                item.mode = "description"
            elif last == "acceptance_criteria":
                item.mode = "criteria"
            elif last == "objective_links":
                item.mode = "links"
            return
        if item.mode == "links":
            # one link per bullet (a checkbox is read as a bullet); a blank line after them ends the list
            entry = _CHECKBOX.match(line) or _BULLET.match(line)
            if entry:
                self._add_links(item, [entry.group("text") or ""])
                return
            if not line.strip():
                if item.links:
                    item.mode = None
                return
            if item.links and line[:1] in (" ", "\t"):
                item.links[-1] += " " + line.strip()
                return
            item.mode = None
        box = _CHECKBOX.match(line)
        if box:
            if item.mode != "criteria":
                raise self.error(
                    lineno,
                    f"checkbox line in {item.id} outside an **Acceptance Criteria:** list; "
                    "put an `**Acceptance Criteria:**` line above the list",
                )
            self._end_criteria()
            item.pending = (lineno, box.group("text") or "")
            return
        if item.mode == "criteria":
            if not line.strip():
                self._end_criteria()
                return
            if item.pending is not None and line[:1] in (" ", "\t") and not _BULLET.match(line):
                at, text = item.pending
                item.pending = (at, f"{text} {line.strip()}")
                return
            bullet = _BULLET.match(line)
            if bullet:
                raise self.error(
                    lineno,
                    f"acceptance criterion of {item.id} is not a checkbox; write `- [ ] {bullet.group('text').strip()}`",
                )
            # Prose between criteria belongs to the description; the list goes on after it.
            self._end_criteria()
            item.description.append(line.rstrip())
            return
        if not line.strip() and not item.description:
            return
        item.mode = "description"
        item.description.append(line.rstrip())

    def _field(self, lineno: int, item: _ItemBuilder, label: str, value: str) -> None:
        name = FIELD_LABELS.get(_norm_label(label))
        if name is None:
            # a field nobody knows is read past, not refused: backlogs carry fields of their own
            # (`**Owner:**`); the warning says it has no effect (an error under `sprint new --strict`)
            self.warn(
                lineno,
                f"unknown field **{label}:** in {item.id} is ignored; the known fields are {_KNOWN_LABELS_TEXT}",
            )
            return
        if name in item.field_lines:
            raise self.error(
                lineno,
                f"field **{label}:** given twice in {item.id} (first on line {item.field_lines[name]}); keep one",
            )
        item.field_lines[name] = lineno
        if name == "description":
            if value:
                item.description.append(value)
        elif name == "acceptance_criteria":
            if value and value.lower() not in _NO_DEPENDENCIES:
                raise self.error(
                    lineno,
                    f"text after **Acceptance Criteria:** in {item.id}; put each criterion on its own "
                    "`- [ ] ...` line below the label",
                )
        elif name == "objective_links":
            # one line may carry several links, separated by `;` (a path's names may hold commas)
            self._add_links(item, value.split(";"))
        else:
            item.fields[name] = value

    def _add_links(self, item: _ItemBuilder, texts: list[str]) -> None:
        for text in texts:
            link = text.strip()
            if link and link.lower() not in _NO_DEPENDENCIES and link not in item.links:
                item.links.append(link)

    def _end_criteria(self) -> None:
        item = self.item
        if item is None or item.pending is None:
            return
        at, text = item.pending
        item.pending = None
        item.criteria.append(
            parse_criterion_line(text, index=len(item.criteria) + 1, source=self.source, line=at)
        )

    def _close_item(self) -> None:
        if self.item is not None:
            self._end_criteria()
            self.items.append(self.item)
            self.item = None

    # -- outside items ------------------------------------------------------------------------

    def _goal_stop(self) -> None:
        self.goal_waiting = None
        self.goal_collecting = None
        self.note_open = False

    def _outside_line(self, lineno: int, line: str) -> None:
        # `> ` block quotes carry sprint-level lines (`> **Sprint Goal:** ...`); read them as lines
        line = _QUOTE_PREFIX.sub("", line, count=1)
        stripped = line.strip()
        labels = _labels(line)
        if labels is not None:
            self.goal_collecting = None
            self.note_open = False
            name, value = _norm_label(labels[0][0]), labels[0][1]
            if name in _GOAL_LABELS and "label" not in self.goal_parts:
                self.goal_parts["label"] = [value] if value else []
                self.goal_collecting = "label" if value else None
                self.goal_waiting = None if value else "label"
            elif name in _EXIT_LABELS:
                self.section = "exit"
                self.goal_waiting = None
            else:
                # every other sprint-level or summary label is kept as a note, never refused
                for label, text in labels:
                    self._note(lineno, label, text)
            return
        if not stripped:
            self.goal_collecting = None
            if self.notes and self.note_open and not self.notes[-1].endswith(":"):
                self.note_open = False
            return
        box = _CHECKBOX.match(line)
        bullet = _BULLET.match(line)
        if self.note_open and self.section != "exit":
            note = self.notes[-1]
            listed = box is not None or bullet is not None or _NUMBERED.match(line) is not None
            self.notes[-1] = f"{note} {stripped}" if note.endswith(":") and not listed else f"{note}\n{stripped}"
            return
        if box or bullet:
            self._goal_stop()
            if self.section == "exit":
                text = (box.group("text") if box else bullet.group("text")) or ""  # type: ignore[union-attr]
                if text.strip():
                    self.exit_criteria.append(text.strip())
            return
        if self.section == "exit" and self.exit_criteria and line[:1] in (" ", "\t"):
            self.exit_criteria[-1] += " " + stripped
            return
        if _NUMBERED.match(line):
            self._goal_stop()
            return
        if self.goal_collecting is not None:
            self.goal_parts[self.goal_collecting].append(stripped)
        elif self.goal_waiting is not None and not stripped.startswith(("|", "<", ">")):
            self.goal_parts[self.goal_waiting] = [stripped]
            self.goal_collecting = self.goal_waiting
            self.goal_waiting = None

    def _note(self, lineno: int, label: str, value: str) -> None:
        """Keep a labelled line outside the items as a note; read sprint start and target dates."""
        name = _norm_label(label)
        self.notes.append(f"{label}: {value}" if value else f"{label}:")
        self.note_open = True
        which = "start" if _START_LABEL.match(name) else "target" if _TARGET_LABEL.match(name) else None
        if which is None:
            return
        found = _ISO_DATE.search(value)
        day = None
        if found:
            try:
                day = date(*(int(g) for g in found.groups()))
            except ValueError:
                pass
        if day is None:
            self.warn(lineno, f"**{label}:** {value!r} has no date in the form YYYY-MM-DD; it is kept as a note only")
        elif which == "start":
            self.start_date = day
        else:
            self.target_date = day

    # -- building and cross-item checks ------------------------------------------------------

    def _build(self, b: _ItemBuilder) -> BacklogItem:
        fields = b.fields
        priority = None
        raw_priority = fields.get("priority", "").strip()
        if raw_priority and raw_priority.lower() not in _NO_DEPENDENCIES:
            if not re.fullmatch(r"[+-]?\d+", raw_priority):
                raise self.error(
                    b.field_lines["priority"],
                    f"priority of {b.id} must be an integer, got {raw_priority!r}; write e.g. `**Priority:** 2`",
                )
            priority = int(raw_priority)
        deps = self._dependencies(b)
        description = _join_description(b.description)
        estimate = self._estimate(b)
        complexity = fields.get("complexity") or None
        if estimate is None and complexity is not None and complexity_key(complexity) is None:
            self.warn(
                b.field_lines["complexity"],
                f"complexity {complexity!r} of {b.id} has no estimate rule (S, M, L, XL) and no **Estimated Time:** "
                "is given, so the story has no estimate; write S, M, L or XL, or an **Estimated Time:**",
            )
        item = BacklogItem(
            id=b.id,
            title=b.title,
            type=fields.get("type") or "Story",
            complexity=complexity,
            priority=priority,
            status=fields.get("status") or None,
            dependencies=deps,
            description=description,
            acceptance_criteria=b.criteria,
            jobs=b.jobs,
            objective_links=b.links,
            estimate=estimate,
            approval_required=self._approval(b),
            line=b.line,
        )
        self._status_warnings(b, item)
        return item

    def _approval(self, b: _ItemBuilder) -> bool:
        """``**Approval:** required`` -> True; ``not required`` / ``none`` / nothing -> False; else an error."""
        raw = " ".join(b.fields.get("approval", "").strip().lower().split())
        if raw in _APPROVAL_REQUIRED:
            return True
        if raw in _APPROVAL_NOT_REQUIRED:
            return False
        raise self.error(
            b.field_lines["approval"],
            f"**Approval:** {b.fields.get('approval', '').strip()!r} of {b.id} is not understood; write "
            "`**Approval:** required` (a person approves before the merge) or `**Approval:** none`",
        )

    def _estimate(self, b: _ItemBuilder) -> Estimate | None:
        raw = b.fields.get("estimated_time", "").strip()
        try:
            minutes = parse_duration_range(raw)
        except ValueError as exc:
            raise self.error(
                b.field_lines["estimated_time"],
                f"**Estimated Time:** {raw!r} of {b.id} is not a duration ({exc}); write one of {ACCEPTED_FORMS}, "
                "or `None` to estimate from the complexity",
            ) from None
        if minutes is None:
            return None
        return Estimate(low_minutes=minutes[0], high_minutes=minutes[1], source="backlog", text=raw)

    def _status_warnings(self, b: _ItemBuilder, item: BacklogItem) -> None:
        """Say what ``sprint new`` does with a written status that is not simply "to do"."""
        line = b.field_lines.get("status", b.line)
        kind = item.status_kind
        if kind == "blocked" and not item.dependencies:
            self.warn(line, f"{item.id} is written blocked but names no **Dependencies:**, so nothing holds it back: "
                            "it is planned and run like any other story; name what it waits for")
        elif kind == "done":
            self.warn(line, f"{item.id} is written {item.status!r}: `sprint new` does not run it again "
                            "(it is left out of the sprint and counts as done for the stories that depend on it)")

    def _dependencies(self, b: _ItemBuilder) -> list[str]:
        raw = b.fields.get("dependencies", "").strip()
        if raw.lower() in _NO_DEPENDENCIES:
            return []
        out: list[str] = []
        for token in re.split(r"[,;]", raw):
            dep = token.strip().strip("`").strip()
            if not dep:
                continue
            try:
                validate_story_id(dep)
            except InvalidIdError:
                raise self.error(
                    b.field_lines["dependencies"],
                    f"invalid dependency {dep!r} of {b.id}; write item IDs separated by commas "
                    "(`**Dependencies:** T001, T002`) or `None`",
                ) from None
            if dep not in out:
                out.append(dep)
        return out

    def _check_dependencies(self, items: list[BacklogItem]) -> None:
        known = {item.id for item in items}
        dep_line = {b.id: b.field_lines.get("dependencies", b.line) for b in self.items}
        for item in items:
            for dep in item.dependencies:
                if dep not in known and dep not in self.known_stories:
                    raise self.error(
                        dep_line[item.id],
                        f"{item.id} depends on {dep}, which is neither in this backlog "
                        f"(items: {', '.join(sorted(known))}) nor a story of an earlier sprint; "
                        f"add {dep} or remove the dependency",
                    )
        graph = {item.id: [d for d in item.dependencies if d in known] for item in items}
        state: dict[str, int] = {}  # 1 = on the current path, 2 = done
        for start in graph:
            if state.get(start):
                continue
            path: list[str] = []
            stack: list[tuple[str, int]] = [(start, 0)]
            state[start] = 1
            path.append(start)
            while stack:
                node, i = stack[-1]
                if i < len(graph[node]):
                    stack[-1] = (node, i + 1)
                    nxt = graph[node][i]
                    if state.get(nxt) == 1:
                        cycle = path[path.index(nxt) :] + [nxt]
                        raise self.error(
                            dep_line[nxt],
                            f"dependency cycle: {' -> '.join(cycle)}; remove one of these dependencies",
                        )
                    if not state.get(nxt):
                        state[nxt] = 1
                        path.append(nxt)
                        stack.append((nxt, 0))
                else:
                    state[node] = 2
                    path.pop()
                    stack.pop()


def _join_description(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if not line.strip():
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line.rstrip())
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)


def parse_backlog(text: str, *, source: str = "<backlog>", strict: bool = False,
                  known_stories: Iterable[str] = ()) -> Backlog:
    """Parse backlog Markdown (DESIGN.md §4, ``docs/backlog-format.md``) into a :class:`Backlog`.

    Raises :class:`BacklogError` (``source``, 1-based line, the problem and the fix) for: an
    invalid item ID (``../x``, ``T1:2``), a duplicate ID, a dependency on an item neither in the
    backlog nor in ``known_stories`` (stories of earlier sprints), a
    dependency cycle (named, ``T001 -> T002 -> T001``), a job block that is not valid YAML (the
    line inside the file), not a mapping, without a string ``kind`` or with a duplicate key, an
    unclosed code fence, a job block outside an item, a repeated field label, a non-integer
    priority, an ``**Estimated Time:**`` that is not a duration (the accepted forms are in
    :mod:`oodatcaa.backlog.durations`), a checkbox outside an acceptance-criteria list, a
    malformed inline check (see :func:`~oodatcaa.core.criteria.parse_criterion_line`), or no items.

    What is read but looks unintended is a :class:`BacklogWarning` in ``Backlog.warnings`` (an
    unknown item field, a sprint date that is no date, a complexity without an estimate rule, a
    status ``sprint new`` acts on); with ``strict`` the warnings are raised as one
    :class:`BacklogError` at the first warning's line (see :func:`raise_warnings`).
    """
    backlog = _Parser(text, source, frozenset(known_stories)).parse()
    if strict:
        raise_warnings(backlog)
    return backlog


def raise_warnings(backlog: Backlog) -> None:
    """Raise the backlog's warnings as one :class:`BacklogError` (``--strict``); no warnings, no error.

    The error's line is the first warning's; its message lists every warning with its line.
    """
    warnings = backlog.warnings
    if not warnings:
        return
    first = warnings[0]
    more = "".join(f"; line {w.line}: {w.message}" if w.line is not None else f"; {w.message}" for w in warnings[1:])
    raise BacklogError(backlog.source, first.line,
                       f"{first.message}{more} (warnings are errors under --strict)")


def load_backlog(path: Path | str, *, strict: bool = False, known_stories: Iterable[str] = ()) -> Backlog:
    """Read and parse a backlog file (UTF-8); the error source is the path.

    ``known_stories``: IDs of stories of earlier sprints, which the items may depend on.

    Raises :class:`BacklogError` when the file cannot be read or does not parse, or under
    ``strict`` when it has warnings (:func:`parse_backlog`).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BacklogError(str(path), None, "backlog file not found; check the path") from None
    except UnicodeDecodeError as exc:
        raise BacklogError(str(path), None, f"backlog file is not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise BacklogError(str(path), None, f"cannot read the backlog file: {exc.strerror or exc}") from None
    return parse_backlog(text, source=str(path), strict=strict, known_stories=known_stories)
