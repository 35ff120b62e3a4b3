"""``oodatcaa`` command line: a thin layer over the library (the core never imports it).

Output rules: text that comes from files (titles, log lines, error messages, paths) is printed
literally, never as rich markup (:func:`say`, :func:`warn`, and :class:`~rich.text.Text` cells in
:mod:`oodatcaa.cli.render`); machine-readable output (``--json``) bypasses rich entirely, so the
terminal width never changes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from oodatcaa import __version__
from oodatcaa.core.errors import OodatcaaError
from oodatcaa.core.statuses import AGENT_ROLES, PROCESS_ROLES, TaskStatus
from oodatcaa.core.workspace import Workspace, find_workspace

if TYPE_CHECKING:
    from oodatcaa.core.config import Config
    from oodatcaa.core.models import Task
    from oodatcaa.core.store import QueueStore
    from oodatcaa.person import Person

#: Roles that write reports and claim items (``report --role``).
ROLE_CHOICES: tuple[str, ...] = tuple(r.value for r in AGENT_ROLES)
#: Roles that run as supervised processes (``agent ROLE``, ``agents start ROLE``).
SUPERVISED_ROLES: tuple[str, ...] = tuple(r.value for r in PROCESS_ROLES)

# Replaced by fresh ones at every main() call (see _new_consoles).
console = Console()
err_console = Console(stderr=True)


def _new_consoles() -> None:
    """Make this invocation's consoles.

    rich reads ``COLUMNS`` when a console is made (and fixes its width from it), so consoles made
    at import time would keep the environment of the import; made per call, ``COLUMNS=200 oodatcaa
    status | less`` is 200 wide. Without ``COLUMNS`` and without a terminal rich uses 80 columns.
    """
    global console, err_console
    console = Console()
    err_console = Console(stderr=True)


def say(text: str) -> None:
    """Print ``text`` on stdout literally (never as markup), unwrapped (long lines stay copyable)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    """Print ``text`` on stderr literally, unwrapped (paths and messages stay copyable)."""
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


def _ws(args: argparse.Namespace) -> Workspace:
    return find_workspace(Path(args.workspace) if args.workspace else None)


def cmd_init(args: argparse.Namespace) -> int:
    from oodatcaa.sprints import init_workspace

    base = Path(args.workspace) if args.workspace else Path.cwd()
    ws = init_workspace(base / args.path, force=args.force)
    say(f"workspace ready: {ws.dir}")
    say("next: write a backlog (docs/backlog-format.md), then `oodatcaa sprint new --backlog FILE`")
    return 0


def cmd_sprint_new(args: argparse.Namespace) -> int:
    from oodatcaa.sprints import new_sprint

    ws = _ws(args)
    # backlog text is data: warn() prints it literally, never as markup
    sprint = new_sprint(ws, Path(args.backlog), force=args.force, strict=args.strict, carry_over=args.carry_over,
                        on_warning=lambda w: warn(f"warning: {w}"))
    say(f"{sprint.id} initiated (Sprint {sprint.number}); run `oodatcaa run` to start the agents")
    return 0


