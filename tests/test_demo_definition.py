"""The bundled demo sprint is well-formed: its backlog parses, every job spec validates, its config loads."""

from oodatcaa.backlog import load_backlog
from oodatcaa.core.config import bundled_dir, load_config
from oodatcaa.core.criteria import format_check
from oodatcaa.core.objective import parse_objective, story_ids_named
from oodatcaa.demo import prepare_demo_repo
from oodatcaa.jobs.spec import parse_job_spec
from oodatcaa.sprints import _validate_jobs


def test_demo_roadmap_jobs_objective_and_config_are_valid():
    demo = bundled_dir("demo")
    roadmap = sorted((demo / "work" / "backlogs").glob("*.md"))
    assert [p.name for p in roadmap] == ["sprint-01.md", "sprint-02.md"]
    known: set[str] = set()
    for path in roadmap:
        backlog = load_backlog(path, known_stories=known)
        assert backlog.items and not backlog.warnings, backlog.warnings
        _validate_jobs(backlog)  # job specs and metric names, as `sprint new` checks them
        assert 3 <= len(backlog.exit_criteria) <= 6
        for item in backlog.items:
            assert item.jobs and item.acceptance_criteria
            assert any(c.critical and c.check is not None for c in item.acceptance_criteria)
            for job in item.jobs:
                parse_job_spec(job.data, source=f"{item.id}:{job.line}")
        known |= {item.id for item in backlog.items}
    objective = parse_objective((demo / "objectives" / "OBJECTIVE.md").read_text(), "OBJECTIVE.md")
    # every success criterion is machine-checkable, and names a story of the roadmap
    assert objective.criteria and all(c.check is not None for c in objective.criteria)
    assert all(story_ids_named(format_check(c.check))[0] in known for c in objective.criteria if c.check)
    assert load_config(demo / "config.toml").wip_limit("builder") >= 1
    assert (demo / "data" / "raw" / "procedures.jsonl").exists()


def test_demo_repo_replaces_only_an_earlier_demo(tmp_path):
    import pytest

    from oodatcaa.core.errors import WorkspaceError

    ws = prepare_demo_repo(tmp_path / "demo")
    assert (ws.dir / "config.toml").exists() and (ws.root / "data" / "raw" / "procedures.jsonl").exists()
    prepare_demo_repo(tmp_path / "demo")  # an earlier demo is replaced
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(WorkspaceError, match="not an earlier oodatcaa demo"):
        prepare_demo_repo(other)
    assert (other / "precious.txt").read_text() == "keep me"
