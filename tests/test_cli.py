"""The command line as a person uses it: help, errors on purpose, status, log and report."""

import json

import pytest

from oodatcaa.cli.main import main
from support import git_repo


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("init", "sprint", "run", "agent", "status", "watch", "log", "report", "demo"):
        assert cmd in out


def test_init_refuses_outside_a_git_repository(tmp_path, capsys):
    assert main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not inside a git repository" in err and "git init" in err
    assert not (tmp_path / ".oodatcaa").exists()


def test_commands_outside_a_workspace_name_the_fix(tmp_path, capsys):
    git_repo(tmp_path / "r")
    assert main(["-C", str(tmp_path / "r"), "status"]) == 2
    assert "oodatcaa init" in capsys.readouterr().err


def test_malformed_backlog_reports_the_line(tmp_path, capsys):
    repo = git_repo(tmp_path / "r")
    assert main(["-C", str(repo), "init"]) == 0
    backlog = tmp_path / "b.md"
    backlog.write_text("# S\n\n### T001: ok\n**Type:** Story\n\n```job\nkind: [unclosed\n```\n")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 2
    err = capsys.readouterr().err
    assert "b.md:" in err and "YAML" in err


def test_bad_task_id_is_refused_before_any_path(tmp_path, capsys):
    repo = git_repo(tmp_path / "r")
    main(["-C", str(repo), "init"])
    assert main(["-C", str(repo), "report", "../x"]) == 2
    assert "invalid story ID" in capsys.readouterr().err
    assert main(["-C", str(repo), "log", "--task", "T1:2"]) == 2


def test_status_log_and_report(tmp_path, capsys):
    repo = git_repo(tmp_path / "r")
    main(["-C", str(repo), "init"])
    backlog = tmp_path / "b.md"
    backlog.write_text("# S\n\n### T001: echo\n**Type:** Story\n\n```job\nkind: command\nrun: echo hi\n```\n\n"
                       "**Acceptance Criteria:**\n- [ ] ok `metric: command.returncode == 0` (critical)\n")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 0
    capsys.readouterr()
    assert main(["-C", str(repo), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tasks"][0]["status"] == "needs_plan" and data["sprint"]["number"] == 1
    assert main(["-C", str(repo), "agent", "planner", "--owner", "planner-x", "--once"]) == 0
    assert main(["-C", str(repo), "status"]) == 0
    out = capsys.readouterr().out
    assert "T001-B01" in out and "planning_complete" in out
    assert main(["-C", str(repo), "log", "--task", "T001"]) == 0
    assert "planner-x" in capsys.readouterr().out
    assert main(["-C", str(repo), "report", "T001", "--role", "planner"]) == 0
    assert "Planner report" in capsys.readouterr().out
    assert main(["-C", str(repo), "report", "T001", "--role", "tester"]) == 1


def _sprint_with_a_long_title(tmp_path, capsys, title: str):
    repo = git_repo(tmp_path / "r")
    main(["-C", str(repo), "init"])
    backlog = tmp_path / "b.md"
    backlog.write_text(f"# {title}\n\n### T001: echo\n**Type:** Story\n\n```job\nkind: command\nrun: echo hi\n```\n\n"
                       "**Acceptance Criteria:**\n- [ ] ok `metric: command.returncode == 0` (critical)\n")
    assert main(["-C", str(repo), "sprint", "new", "--backlog", str(backlog)]) == 0
    capsys.readouterr()
    return repo


def test_status_follows_columns_per_call_and_json_ignores_width(tmp_path, capsys, monkeypatch):
    # not a terminal (capsys): rich takes the width from COLUMNS, read when the command runs
    title = "a sprint title long enough to need more than eighty columns on one line " * 2
    repo = _sprint_with_a_long_title(tmp_path, capsys, title.strip())
    outputs = {}
    for columns in ("60", "200"):
        monkeypatch.setenv("COLUMNS", columns)
        assert main(["-C", str(repo), "status"]) == 0
        table = capsys.readouterr().out
        assert max(len(line) for line in table.splitlines()) <= int(columns)
        assert main(["-C", str(repo), "status", "--json"]) == 0
        outputs[columns] = (table, capsys.readouterr().out)
    assert title.strip() in outputs["200"][0]  # the title on one line, not wrapped at 80
    assert title.strip() not in outputs["60"][0]
    assert outputs["60"][1] == outputs["200"][1]
    assert json.loads(outputs["60"][1])["sprint"]["title"] == title.strip()
