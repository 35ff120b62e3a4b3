"""Workspace quality gates on the merge result (merge-queue semantics), through the real Integrator agent.

Stories here are hand-made feature branches in a real repository (no jobs, no MLX): the queue holds each
story ``ready_for_integrator`` with its builder step on the branch, and ``[[gates]]`` in ``config.toml``
are shell commands, some of them scripts committed on the trunk.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from oodatcaa.core.config import Config, default_config_toml, load_config
from oodatcaa.core.errors import ConfigError
from oodatcaa.core.failures import FailureKind
from oodatcaa.core.statuses import TaskStatus
from oodatcaa.core.store import QueueStore
from oodatcaa.gates import baseline_path, run_gate
from oodatcaa.gitops import GitRepo
from oodatcaa.roles import AGENT_CLASSES
from oodatcaa.roles.base import AgentContext
from support import add_steps, git, sample_queue, store_with, story_branch, workspace

S = TaskStatus


def run_integrator(ws) -> None:
    ctx = AgentContext.open(ws, "integrator-t")
    AGENT_CLASSES["integrator"](ctx).run(once=True, exit_when_complete=False)




def commit_on_main(ws, files: dict[str, str], message: str = "[docs] test: setup") -> str:
    for name, text in files.items():
        (ws.root / name).parent.mkdir(parents=True, exist_ok=True)
        (ws.root / name).write_text(text)
        git(ws.root, "add", name)
    git(ws.root, "commit", "-qm", message)
    return git(ws.root, "rev-parse", "HEAD")


def ready_stories(ws, n: int) -> QueueStore:
    """A queue with stories T001..T00n ready for the Integrator (their step branches must exist)."""
    queue = sample_queue(n)
    for task in queue.tasks:
        add_steps(task, 1, status=S.AWAITING_TEST)
        task.status = S.READY_FOR_INTEGRATOR
        task.subtasks[1].status = S.READY_FOR_INTEGRATOR
        task.subtasks[1].branch = task.subtasks[0].branch
    return store_with(ws, queue)


def add_gates(ws, *blocks: str) -> None:
    with ws.config_path.open("a", encoding="utf-8") as fh:
        for block in blocks:
            fh.write("\n[[gates]]\n" + block.strip() + "\n")
    load_config(ws.config_path, ws.agents_dir)  # still valid
    git(ws.root, "commit", "-qm", "[docs] test: gates", "--", str(ws.config_path))


def gate(name: str, run: str, **extra: object) -> str:
    lines = [f"name = {name!r}".replace("'", '"'), "run = '" + run + "'"]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines)


@pytest.fixture
def ws(tmp_path):
    return workspace(tmp_path)


def task(ws, task_id: str = "T001"):
    return QueueStore.for_workspace(ws).read().task(task_id)


# -- configuration -------------------------------------------------------------------------


def test_default_config_shows_a_commented_gates_example_and_still_parses():
    text = default_config_toml()
    assert "# [[gates]]" in text and '# run = "pytest -q"' in text and '# baseline = "trunk"' in text
    data = tomllib.loads(text)
    assert Config(**data).gates == []
    uncommented = text.replace("# [[gates]]", "[[gates]]").replace('# name = "unit tests"', 'name = "unit tests"')
    uncommented = uncommented.replace('# run = "pytest -q"', 'run = "pytest -q"')
    config = Config(**tomllib.loads(uncommented))
    assert config.gates[0].name == "unit tests" and config.gates[0].timeout_s == 900 and config.gates[0].baseline is None


def test_bad_gates_name_the_file_and_the_field(ws):
    add_gates(ws, gate("lint", "true"))
    with ws.config_path.open("a") as fh:
        fh.write("\n[[gates]]\nname = \"lint\"\nrun = \"false\"\n")
    with pytest.raises(ConfigError, match=r"config.toml: field gates: .*two \[\[gates\]\] are named 'lint'"):
        load_config(ws.config_path, ws.agents_dir)
    ws.config_path.write_text("[[gates]]\nname = \"t\"\nrun = \"true\"\ntimeout_s = 0\n")
    with pytest.raises(ConfigError, match=r"field gates.0.timeout_s"):
        load_config(ws.config_path, ws.agents_dir)
    ws.config_path.write_text("[[gates]]\nname = \"t\"\nrun = \"true\"\nbaseline = \"main\"\n")
    with pytest.raises(ConfigError, match=r"field gates.0.baseline"):
        load_config(ws.config_path, ws.agents_dir)


# -- landing -------------------------------------------------------------------------------


def test_a_passing_gate_lands_exactly_the_tested_commit_and_updates_the_checkout(ws, tmp_path):
    tested = tmp_path / "tested.txt"
    story_branch(ws, "T001", {"src/feature.txt": "feature\n"})
    ready_stories(ws, 1)
    add_gates(ws, gate("record", f"git rev-parse HEAD >> {tested} && test -f src/feature.txt"))
    before = git(ws.root, "rev-parse", "main")
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.DONE, t.failure
    landed = git(ws.root, "rev-parse", "main")
    assert tested.read_text().split() == [landed]  # the one commit the gate saw is the one that landed
    assert git(ws.root, "rev-parse", "T001-complete^{commit}") == landed
    assert git(ws.root, "rev-parse", f"{landed}^1") == t.merged_commit
    assert git(ws.root, "rev-parse", f"{t.merged_commit}^1") == before
    assert "Gates: record: passed" in git(ws.root, "tag", "-n20", "T001-complete")
    # the primary checkout has the trunk checked out: its files moved with it, nothing left over
    assert (ws.root / "src/feature.txt").read_text() == "feature\n"
    assert "T001" in (ws.root / "CHANGELOG.md").read_text()
    assert not git(ws.root, "status", "--porcelain", "--untracked-files=no")
    assert ".oodatcaa/work/reports/T001/integrator.md" in git(ws.root, "ls-files").split()
    assert not any((ws.state_dir / "integration").iterdir())  # the integration checkout is gone


def test_a_failing_gate_sends_the_story_to_adapt_and_leaves_the_trunk_untouched(ws):
    story_branch(ws, "T001", {"feature.txt": "x\n"})
    ready_stories(ws, 1)
    add_gates(ws, gate("unit tests", "echo 3 tests failed: test_feature; exit 3"))
    before = git(ws.root, "rev-parse", "main")
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.NEEDS_ADAPT
    assert t.failure is not None and t.failure.kind is FailureKind.GATE_FAILED
    details = t.failure.details
    assert details["gate"] == "unit tests" and details["returncode"] == 3 and details["reason"] == "exit 3"
    assert "3 tests failed: test_feature" in details["output_tail"]
    assert git(ws.root, "rev-parse", "main") == before
    assert not (ws.root / "feature.txt").exists()
    assert "T001-complete" not in git(ws.root, "tag")
    report = (ws.report_dir("T001") / "integrator.md").read_text()
    assert "Gate `unit tests`" in report and "echo 3 tests failed" in report and "exit 3" in report
    assert "3 tests failed: test_feature" in report.split("Output tail:")[1]


@pytest.mark.parametrize(("run", "extra", "reason"), [
    ("no-such-command-oodatcaa --check", {}, "command not found (exit 127)"),
    ("sleep 30", {"timeout_s": 0.5}, "timed out after 0.5 s"),
])
def test_a_missing_command_or_a_timeout_fails_the_gate_with_the_reason(ws, run, extra, reason):
    story_branch(ws, "T001", {"feature.txt": "x\n"})
    ready_stories(ws, 1)
    add_gates(ws, gate("check", run, **extra))
    before = git(ws.root, "rev-parse", "main")
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.NEEDS_ADAPT and t.failure.kind is FailureKind.GATE_FAILED
    assert t.failure.details["reason"] == reason
    assert reason in t.failure.message
    assert git(ws.root, "rev-parse", "main") == before


def test_gates_run_in_order_and_stop_at_the_first_failure(ws, tmp_path):
    ran = tmp_path / "ran.txt"
    story_branch(ws, "T001", {"feature.txt": "x\n"})
    ready_stories(ws, 1)
    add_gates(ws, gate("first", f"echo first >> {ran}"), gate("second", f"echo second >> {ran}; exit 1"),
              gate("third", f"echo third >> {ran}"))
    run_integrator(ws)
    assert ran.read_text().split() == ["first", "second"]
    assert task(ws).failure.details["gate"] == "second"


def test_a_trunk_baseline_fails_only_new_problem_lines_and_is_cached_per_commit(ws, tmp_path):
    runs = tmp_path / "runs.txt"
    commit_on_main(ws, {"problems.txt": "lib.py:1: E501 line too long\nlib.py:9: F401 unused import\n"})
    story_branch(ws, "T001", {"feature.txt": "x\n"})  # keeps the two known problems
    story_branch(ws, "T002", {"problems.txt": "lib.py:1: E501 line too long\nlib.py:9: F401 unused import\n"
                                              "new.py:3: F821 undefined name\n"})
    store = ready_stories(ws, 2)
    with store.transaction("test") as tx:
        tx.queue.task("T001").priority = 2
        tx.queue.task("T002").priority = 1  # T002 first: both are built on the same trunk commit
    add_gates(ws, gate("lint", f'echo "$PWD" >> {runs}; cat problems.txt; exit 1', baseline="trunk"))
    trunk = git(ws.root, "rev-parse", "main")
    run_integrator(ws)
    t2 = task(ws, "T002")
    assert t2.status == S.NEEDS_ADAPT and t2.failure.kind is FailureKind.GATE_FAILED
    assert t2.failure.details["new_lines"] == ["new.py:3: F821 undefined name"]
    assert t2.failure.details["baseline_lines"] == 2
    assert t2.failure.details["reason"] == "1 new problem line(s) against a baseline of 2"
    assert git(ws.root, "rev-parse", "main") == trunk
    from oodatcaa.core.config import load_config as load

    spec = load(ws.config_path, ws.agents_dir).gates[0]
    cache = baseline_path(ws, spec, trunk)
    assert cache.read_text().splitlines() == ["lib.py:1: E501 line too long", "lib.py:9: F401 unused import"]
    run_integrator(ws)  # T001 on the same trunk commit: the cached baseline, not a second trunk run
    assert task(ws, "T001").status == S.DONE, task(ws, "T001").failure
    trunk_runs = [line for line in runs.read_text().splitlines() if line.endswith("-trunk")]
    assert len(trunk_runs) == 1
    assert len(runs.read_text().splitlines()) == 3  # trunk once, T002's merge, T001's merge


def test_a_trunk_that_moved_while_the_gates_ran_is_retried_on_the_new_trunk(ws, tmp_path):
    mark = tmp_path / "moved"
    seen = tmp_path / "seen.txt"
    story_branch(ws, "T001", {"feature.txt": "x\n"})
    ready_stories(ws, 1)
    # the first gate run lands a person's commit on main meanwhile; the retry sees the new trunk
    move = (f"git rev-parse HEAD >> {seen}; if [ ! -e {mark} ]; then touch {mark}; "
            f"echo meanwhile > {ws.root}/person.txt; git -C {ws.root} add person.txt; "
            f"git -C {ws.root} commit -qm \"person: meanwhile\"; fi")
    add_gates(ws, gate("race", move))
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.DONE, t.failure
    meanwhile = git(ws.root, "log", "--format=%H", "--grep", "person: meanwhile", "main")
    landed = git(ws.root, "rev-parse", "main")
    assert git(ws.root, "rev-parse", f"{t.merged_commit}^1") == meanwhile  # rebuilt on the moved trunk
    tested = seen.read_text().split()
    assert len(tested) == 2 and tested[-1] == landed and tested[0] != landed
    assert (ws.root / "person.txt").exists() and (ws.root / "feature.txt").exists()


def test_a_trunk_not_checked_out_is_moved_by_compare_and_swap_only(ws):
    story_branch(ws, "T001", {"feature.txt": "x\n"})
    ready_stories(ws, 1)
    add_gates(ws, gate("ok", "test -f feature.txt"))
    git(ws.root, "checkout", "-qb", "person-work")
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.DONE, t.failure
    assert git(ws.root, "rev-parse", "--abbrev-ref", "HEAD") == "person-work"
    assert not (ws.root / "feature.txt").exists()  # the person's checkout is left alone
    assert "feature.txt" in git(ws.root, "ls-tree", "-r", "--name-only", "main").split()


def test_a_persons_untracked_file_in_the_way_blocks_the_landing(ws):
    story_branch(ws, "T001", {"notes.txt": "story\n"})
    ready_stories(ws, 1)
    (ws.root / "notes.txt").write_text("a person's draft\n")
    before = git(ws.root, "rev-parse", "main")
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.NEEDS_MANUAL and "notes.txt" in t.manual_reason
    assert git(ws.root, "rev-parse", "main") == before
    assert (ws.root / "notes.txt").read_text() == "a person's draft\n"


def test_a_merge_conflict_still_goes_to_adapt_with_merge_conflict(ws):
    story_branch(ws, "T001", {"shared.txt": "branch\n"})
    commit_on_main(ws, {"shared.txt": "main\n"})
    ready_stories(ws, 1)
    before = git(ws.root, "rev-parse", "main")
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.NEEDS_ADAPT and t.failure.kind is FailureKind.MERGE_CONFLICT
    assert t.failure.details["files"] == ["shared.txt"]
    assert git(ws.root, "rev-parse", "main") == before


def test_a_story_landed_by_a_killed_predecessor_is_tagged_on_the_landed_commit(ws):
    """Killed right after the compare-and-swap: its successor finds the branch merged and finishes."""
    from oodatcaa.landing import land_gated

    branch = story_branch(ws, "T001", {"feature.txt": "x\n"})
    ready_stories(ws, 1)
    repo = GitRepo.for_workspace(ws, "integrator-dead")

    def build(checkout: Path, trunk: str) -> str:
        merge = repo.merge_no_ff_at(checkout, branch, f"[impl] T001: merge {branch} — task 1")
        (checkout / "CHANGELOG.md").write_text("# Changelog\n")
        return repo.commit_at(checkout, ["CHANGELOG.md"], "[docs] T001: changelog, plan and reports") or merge

    outcome = land_gated(ws, repo, [], build, owner="integrator-dead")
    assert outcome.status == "landed"
    run_integrator(ws)
    t = task(ws)
    assert t.status == S.DONE
    assert git(ws.root, "rev-parse", "T001-complete^{commit}") == outcome.commit
    assert t.merged_commit == git(ws.root, "rev-parse", f"{outcome.commit}^1")


# -- the end-to-end case a per-story Tester cannot see -------------------------------------

BUDGET_GATE = "#!/usr/bin/env bash\n# the sum of every budget/*.txt must stay at most 10\n" \
              "total=$(cat budget/*.txt | awk '{s += $1} END {print s + 0}')\n" \
              "echo \"budget total: $total\"\n[ \"$total\" -le 10 ]\n"


def test_two_stories_that_pass_alone_but_break_a_gate_together_never_reach_the_trunk(ws):
    commit_on_main(ws, {"check_budget.sh": BUDGET_GATE, "budget/base.txt": "2\n"})
    a = story_branch(ws, "T001", {"budget/a.txt": "4\n"})
    b = story_branch(ws, "T002", {"budget/b.txt": "5\n"})
    ready_stories(ws, 2)
    add_gates(ws, gate("budget", "bash check_budget.sh"))
    spec = load_config(ws.config_path, ws.agents_dir).gates[0]
    repo = GitRepo.for_workspace(ws, "test")
    for branch in (a, b):  # each story alone passes the gate
        checkout = ws.state_dir / "alone"
        sha = repo.add_detached_worktree(checkout, branch)
        assert run_gate(ws, spec, checkout, sha).passed, branch
        repo.remove_worktree(checkout)
    run_integrator(ws)
    run_integrator(ws)
    assert task(ws, "T001").status == S.DONE
    t2 = task(ws, "T002")
    assert t2.status == S.NEEDS_ADAPT and t2.failure.kind is FailureKind.GATE_FAILED
    assert "budget total: 11" in t2.failure.details["output_tail"]
    # the trunk holds T001's landing and never T002's merge
    assert not repo.is_ancestor(b)
    assert repo.is_ancestor(a)
    assert "T002" not in git(ws.root, "log", "--format=%s", "main")
    assert not (ws.root / "budget/b.txt").exists()
    assert git(ws.root, "rev-parse", "main") == git(ws.root, "rev-parse", "T001-complete^{commit}")
    # no Refiner rule can fix a combination by itself (rebuilding on the trunk gives the same merge):
    # a person decides, with the gate's reason
    AGENT_CLASSES["refiner"](AgentContext.open(ws, "refiner-t")).run(once=True, exit_when_complete=False)
    t2 = task(ws, "T002")
    assert t2.status == S.NEEDS_MANUAL and "gate_failed" in (t2.manual_reason or "")


def test_a_trunk_checked_out_in_another_worktree_is_never_moved_behind_it(ws, tmp_path):
    repo = GitRepo.for_workspace(ws, "test")
    old = git(ws.root, "rev-parse", "main")
    git(ws.root, "commit", "-q", "--allow-empty", "-m", "next")
    new = git(ws.root, "rev-parse", "HEAD")
    git(ws.root, "update-ref", "refs/heads/main", old)
    git(ws.root, "checkout", "-qb", "person-work", new)
    git(ws.root, "worktree", "add", "-q", str(tmp_path / "elsewhere"), "main")
    from oodatcaa.core.errors import GitOperationError

    with pytest.raises(GitOperationError, match="main is checked out in the worktree .*elsewhere"):
        repo.land(new, old)
    assert git(ws.root, "rev-parse", "main") == old


def test_problem_lines_are_stripped_and_free_of_the_checkout_path(tmp_path):
    from oodatcaa.gates import problem_lines

    checkout = tmp_path / "integration" / "integrator-1"
    text = f"  {checkout}/lib.py:1: E501\n\n{checkout.resolve()}/lib.py:2: F401  \nsummary\n"
    assert problem_lines(text, checkout) == ["./lib.py:1: E501", "./lib.py:2: F401", "summary"]