def cmd_sprint_complete(args: argparse.Namespace) -> int:
    """Close the current sprint: retrospective, archive, SPRINT_GOAL history, tag ``sprint-<N>-complete``."""
    from oodatcaa.closing import complete_sprint

    ws = _ws(args)
    closed = complete_sprint(ws, force=args.force, actor="sprint_planner")
    say(closed.describe())
    for state in closed.exit_states:
        say(f"  {state.id} {state.state}: {state.text}")
    say(f"retrospective: {ws.relative(closed.retrospective)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from oodatcaa.roles.base import AgentContext, install_signal_handlers
    from oodatcaa.roles.negotiator import Negotiator

    ws = _ws(args)
    ctx = AgentContext.open(ws, "negotiator")
    install_signal_handlers(ctx)
    if args.until_objective:
        from oodatcaa.roadmap import run_until_objective

        outcome = run_until_objective(ws, lambda left: Negotiator(ctx, max_seconds=left, on_event=say).run(),
                                      carry_over=args.carry_over, max_seconds=args.max_seconds, on_event=say)
        code, message = outcome.code, outcome.message
    else:
        code, message = Negotiator(ctx, max_seconds=args.max_seconds, on_event=say).run()
    if code == 0:
        console.print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        warn("error: " + message)
    return code


def cmd_agent(args: argparse.Namespace) -> int:
    from oodatcaa.roles import AGENT_CLASSES
    from oodatcaa.roles.base import AgentContext, install_signal_handlers

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.owner} %(levelname)s %(message)s")
    ctx = AgentContext.open(_ws(args), args.owner)
    install_signal_handlers(ctx)
    if args.role == "negotiator":
        from oodatcaa.roles.negotiator import Negotiator

        agent_log = logging.getLogger("oodatcaa.agent")
        code, message = Negotiator(ctx, spawn_agents=False, on_event=lambda text: agent_log.warning("%s", text)).run()
        agent_log.info("negotiator exit %s: %s", code, message)
        return code
    agent = AGENT_CLASSES[args.role](ctx)
    return agent.run(once=args.once)


def cmd_status(args: argparse.Namespace) -> int:
    from oodatcaa.cli.render import status_rows, status_table
    from oodatcaa.core.config import Config, load_config
    from oodatcaa.core.errors import ConfigError
    from oodatcaa.core.store import QueueStore
    from oodatcaa.person import awaiting_approval, waiting_for_person

    ws = _ws(args)
    queue = QueueStore.for_workspace(ws).read()
    try:
        config = load_config(ws.config_path, ws.agents_dir)
    except ConfigError as exc:  # the queue is still worth showing; approvals fall back on the backlog's
        warn(f"warning: {exc}; [integrator] require_approval read as false")
        config = Config()
    waiting = waiting_for_person(queue, config)
    if args.json:
        rows = status_rows(queue)
        for row in rows:
            if row["kind"] == "story":
                task = queue.task(row["id"])
                row["awaiting_approval"] = awaiting_approval(task, config)
                row["approval"] = task.approval.model_dump(mode="json") if task.approval else None
        # plain print, not rich: JSON must not depend on the terminal width
        data = {
            "sprint": queue.sprint.model_dump(mode="json") if queue.sprint else None,
            "objective": queue.objective.model_dump(mode="json") if queue.objective else None,
            "counters": queue.counters,
            "revision": queue.revision,
            "tasks": rows,
            "waiting_for_person": [w.to_json() for w in waiting],
        }
        print(json.dumps(data, indent=2))
    else:
        console.print(status_table(queue))
        if waiting:
            say("Waiting for a person:")
            for w in waiting:
                say("  " + w.describe())
        if queue.objective is not None:
            text = queue.objective.describe()
            say(text[:1].upper() + text[1:]
                + (f" at {queue.objective.trunk_commit[:12]}" if queue.objective.trunk_commit else ""))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """``watch [--once]``: the board (src/oodatcaa/board); ``--once`` prints one frame and exits 0."""
    from oodatcaa.board.live import watch

    return watch(_ws(args), console, once=args.once)


def _person_context(args: argparse.Namespace) -> tuple[Workspace, Config, QueueStore, Person]:
    """The workspace, its config, its queue store and the person acting (git user.name / user.email)."""
    from oodatcaa.core.config import load_config
    from oodatcaa.person import open_store, person_of

    ws = _ws(args)
    config = load_config(ws.config_path, ws.agents_dir)
    return ws, config, open_store(ws), person_of(ws, config)


def _discuss(args: argparse.Namespace, task: Task, decision: str, person: Person, reason: str) -> None:
    """A person's decision goes into SPRINT_DISCUSS.md, one entry each (the original's decision record)."""
    from oodatcaa.checkrecord import append_person_decision

    append_person_decision(_ws(args), task_id=task.id, title=task.title, decision=decision, who=person.who(),
                           reason=reason, outcome=task.status.value)


