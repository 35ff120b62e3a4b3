"""A report line appended while the Integrator fast-forwards the primary checkout (found by
``benchmarks/bench_sprint.py`` at 100 stories: the fast-forward was refused and the story went to a person)."""

from __future__ import annotations

import threading
import time

from oodatcaa.gitops import GitRepo
from oodatcaa.reports import write_report
from support import git, workspace


def test_a_report_written_during_a_fast_forward_waits_and_both_lines_are_kept(tmp_path, monkeypatch):
    ws = workspace(tmp_path)
    index = ws.reports_index_path
    assert git(ws.root, "ls-files", ws.relative(index)), "init commits the index"
    old = git(ws.root, "rev-parse", "HEAD")
    # the candidate: the index as the Integrator committed it, one line longer
    git(ws.root, "checkout", "-q", "-b", "candidate")
    index.write_text(index.read_text() + "| t | T001 | integrator | x | merged |\n")
    git(ws.root, "commit", "-q", "-am", "[merge] T001")
    new = git(ws.root, "rev-parse", "HEAD")
    git(ws.root, "checkout", "-q", "main")
    index.write_text(index.read_text() + "| t | T001 | integrator | x | merged |\n")  # as in the checkout

    repo = GitRepo.for_workspace(ws, "integrator-1")
    writer: list[threading.Thread] = []
    real_git = GitRepo._git

    class SlowMerge:
        """The git command object, with a merge that lets another agent index a report first."""

        def __init__(self, g):
            self.g = g

        def __getattr__(self, name):
            return getattr(self.g, name)

        def merge(self, *args, **kwargs):
            t = threading.Thread(target=write_report, args=(ws, "T002", "tester", "tester-1", "Tester report",
                                                            "body", "T002 passed"))
            t.start()
            writer.append(t)
            time.sleep(0.5)  # without the index lock the line lands now, in the file set aside
            return self.g.merge(*args, **kwargs)

    def slow_merge_git(self, r=None):
        return SlowMerge(real_git(self, r))

    monkeypatch.setattr(GitRepo, "_git", slow_merge_git)
    repo.land(new, old)
    writer[0].join(10)
    assert git(ws.root, "rev-parse", "main") == new
    text = index.read_text()
    assert "| T001 | integrator |" in text and "T002 passed" in text
