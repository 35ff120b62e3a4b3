"""The bundled demo sprint is well-formed: its backlog parses, every job spec validates, its config loads."""

from oodatcaa.backlog import load_backlog
from oodatcaa.core.config import bundled_dir, load_config
from oodatcaa.demo import prepare_demo_repo
from oodatcaa.jobs.spec import parse_job_spec


def test_demo_backlog_jobs_and_config_are_valid():
    demo = bundled_dir("demo")
    backlog = load_backlog(demo / "work" / "SPRINT_BACKLOG.md")
    assert len(backlog.items) >= 4
    for item in backlog.items:
        assert item.jobs and item.acceptance_criteria
        assert any(c.critical and c.check is not None for c in item.acceptance_criteria)
        for job in item.jobs:
            parse_job_spec(job.data, source=f"{item.id}:{job.line}")
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