def cmd_approve(args: argparse.Namespace) -> int:
    """Approve an accepted story awaiting approval: the Integrator merges it next."""
    from oodatcaa.person import approval_text, approve

    _, config, store, person = _person_context(args)
    task = approve(store, args.task, person, config, note=args.note or "")
    _discuss(args, task, "approve", person, args.note or "")
    say(f"{task.id} approved: {approval_text(task)}; the Integrator merges it on its next look at the queue")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    """Reject an accepted story at review: needs_adapt (failure kind ``rejected``) or needs_manual."""
    from oodatcaa.person import reject

    _, config, store, person = _person_context(args)
    task = reject(store, args.task, person, config, args.reason, to_person=args.to_person)
    _discuss(args, task, "reject" + (" --to-person" if args.to_person else ""), person, args.reason)
    say(f"{task.id} rejected by {person.who()} -> {task.status.value}: {args.reason}")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Settle a needs_manual story: --retry, --replan, --cancel or --accept."""
    from oodatcaa.gitops import GitRepo
    from oodatcaa.person import RESOLVE_ACTIONS, resolve

    ws, config, store, person = _person_context(args)
    action = next(a for a in RESOLVE_ACTIONS if getattr(args, a))
    git = GitRepo.for_workspace(ws, "person", trunk=config.git.trunk) if action == "replan" else None
    outcome = resolve(store, args.task, action, person, reason=args.reason or "", git=git)
    _discuss(args, outcome.task, f"resolve --{action}", person, args.reason or "")
    say(outcome.message)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from oodatcaa.compare import render
    from oodatcaa.core.store import QueueStore

    ws = _ws(args)
    out = render(ws, QueueStore.for_workspace(ws).read(), args)
    if isinstance(out, str):
        print(out, end="")  # plain print: JSON, CSV and Markdown must not depend on the terminal width
    else:
        console.print(out)
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from oodatcaa.core.clock import Clock
    from oodatcaa.core.eventlog import EventLog, entry_json, filter_entries, parse_since
    from oodatcaa.core.ids import validate_task_id

    ws = _ws(args)
    if args.action == "rotate":
        return _rotate(ws, args.dry_run)
    try:
        since = parse_since(args.since, Clock().now()) if args.since else None
    except ValueError as exc:
        raise OodatcaaError(str(exc)) from None
    entries = EventLog(ws.agent_log_path, ws.lock_path("agent_log")).entries()
    if args.task:
        from oodatcaa.archive import agent_log_files

        validate_task_id(args.task)
        # a task of an earlier sprint: its rows moved into work/archive/sprint_<N>/ when that sprint closed
        entries = [e for path in agent_log_files(ws) if path.exists()
                   for e in EventLog(path, ws.lock_path("agent_log")).entries()]
    entries = filter_entries(entries, task=args.task, role=args.role, since=since, status=args.status,
                             grep=args.grep)
    if args.tail:
        entries = entries[-args.tail:]
    if args.json:
        print(json.dumps([entry_json(e) for e in entries], indent=2))
        return 0
    from oodatcaa.cli.render import log_table

    console.print(log_table(entries))
    return 0


def _rotate(ws: Workspace, dry_run: bool) -> int:
    from oodatcaa.core.eventlog import SPRINT_LOG_HEADER, EventLog
    from oodatcaa.core.rotation import rotate_log
    from oodatcaa.core.store import QueueStore

    sprint = QueueStore.for_workspace(ws).read().sprint
    number = sprint.number if sprint else 0
    for log in (EventLog(ws.agent_log_path, ws.lock_path("agent_log")),
                EventLog(ws.sprint_log_path, ws.lock_path("sprint_log"), header=SPRINT_LOG_HEADER)):
        say(rotate_log(log, ws.sprint_archive_dir(number), dry_run=dry_run).describe())
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    from oodatcaa.core.invariants import validate_queue_file
    from oodatcaa.core.store import QueueStore

    if args.queue_cmd == "validate":
        path = Path(args.file) if args.file else _ws(args).queue_path
        violations = validate_queue_file(path)  # reads only: the file is never changed
        for v in violations:
            warn(f"{path}: {v}")
        if violations:
            warn(f"{len(violations)} problem(s) in {path}")
            return 1
        say(f"{path}: valid (schema and invariants)")
        return 0
    store = QueueStore.for_workspace(_ws(args))
    if args.queue_cmd == "history":
        from datetime import UTC, datetime

        from oodatcaa.cli.render import history_table

        versions = [(int(p.stem.split(".r")[1]),
                     datetime.fromtimestamp(p.stat().st_mtime, UTC).strftime("%Y-%m-%d %H:%M:%S"), p)
                    for p in store.history()]
        console.print(history_table(versions))
        return 0
    restored = store.restore(args.revision, actor=os.environ.get("USER", "person"))
    say(f"revision {args.revision} restored; the queue is now at revision {restored.revision}")
    return 0


def cmd_agents(args: argparse.Namespace) -> int:
    from oodatcaa.core.config import load_config
    from oodatcaa.processes import next_owner, read_agents, spawn_agent, stop_agent

    ws = _ws(args)
    roles = args.roles or list(SUPERVISED_ROLES)
    for role in roles:
        if role not in SUPERVISED_ROLES:
            raise OodatcaaError(f"unknown role {role!r}; choose from {', '.join(SUPERVISED_ROLES)}")
    records = read_agents(ws)
    if args.agents_cmd == "status":
        return _agents_status(ws, records, args.json)
    if args.agents_cmd in ("stop", "restart"):
        for rec in records:
            if rec.role in roles:
                say(f"{rec.owner} (pid {rec.pid}): {stop_agent(ws, rec, args.grace)}")
    if args.agents_cmd in ("start", "restart"):
        config = load_config(ws.config_path, ws.agents_dir)
        for role in roles:
            running = [r for r in read_agents(ws) if r.role == role and r.is_running()]
            wanted = args.count or (1 if role == "negotiator" else config.wip_limit(role))
            for _ in range(max(0, wanted - len(running))):
                owner = next_owner(ws, role)
                proc = spawn_agent(ws, role, owner, detach=True)
                say(f"started {owner} (pid {proc.pid}); log {ws.agents_state_dir / (owner + '.log')}")
    return 0


def _agents_status(ws: Workspace, records: list, as_json: bool) -> int:
    from oodatcaa.cli.render import agents_table
    from oodatcaa.core.store import QueueStore

    held: dict[str, tuple[str, str]] = {}
    try:
        for item in QueueStore.for_workspace(ws).read().items():
            if item.lease:
                held[item.lease.owner] = (item.id, item.lease.heartbeat_at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    except OodatcaaError:
        pass
    rows = [{"owner": r.owner, "role": r.role, "pid": r.pid, "alive": r.is_running(), "started_at": r.started_at,
             "task": held.get(r.owner, (None, None))[0], "last_heartbeat": held.get(r.owner, (None, None))[1],
             "log": r.log} for r in records]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        say(f"no agents recorded in {ws.agents_state_dir} (start some with `oodatcaa agents start`)")
        return 0
    console.print(agents_table(rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from oodatcaa.cli.render import print_markdown
    from oodatcaa.core.ids import validate_story_id
    from oodatcaa.reports import reports_for

    ws = _ws(args)
    if args.html is not None:
        return _report_html(ws, args.html, args.sprint)
    if not args.task:
        warn("error: report needs a story ID (e.g. report T001), or --html [FILE] for the sprint's page")
        return 2
    validate_story_id(args.task)
    paths = reports_for(ws, args.task, args.role)
    if not paths:
        warn(f"error: no reports for {args.task}" + (f" from {args.role}" if args.role else ""))
        return 1
    for path in paths:
        print_markdown(console, path.read_text(encoding="utf-8"))
        console.rule()
    return 0


def _report_html(ws: Workspace, target: str, sprint: int | None) -> int:
    """``report --html [FILE] [--sprint N]``: write a sprint's offline HTML page; say its size and render time.

    Without ``--sprint``, the current sprint's queue; with it, the final queue archived at that
    sprint's close (an error naming the sprints there are when it has none).
    """
    from oodatcaa.archive import archived_sprints
    from oodatcaa.core.errors import WorkspaceError
    from oodatcaa.core.store import QueueStore
    from oodatcaa.htmlreport import write_sprint_report

    queue = QueueStore.for_workspace(ws).read() if sprint is None else None
    if sprint is not None:
        archived = {a.number: a.queue for a in archived_sprints(ws)}
        queue = archived.get(sprint)
        current = QueueStore.for_workspace(ws).read() if ws.queue_path.exists() else None
        if queue is None and current is not None and current.sprint and current.sprint.number == sprint:
            queue = current
        if queue is None:
            known = ", ".join(str(n) for n in sorted(archived)) or "none"
            raise WorkspaceError(f"{ws.archive_dir}: no archived queue of sprint {sprint} (archived sprints: {known}; "
                                 "without --sprint the current sprint is reported)")
    assert queue is not None
    path, stats = write_sprint_report(ws, queue, Path(target) if target else None)
    console.print(f"wrote {path} ({stats.size_bytes} bytes, {stats.charts} charts, {stats.seconds:.2f} s)")
    for problem in stats.problems:
        warn(f"warning: {problem}")
    return 0


def cmd_objective(args: argparse.Namespace) -> int:
    """Each success criterion of OBJECTIVE.md with its state and evidence, and the completion percentage.

    Exit 0 when the report was made (whatever the percentage); 2 (an error, naming what to write)
    when the objective is missing, has no success criteria or has a malformed check.
    """
    from oodatcaa.completion import evaluate_objective, format_report

    report = evaluate_objective(_ws(args))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))  # plain print: JSON must not depend on the terminal
        return 0
    for line in format_report(report):
        say(line)
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    """Revert a story's merge on the trunk through the quality gates (:mod:`oodatcaa.revert`); exit 2 when refused."""
    from oodatcaa.revert import revert_story

    record = revert_story(_ws(args), args.task, args.reason)
    say(f"{args.task}: merge {record.reverted_merge[:10]} reverted in {record.commit[:10]} "
        f"(tag {args.task}-reverted) by {record.by}: {record.reason}")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """``tag list`` / ``tag TASK`` / ``tag release vX.Y.Z`` (:mod:`oodatcaa.tagging`); exit 2 when refused."""
    from oodatcaa import tagging
    from oodatcaa.cli.tag import tag_table

    ws = _ws(args)
    if args.what != "release" and args.version is not None:
        raise tagging.TagError(f"unexpected {args.version!r}: only `tag release` takes a version")
    if args.what == "list":
        stories = tagging.list_stories(ws)
        if args.json:
            print(json.dumps([s.to_json() for s in stories], indent=2))  # plain print: JSON is terminal-free
            return 0
        if stories:
            console.print(tag_table(stories))
        else:
            say("no merged stories")
        missing = [s.task.id for s in stories if s.tag_commit is None]
        if missing:
            warn(f"merged without a tag: {', '.join(missing)} (fix: oodatcaa tag TASK)")
        return 0
    if args.what == "release":
        if args.version is None:
            raise tagging.TagError("tag release needs a version: oodatcaa tag release vX.Y.Z [--notes TEXT]")
        tag, commit = tagging.release(ws, args.version, notes=args.notes)
        say(f"released {tag}: CHANGELOG section committed in {commit[:10]}, annotated tag {tag}")
        return 0
    tag, commit = tagging.tag_story(ws, args.what)
    say(f"tagged {tag} at {commit[:10]}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from oodatcaa.cli.render import status_table, task_figures
    from oodatcaa.completion import format_report
    from oodatcaa.demo import run_demo

    outcome = run_demo(Path(args.path), model=args.model, max_seconds=args.max_seconds, progress=say)
    console.print(status_table(outcome.queue))
    for line in task_figures(outcome.queue):
        console.print(line)
    if outcome.report is not None:
        say("")
        for line in format_report(outcome.report):
            say(line)
    for run in outcome.sprints:
        say(f"{run.sprint_id}: {run.seconds:.0f} s (exit {run.code})")
    verdict = f"in {outcome.wall_seconds:.0f} s: {outcome.message}"
    if outcome.code == 0:
        say(f"demo completed {verdict}")
    else:
        warn(f"demo FAILED {verdict}")
    say(f"inspect: cd {outcome.root} && git log --graph --oneline --all && git tag -n9 && oodatcaa status")
    return outcome.code


def cmd_model(args: argparse.Namespace) -> int:
    from oodatcaa.mlmodels.default_model import default_model_info, ensure_default_model

    if args.model_cmd == "prepare":
        path = ensure_default_model()
        say(f"default model ready: {path}")
    else:
        print(json.dumps(default_model_info(), indent=2, default=str))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from oodatcaa.core.models import queue_json_schema

    print(json.dumps(queue_json_schema(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``oodatcaa`` argument parser: one sub-parser per command, each bound to its ``cmd_*``."""
    parser = argparse.ArgumentParser(
        prog="oodatcaa",
        description="Multi-agent orchestrator for the OODATCAA loop: a backlog of MLX experiments goes in; "
        "planned, built, tested, merged and tagged results come out, every step in git.",
    )
    parser.add_argument("--version", action="version", version=f"oodatcaa {__version__}")
    parser.add_argument("-C", "--workspace", metavar="DIR", help="repository containing .oodatcaa/ (default: cwd)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_loop_commands(sub)
    _add_view_commands(sub)
    _add_person_commands(sub)
    _add_operation_commands(sub)
    return parser


def _add_loop_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """init, sprint new, run, agent: what runs the loop."""
    p = sub.add_parser("init", help="create the .oodatcaa/ workspace in a git repository; the current branch "
                                   "becomes the trunk ([git] trunk)")
    p.add_argument("path", nargs="?", default=".", help="a directory inside the git repository (default: .)")
    p.add_argument("--force", action="store_true",
                   help="add what is missing to an existing workspace (existing files are kept)")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("sprint", help="sprint commands")
    sprint_sub = p.add_subparsers(dest="sprint_cmd", required=True, metavar="SUBCOMMAND")
    q = sprint_sub.add_parser("new", help="start a sprint from a Markdown backlog (every item needs_plan)")
    q.add_argument("--backlog", required=True, metavar="FILE", help="backlog file (docs/backlog-format.md)")
    q.add_argument("--force", action="store_true", help="replace a sprint that is still running")
    q.add_argument("--strict", action="store_true",
                   help="refuse the backlog when it has warnings (unknown fields, ...) instead of printing them")
    q.add_argument("--carry-over", action="store_true",
                   help="bring the previous sprint's unfinished stories into the new one (planned again)")
    q.set_defaults(func=cmd_sprint_new)
    q = sprint_sub.add_parser("complete", help="close the sprint: retrospective, archive, history, tag "
                                               "sprint-<N>-complete (refused while items are claimed)")
    q.add_argument("--force", action="store_true",
                   help="complete even though exit criteria are unmet or stories unfinished (the retrospective says which)")
    q.set_defaults(func=cmd_sprint_complete)

    p = sub.add_parser("run", help="start the Negotiator and the role agents; exits 0 when the sprint completes "
                                  "(its exit criteria met)")
    p.add_argument("--max-seconds", type=float, default=None, help="give up after this many seconds (exit 6)")
    p.add_argument("--until-objective", action="store_true",
                   help="then start the next backlog of .oodatcaa/work/backlogs/ and so on, until every success "
                        "criterion of OBJECTIVE.md is met (exit 0, tag project-complete) or the roadmap runs out (exit 7)")
    p.add_argument("--carry-over", action="store_true",
                   help="with --until-objective: carry unfinished stories into each next sprint")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("agent", help="run one role agent in the foreground")
    p.add_argument("role", choices=SUPERVISED_ROLES,
                   help="a role; `negotiator` supervises the agents started by `agents start` (restarts one that dies) "
                        "without spawning any itself")
    p.add_argument("--owner", required=True, help="agent name, e.g. builder-A (letters, digits, . _ -)")
    p.add_argument("--once", action="store_true", help="handle at most one item, then exit")
    p.set_defaults(func=cmd_agent)


def _add_view_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """status, log, report: what people read."""
    p = sub.add_parser("status", help="table of tasks: status, owner, branch, last metric")
    p.add_argument("--json", action="store_true", help="print the same data as JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("watch", help="live board of agents, stories, running jobs and the log (reads files only)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts and CI logs)")
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser("log", help="show AGENT_LOG.md entries, or rotate the logs")
    p.add_argument("action", nargs="?", choices=("show", "rotate"), default="show",
                   help="show (default) or rotate: move all but the newest ~450 entries of a log over 1000 lines "
                        "into work/archive/sprint_<N>/")
    p.add_argument("--task", help="only this task (and its subtasks), from the logs of every sprint")
    p.add_argument("--tail", type=int, default=None, help="only the last N entries (after the other filters)")
    p.add_argument("--role", choices=(*ROLE_CHOICES, "negotiator"), help="only this role's entries")
    p.add_argument("--since", metavar="TIME", help="only entries at or after TIME: ISO (2026-11-21T18:40:00Z) "
                                                   "or a span back from now (10m, 2h, 1d)")
    p.add_argument("--status", metavar="STATUS", choices=[s.value for s in TaskStatus],
                   help="only entries moving to STATUS (a task status, e.g. needs_adapt or done)")
    p.add_argument("--grep", metavar="TEXT", help="only entries containing TEXT (case-insensitive)")
    p.add_argument("--json", action="store_true", help="print the entries as a JSON list")
    p.add_argument("--dry-run", action="store_true", help="rotate: say what would move, change nothing")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("report", help="render a task's reports in the terminal, or the sprint's HTML page")
    p.add_argument("task", nargs="?", help="story ID, e.g. T001")
    p.add_argument("--html", nargs="?", const="", default=None, metavar="FILE",
                   help="write the sprint's self-contained offline HTML page (default .oodatcaa/work/reports/sprint_<N>.html)")
    p.add_argument("--sprint", type=int, metavar="N",
                   help="with --html: an earlier sprint, from the final queue archived at its close")
    p.add_argument("--role", choices=ROLE_CHOICES, help="only this role's reports")
    p.set_defaults(func=cmd_report)

    from oodatcaa.compare import add_parser as add_compare

    add_compare(sub, cmd_compare)

    p = sub.add_parser("objective", help="each success criterion of OBJECTIVE.md: met, unmet or needs_manual, with "
                                         "its evidence, and the completion percentage (checked on the trunk)")
    p.add_argument("--json", action="store_true",
                   help='print {"completion_percent": 0-100, "criteria": [{"text", "state", "evidence"}, ...]}')
    p.set_defaults(func=cmd_objective)


def _add_person_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """approve, reject, resolve: a person's decisions, without editing the queue."""
    p = sub.add_parser("approve", help="approve a story awaiting approval (accepted by the Tester; `**Approval:** "
                                       "required` or [integrator] require_approval): the Integrator merges it")
    p.add_argument("task", help="story ID, e.g. T001")
    p.add_argument("--note", default=None, help="a note kept with the approval (AGENT_LOG, report, tag message)")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("reject", help="reject a story awaiting approval: needs_adapt with failure kind `rejected` "
                                      "(the Refiner's turn; no policy adapts a prose reason yet, so it then "
                                      "reaches a person), or needs_manual with --to-person")
    p.add_argument("task", help="story ID, e.g. T001")
    p.add_argument("--reason", required=True, help="why (kept on the story and in AGENT_LOG)")
    p.add_argument("--to-person", action="store_true", help="send it to needs_manual instead of the Refiner")
    p.set_defaults(func=cmd_reject)

    p = sub.add_parser("resolve", help="settle a needs_manual story without editing the queue: retry the failed "
                                       "step, re-plan, cancel, or accept a Tester verdict left to a person")
    p.add_argument("task", help="story ID, e.g. T001")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--retry", action="store_true",
                     help="the failed step back to its claimable status (plan, build, test or merge again); "
                          "adaptation loops used are kept")
    how.add_argument("--replan", action="store_true",
                     help="the Start-Over Gate: branches reset to the baseline tag, subtasks cancelled, "
                          "needs_plan for plan version +1")
    how.add_argument("--cancel", action="store_true", help="cancel the story and its open subtasks (needs --reason)")
    how.add_argument("--accept", action="store_true",
                     help="accept a gray-zone or unverified Tester verdict: ready_for_integrator, counted as "
                          "approved (needs --reason)")
    p.add_argument("--reason", default=None, help="why (required with --cancel and --accept; logged)")
    p.set_defaults(func=cmd_resolve)


def _add_operation_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """queue, agents, demo, model, schema: keeping a workspace healthy."""
    p = sub.add_parser("queue", help="inspect, validate and restore SPRINT_QUEUE.json")
    queue_sub = p.add_subparsers(dest="queue_cmd", required=True, metavar="SUBCOMMAND")
    q = queue_sub.add_parser("validate", help="check schema and invariants; every problem with its location (exit 1)")
    q.add_argument("file", nargs="?", help="a queue file (default: the workspace's)")
    q.set_defaults(func=cmd_queue)
    q = queue_sub.add_parser("history", help="list the kept previous versions")
    q.set_defaults(func=cmd_queue)
    q = queue_sub.add_parser("restore", help="make a kept version current again (works on a corrupt queue)")
    q.add_argument("revision", type=int, help="revision number from `queue history`")
    q.set_defaults(func=cmd_queue)

    p = sub.add_parser("agents", help="run role agents in the background: start, stop, status, restart")
    agents_sub = p.add_subparsers(dest="agents_cmd", required=True, metavar="SUBCOMMAND")
    for name, text in (("start", "start agents (default: every role, up to its wip limit)"),
                       ("stop", "SIGTERM (they hand work back), then SIGKILL after --grace seconds"),
                       ("status", "alive or not, task held, last heartbeat"),
                       ("restart", "stop, then start")):
        q = agents_sub.add_parser(name, help=text)
        q.add_argument("roles", nargs="*", metavar="ROLE",
                       help="planner, builder, tester, refiner, integrator, negotiator (default: all)")
        q.add_argument("--count", type=int, default=None, help="start: agents per role (default: its wip limit)")
        q.add_argument("--grace", type=float, default=30.0, help="stop: seconds to wait before SIGKILL")
        q.add_argument("--json", action="store_true", help="status: print JSON")
        q.set_defaults(func=cmd_agents)

    p = sub.add_parser("revert", help="undo a story's merge on the trunk (git revert -m 1) through the quality "
                                      "gates; CHANGELOG entry under Reverted, tag TASK-reverted, recorded on the story")
    p.add_argument("task", help="the story ID, e.g. T003")
    p.add_argument("--reason", required=True, help="why (goes into the commit, the CHANGELOG and the tag)")
    p.set_defaults(func=cmd_revert)

    from oodatcaa.cli.tag import add_tag_parser

    add_tag_parser(sub, cmd_tag)

    p = sub.add_parser("demo", help="copy the bundled demo roadmap (2 sprints) into a fresh repository at PATH and "
                                   "run it until its objective is met")
    p.add_argument("path", help="where to create the demo repository (replaced if it is an earlier demo)")
    p.add_argument("--model", default=None, help="local mlx-lm model dir instead of the default SmolLM2")
    p.add_argument("--max-seconds", type=float, default=1800, help="give up after this many seconds")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("model", help="the offline default model (SmolLM2-135M-Instruct)")
    p.add_argument("model_cmd", choices=("prepare", "info"), help="prepare: convert and cache it; info: where it is")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("schema", help="print the JSON Schema of SPRINT_QUEUE.json")
    p.set_defaults(func=cmd_schema)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``oodatcaa`` console script; returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    _new_consoles()
    try:
        return int(args.func(args) or 0)
    except OodatcaaError as exc:
        warn(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
