"""Negotiator (supervisor): spawns the role agents as child processes and keeps the sprint moving.

It ticks every ``[negotiator] tick_seconds`` and at once when ``SPRINT_QUEUE.json`` changes
(:mod:`oodatcaa.core.wake`); it keeps ``state/agents/negotiator.json`` with a heartbeat so agents
notice when it is gone (:mod:`oodatcaa.core.presence`). Each tick it reclaims stale leases
(expired, or owner process gone), promotes ``planning_complete`` stories to ``ready`` or
``blocked`` and ``blocked`` ones to ``ready`` when their
dependencies are done, restarts agents that died (with backoff, up to ``max_restarts`` each), and
writes a heartbeat to ``SPRINT_LOG.md`` every minute, and after every merge runs the Completion
Detector (the objective's percentage goes into the queue, the heartbeat and ``status``).

The sprint is done when no story is still moving and every exit criterion is met
(:func:`oodatcaa.completion.evaluate_exit_criteria`, on the trunk): it is then closed by
:func:`oodatcaa.closing.complete_sprint` (retrospective, archive, ``sprint-<N>-complete``) and the
Negotiator exits 0. Stories left with a person do not hold a sprint open; an exit criterion that is
not met does. When nothing can move and an exit criterion is unmet, or an agent keeps dying, it
exits non-zero with what a person must do.

When the only work left waits for a person — stories in ``needs_manual``, stories awaiting a
person's approval, and the stories blocked behind them (:func:`oodatcaa.person.waiting_for_person`)
— it says so at once (its output and SPRINT_LOG.md: each waiting story, why, who is blocked behind
it, and the command that resolves it), then waits for that command: any change to the queue resumes
the sprint; after ``[negotiator] person_wait_minutes`` without one it exits
:data:`EXIT_PERSON_WAIT` (8) with the same list. A sprint whose objective is already met does not
wait: it stops stuck (3) as before, for ``run --until-objective`` to close it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from oodatcaa.closing import complete_sprint
from oodatcaa.completion import briefs, detect_completion, evaluate_exit_criteria
from oodatcaa.core import lifecycle
from oodatcaa.core.config import AGENT_ROLES, EstimatesSection
from oodatcaa.core.errors import WorkspaceError
from oodatcaa.core.eventlog import LogEntry
from oodatcaa.core.leases import reclaim_stale
from oodatcaa.core.models import Estimate, Queue, Task
from oodatcaa.core.objective import CriterionState, sprint_exit_ready, stories_still_moving
from oodatcaa.core.presence import SUPERVISOR_ENV, NegotiatorPresence, presence_path
from oodatcaa.core.rotation import rotate_log
from oodatcaa.core.statuses import SprintStatus, TaskStatus
from oodatcaa.core.store import Transaction
from oodatcaa.core.wake import FileWatch
from oodatcaa.gitops import GitRepo
from oodatcaa.person import Waiting, awaiting_approval, person_view, waiting_for_person, waiting_text
from oodatcaa.processes import (
    EXIT_UNKNOWN,
    AdoptedProcess,
    AgentProcessLike,
    adopt_agents,
    log_file,
    pid_file,
    spawn_agent,
    stopped_on_purpose,
)
from oodatcaa.roles.base import AgentContext

S = TaskStatus
EXIT_OK, EXIT_STUCK, EXIT_AGENT_DIED, EXIT_STOPPED, EXIT_TIMEOUT = 0, 3, 4, 5, 6
#: Only work waiting for a person was left, and nobody acted within ``[negotiator] person_wait_minutes``.
EXIT_PERSON_WAIT = 8


#: Seconds between the exit-criteria evaluations kept in the queue for views while stories merge.
EXIT_REFRESH_SECONDS = 30.0


@dataclass
class AgentProcess:
    """One spawned agent: its role, owner name, process and restart history."""

    role: str
    owner: str
    process: AgentProcessLike | None = None
    restarts: int = 0
    next_start: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    log_path: Path | None = None


def promote(tx: Transaction) -> list[str]:
    """``planning_complete -> ready|blocked``; ``blocked -> ready`` once dependencies are done.

    The Negotiator's name for :func:`oodatcaa.core.lifecycle.unblock_ready`.
    """
    return lifecycle.unblock_ready(tx)


def story_estimate(story: Task, rules: EstimatesSection) -> Estimate | None:
    """The story's estimate (minutes), or its complexity's under ``rules`` when the queue has none."""
    return story.estimate if story.estimate is not None else rules.for_complexity(story.complexity)


def sprint_closed(queue: Queue) -> bool:
    """The queue's sprint is no longer running (``completed`` or ``project_complete``)."""
    return queue.sprint is not None and queue.sprint.status != SprintStatus.IN_PROGRESS


def nothing_moves(queue: Queue) -> bool:
    """No item is claimed and no story can progress without a person: time to decide on the sprint."""
    return bool(queue.tasks) and not any(i.lease is not None for i in queue.items()) and not stories_still_moving(
        queue.tasks)


def stuck_reason(queue: Queue) -> str | None:
    """Why no agent can make progress, or ``None`` when some work is still possible."""
    if any(item.lease is not None for item in queue.items()):
        return None
    open_tasks = [t for t in queue.tasks if t.status not in (S.DONE, S.CANCELLED)]
    if not open_tasks:
        return None
    movable = {S.NEEDS_PLAN, S.PLANNING_COMPLETE, S.READY, S.IN_PROGRESS, S.AWAITING_TEST,
               S.NEEDS_ADAPT, S.READY_FOR_INTEGRATOR}
    dead_ends: list[str] = []
    for t in open_tasks:
        if t.status == S.NEEDS_MANUAL:
            dead_ends.append(f"{t.id} needs_manual: {t.manual_reason or t.last_error or 'see its reports'}")
        elif t.status == S.BLOCKED:
            bad = [d for d in t.dependencies if queue.task(d).status in (S.NEEDS_MANUAL, S.CANCELLED)]
            if bad:
                dead_ends.append(f"{t.id} blocked on {', '.join(bad)} (needs_manual or cancelled)")
            else:
                return None
        elif t.status in movable:
            return None
    return "; ".join(dead_ends) if dead_ends else None


class Negotiator:
    """Runs a sprint: ``oodatcaa run``."""

    def __init__(self, ctx: AgentContext, *, max_seconds: float | None = None, python: str | None = None,
                 spawn_agents: bool = True, on_event: Callable[[str], None] | None = None):
        """``spawn_agents=False`` supervises agents started elsewhere (``oodatcaa agents start``): it
        adopts the running agents recorded in ``state/agents/*.pid`` (at start and at every tick, so
        agents started later are watched too) and restarts one that dies exactly as ``run`` restarts
        its own (:meth:`check_agents`: same backoff, same ``max_restarts``), as its own child.

        ``on_event`` receives the lines a person must read at once (what waits for them); the CLI
        prints them. They go to SPRINT_LOG.md either way.
        """
        self.ctx = ctx
        self.on_event = on_event
        self.spawn_agents = spawn_agents
        self.max_seconds = max_seconds
        self.python = python or sys.executable
        self.agents: list[AgentProcess] = []
        self._last_heartbeat = 0.0
        self._last_revision = -1
        self._last_change = time.monotonic()
        self._warned: set[str] = set()
        self._ticks = 0
        self._done_seen: frozenset[str] | None = None
        self._exit_revision = -1
        self._exit_evaluated_at = -EXIT_REFRESH_SECONDS
        self._exit_states: list[CriterionState] = []
        self._person_since: float | None = None  # monotonic time the wait for a person began
        self._person_said: tuple[tuple[str, str], ...] = ()
        self._approval_logged: set[str] = set()

    # -- agents -----------------------------------------------------------------------------
    def plan_agents(self) -> list[AgentProcess]:
        """One process per unit of each role's wip limit (owner names ``builder-1``...)."""
        cfg = self.ctx.config
        out = []
        for role in AGENT_ROLES:
            for n in range(1, cfg.wip_limit(role) + 1):
                owner = f"{role}-{n}"
                out.append(AgentProcess(role, owner, log_path=log_file(self.ctx.ws, owner)))
        return out

    def spawn(self, agent: AgentProcess) -> None:
        agent.process = spawn_agent(self.ctx.ws, agent.role, agent.owner, python=self.python, clock=self.ctx.clock,
                                    env={SUPERVISOR_ENV: str(os.getpid())})
        self.sprint_event("agent", f"started {agent.owner} (pid {agent.process.pid})")

    def adopt(self) -> None:
        """Watch the running agents of ``agents start`` not watched yet (see :func:`adopt_agents`)."""
        known = {a.owner: a for a in self.agents}
        for record in adopt_agents(self.ctx.ws, AGENT_ROLES, {o: a.process for o, a in known.items()}):
            agent = known.get(record.owner)
            if agent is None:
                agent = AgentProcess(record.role, record.owner, log_path=log_file(self.ctx.ws, record.owner))
                self.agents.append(agent)
                self.sprint_event("agent", f"supervising {record.owner} (pid {record.pid}), started by `agents start`")
            agent.process = AdoptedProcess(record)

    def check_agents(self) -> str | None:
        """Restart dead agents with backoff; return a message when one died too often.

        The one supervision path of ``run`` and of the background Negotiator (which first adopts
        agents started meanwhile). An agent whose pid file was removed or replaced — ``agents stop``
        removes it before signalling — was stopped on purpose: it is dropped, not restarted.
        """
        cfg = self.ctx.config.negotiator
        if not self.spawn_agents:
            self.adopt()
        now = time.monotonic()
        for agent in list(self.agents):
            proc = agent.process
            if proc is None:
                if now >= agent.next_start:
                    self.spawn(agent)
                continue
            code = proc.poll()
            if code is None:
                continue
            agent.exit_codes.append(code)
            agent.process = None
            if stopped_on_purpose(self.ctx.ws, agent.owner, proc.pid):
                self.agents.remove(agent)
                self.sprint_event("agent", f"{agent.owner} was stopped (its pid file is gone): not restarted")
                continue
            if code in (0, EXIT_UNKNOWN) and sprint_closed(self.ctx.store.read()):
                continue
            if agent.restarts >= cfg.max_restarts:
                tail = _tail(agent.log_path)
                return (f"agent {agent.owner} died {agent.restarts + 1} times (exit codes {agent.exit_codes}); "
                        f"giving up. Last lines of {agent.log_path}:\n{tail}")
            agent.restarts += 1
            delay = cfg.restart_backoff_seconds * (2 ** (agent.restarts - 1))
            agent.next_start = now + delay
            how = "(exit code unknown: not started by this Negotiator)" if code == EXIT_UNKNOWN else f"with {code}"
            self.sprint_event("agent", f"{agent.owner} exited {how}; restart {agent.restarts} in {delay:.0f} s")
        return None

    def stop_agents(self, grace: float = 20.0) -> None:
        """SIGTERM every agent, wait up to ``grace`` seconds, then SIGKILL what is left."""
        live = [a.process for a in self.agents if a.process is not None and a.process.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for a in self.agents:
            pid_file(self.ctx.ws, a.owner).unlink(missing_ok=True)

    # -- sprint -----------------------------------------------------------------------------
    def sprint_event(self, event: str, what: str) -> None:
        queue_sprint = None
        try:
            queue_sprint = self.ctx.store.read().sprint
        except Exception:
            pass
        sid = queue_sprint.id if queue_sprint else "-"
        self.ctx.sprint_log().append([LogEntry(self.ctx.clock.now(), "negotiator", sid, event, what)])

    def tick(self) -> Queue:
        """One supervision step: reclaim, promote, warn about long holds, rotate logs."""
        store = self.ctx.store
        reclaim_stale(store, look_first=True)  # the lock only when a lease is stale (outbox rows: promote's)
        with store.transaction("negotiator") as tx:
            promote(tx)
            self.warn_long_held(tx)
            self.log_awaiting_approval(tx)
        self._ticks += 1
        if self._ticks % 20 == 1:
            self.rotate_logs()
        return store.peek()  # the tick only reads it

    def warn_long_held(self, tx: Transaction) -> None:
        """One warning entry per lease held longer than twice the high end of its story's estimate.

        The estimate is the story's own (``Task.estimate``: the backlog's ``**Estimated Time:**`` or
        its complexity, fixed at ``sprint new``); a queue written before estimates existed falls back
        on the complexity rules of ``[estimates]``. A story with neither is never warned about.
        """
        for item in tx.queue.items():
            lease = item.lease
            if lease is None or lease.claim_id in self._warned:
                continue
            story = tx.queue.parent(item)
            estimate = story_estimate(story, self.ctx.config.estimates)
            if estimate is None:
                continue
            held = (tx.now - lease.claimed_at).total_seconds() / 60
            if held > 2 * estimate.high_minutes:
                self._warned.add(lease.claim_id)
                tx.log(item.id, "warning", f"held by {lease.owner} for {held:.0f} min, over twice its estimate "
                                           f"({estimate.describe()} for {story.id})")

    def log_awaiting_approval(self, tx: Transaction) -> None:
        """One AGENT_LOG row per story the Integrator leaves for a person's approval (why it is not merged)."""
        for task in tx.queue.tasks:
            if task.id in self._approval_logged or not awaiting_approval(task, self.ctx.config):
                continue
            self._approval_logged.add(task.id)
            tx.log(task.id, "awaiting approval", f"not claimed by the Integrator until a person decides: "
                                                 f"`oodatcaa approve {task.id}` or `oodatcaa reject {task.id} --reason TEXT`")

    def rotate_logs(self) -> list[str]:
        """Rotate AGENT_LOG.md and SPRINT_LOG.md into the sprint's archive when over the limit."""
        ws = self.ctx.ws
        sprint = self.ctx.store.read().sprint
        if sprint is None:
            return []
        done = []
        for log in (self.ctx.store.log, self.ctx.sprint_log()):
            result = rotate_log(log, ws.sprint_archive_dir(sprint.number))
            if result.archive is not None:
                done.append(result.describe())
                self.sprint_event("log rotated", result.describe())
        return done

    def detect_completion(self, queue: Queue) -> None:
        """The Completion Detector after every merge: when the set of done stories changed, evaluate
        the objective on the trunk and record its snapshot in the queue (and the SPRINT_LOG)."""
        done = frozenset(t.id for t in queue.tasks if t.status == S.DONE)
        if done == self._done_seen:
            return
        self._done_seen = done
        git = GitRepo.for_workspace(self.ctx.ws, "negotiator", trunk=self.ctx.config.git.trunk)
        snapshot, _report = detect_completion(self.ctx.ws, self.ctx.clock.now(), git=git, queue=queue)
        with self.ctx.store.transaction("negotiator") as tx:
            tx.queue.objective = snapshot
        self.sprint_event("completion", snapshot.describe())
        # each evaluation reads every story's merge from git: after every merge of a 100-story sprint
        # that is quadratic, so the board's copy is refreshed at most every EXIT_REFRESH_SECONDS here
        # (try_close evaluates whenever the queue changed and nothing moves)
        if time.monotonic() - self._exit_evaluated_at >= EXIT_REFRESH_SECONDS:
            self.evaluate_exit(self.ctx.store.peek(), git)

    def evaluate_exit(self, queue: Queue, git: GitRepo) -> list[CriterionState]:
        """Evaluate the sprint's exit criteria on the trunk and keep their states in the queue (for ``watch``).

        Written only when a state changed, so re-evaluating a settled sprint writes nothing; the
        revision written is remembered, so :meth:`try_close` does not evaluate the same queue again.
        """
        states = evaluate_exit_criteria(self.ctx.ws, queue, git=git)
        self._exit_states, self._exit_revision = states, queue.revision
        self._exit_evaluated_at = time.monotonic()
        kept = briefs(states)
        if queue.sprint is not None and kept != queue.sprint.exit_states:
            with self.ctx.store.transaction("negotiator") as tx:
                if tx.queue.sprint is not None:
                    tx.queue.sprint.exit_states, tx.queue.sprint.exit_checked_at = kept, self.ctx.clock.now()
            self._exit_revision = tx.queue.revision
        return states

    def try_close(self, queue: Queue) -> tuple[int, str] | None:
        """Nothing moves: close the sprint when its exit criteria are met, else say it is stuck.

        The exit criteria are evaluated once per queue revision (a check may run commands).
        Returns the exit code and message, or ``None`` to keep waiting (the stuck grace period).
        """
        if queue.revision != self._exit_revision:
            self.evaluate_exit(queue, GitRepo.for_workspace(self.ctx.ws, "negotiator", trunk=self.ctx.config.git.trunk))
        states = self._exit_states
        if sprint_exit_ready(states, queue.tasks):
            self.stop_agents()
            closed = complete_sprint(self.ctx.ws, actor="negotiator", clock=self.ctx.clock, exit_states=states)
            return EXIT_OK, closed.describe()
        problems = [f"{s.id} {s.state}: {s.text} — {s.reason}" for s in states if s.state != "met"]
        waiting = waiting_for_person(queue, self.ctx.config)
        if waiting and not objective_met(queue):
            return self.wait_for_person(waiting, problems)
        if time.monotonic() - self._last_change <= 3 * self.ctx.config.negotiator.tick_seconds:
            return None
        stories = stuck_reason(queue)
        if stories:
            problems.append(stories)
        problems += [w.describe() for w in waiting if w.awaiting_approval]
        return EXIT_STUCK, ("sprint stuck, a person is needed: " + "; ".join(problems)
                            + ". Fix it and `oodatcaa run` again, or close the sprint as it is with "
                              "`oodatcaa sprint complete --force`")

    def wait_for_person(self, waiting: list[Waiting], problems: list[str]) -> tuple[int, str] | None:
        """Only a person can move the sprint on: say so at once (output, SPRINT_LOG.md), then wait.

        Announced again whenever the set of waiting stories changes. Returns ``None`` while waiting,
        :data:`EXIT_PERSON_WAIT` with the same list once ``[negotiator] person_wait_minutes`` pass
        without anyone acting (``problems``: the unmet exit criteria, named in that message too); any
        change to the queue ends the wait (:meth:`run` resets it).
        """
        now = time.monotonic()
        if self._person_since is None:
            self._person_since = now
        text = waiting_text(waiting)
        key = tuple((w.task_id, w.status) for w in waiting)
        if key != self._person_said:
            self._person_said = key
            self.sprint_event("waiting for a person", text)
            if self.on_event is not None:
                self.on_event(text)
        minutes = self.ctx.config.negotiator.person_wait_minutes
        if now - self._person_since > minutes * 60:
            unmet = f"; unmet exit criteria: {'; '.join(problems)}" if problems else ""
            return EXIT_PERSON_WAIT, (f"nobody acted in {minutes:g} min ([negotiator] person_wait_minutes); {text}{unmet}. "
                                      "Act on them, then `oodatcaa run` again, or close the sprint as it is with "
                                      "`oodatcaa sprint complete --force`")
        return None

    def preflight(self) -> None:
        """Refuse to start on a checkout the Integrator could not merge into.

        Raises :class:`WorkspaceError` naming the setting when ``[git] trunk`` names no branch,
        naming the files when the trunk has uncommitted changes to tracked files that oodatcaa did
        not make (:meth:`GitRepo.foreign_changes`), or when another branch is checked out.
        """
        ws = self.ctx.ws
        git = GitRepo.for_workspace(ws, "negotiator", trunk=self.ctx.config.git.trunk)
        git.require_trunk(ws.config_path)
        branch = git.current_branch()
        if branch != git.trunk:
            raise WorkspaceError(f"{ws.root}: {'branch ' + repr(branch) if branch else 'a detached HEAD'} is checked "
                                 f"out; the Integrator merges into the trunk {git.trunk!r} "
                                 f"(fix: `git checkout {git.trunk}`, or set [git] trunk in {ws.config_path})")
        dirty = git.foreign_changes()
        if dirty:
            raise WorkspaceError(f"{ws.root}: {git.trunk} has uncommitted changes in {', '.join(dirty[:10])}; "
                                 "commit or stash them before `oodatcaa run` (nothing was changed)")

    def run(self) -> tuple[int, str]:
        """Supervise until the sprint completes, is stuck, an agent keeps dying, or time runs out."""
        cfg = self.ctx.config.negotiator
        start = time.monotonic()
        queue = self.ctx.store.read()
        if queue.sprint is None:
            return EXIT_STUCK, "no sprint in the queue; run `oodatcaa sprint new --backlog FILE`"
        if sprint_closed(queue):
            tag = f"sprint-{queue.sprint.number}-complete"
            if queue.sprint.status == SprintStatus.COMPLETED and not GitRepo.for_workspace(
                    self.ctx.ws, "negotiator", trunk=self.ctx.config.git.trunk).tag_exists(tag):
                return EXIT_OK, complete_sprint(self.ctx.ws, actor="negotiator", clock=self.ctx.clock).describe()
            return EXIT_OK, f"{queue.sprint.id} is already {queue.sprint.status.value}"
        self.preflight()
        self.sprint_event("run", f"negotiator started (pid {os.getpid()})")
        self.agents = self.plan_agents() if self.spawn_agents else []
        code, message = EXIT_OK, ""
        # agents exit when this file says the run ended or its heartbeat stops (core/presence.py)
        presence = NegotiatorPresence(presence_path(self.ctx.ws), clock=self.ctx.clock,
                                      interval=min(30.0, self.ctx.config.agents.negotiator_timeout_seconds / 4))
        presence.start()
        # a tick at the latest every tick_seconds (reclaiming expired leases, restarting agents), and
        # at once when an agent or a person changes the queue (a plan done, a story approved)
        watch = FileWatch(self.ctx.store.path, on_fallback=lambda reason: self.sprint_event(
            "stat fallback", f"waiting on the queue by stat every 50 ms (no file events: {reason})"))
        try:
            while True:
                if self.ctx.stop.is_set():
                    code, message = EXIT_STOPPED, "stopped by signal"
                    break
                queue = self.tick()
                if queue.revision != self._last_revision:
                    self._last_revision, self._last_change = queue.revision, time.monotonic()
                    self._person_since = None  # a person acted (or work moved): the wait starts again
                self.detect_completion(queue)
                # a story awaiting approval moves only when a person acts: settled, like needs_manual
                if nothing_moves(person_view(queue, self.ctx.config)):
                    outcome = self.try_close(queue)
                    if outcome is not None:
                        code, message = outcome
                        break
                else:
                    self._person_since, self._person_said = None, ()
                died = self.check_agents()
                if died:
                    code, message = EXIT_AGENT_DIED, died
                    break
                if self._person_since is None and time.monotonic() - self._last_change > cfg.idle_timeout_seconds \
                        and not any(i.lease for i in queue.items()):
                    code, message = EXIT_STUCK, f"sprint stuck: no progress for {cfg.idle_timeout_seconds:.0f} s"
                    break
                if self.max_seconds is not None and time.monotonic() - start > self.max_seconds:
                    code, message = EXIT_TIMEOUT, f"time limit of {self.max_seconds:.0f} s reached"
                    break
                if time.monotonic() - self._last_heartbeat > 60:
                    self._last_heartbeat = time.monotonic()
                    beat = heartbeat_text(queue, self.ctx.clock.now(), self.ctx.config.estimates)
                    if self._person_since is not None:  # say what the sprint waits on, not only the counts
                        waited = (time.monotonic() - self._person_since) / 60
                        beat += (f"; waiting for a person ({waited:.0f} of {cfg.person_wait_minutes:g} min): "
                                 + ", ".join(w.task_id for w in waiting_for_person(queue, self.ctx.config)))
                    self.sprint_event("heartbeat", beat)
                watch.wait(cfg.tick_seconds, self.ctx.stop)
        finally:
            watch.close()
            self.stop_agents()
            presence.end(code, message)
            if code != EXIT_OK:
                self.sprint_event("run ended", f"exit {code}: {message}"[:500])
        return code, message


def objective_met(queue: Queue) -> bool:
    """The Completion Detector's last snapshot says every success criterion is met.

    A sprint stuck on a person's work then does not wait for them: it stops stuck (exit 3) at once,
    and ``run --until-objective`` closes it as it is and completes the project.
    """
    snap = queue.objective
    return snap is not None and snap.error is None and snap.total > 0 and snap.met == snap.total


def _counts(queue: Queue) -> str:
    stories = queue.counters["stories"]
    return ", ".join(f"{k}={v}" for k, v in stories.items())


#: Story statuses in which no work is under way: not counted as running in the heartbeat.
_NOT_RUNNING = frozenset({S.NEEDS_PLAN, S.BLOCKED, S.NEEDS_MANUAL, S.DONE, S.CANCELLED})


def heartbeat_text(queue: Queue, now: datetime, rules: EstimatesSection) -> str:
    """The SPRINT_LOG heartbeat: story counts, then elapsed against estimate per running story.

    ``needs_plan=1, in_progress=1; T004 in_progress 35 min of 120-180 min; objective 50.0 % (2/4 met)``
    (the last part once the Completion Detector has run). Elapsed minutes count
    from the story's first claim (``Task.started_at``); a story waiting (``needs_plan``,
    ``blocked``), with a person (``needs_manual``) or closed is not running.
    """
    running = []
    for task in queue.tasks:
        if task.status in _NOT_RUNNING or task.started_at is None:
            continue
        elapsed = max(0.0, (now - task.started_at).total_seconds() / 60)
        estimate = story_estimate(task, rules)
        against = f"of {estimate.describe()}" if estimate is not None else "(no estimate)"
        running.append(f"{task.id} {task.status.value} {elapsed:.0f} min {against}")
    objective = f"; {queue.objective.describe()}" if queue.objective is not None else ""
    return _counts(queue) + ("; " + "; ".join(running) if running else "") + objective


def _tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
