"""DVC remote round trip: push the trained project's data and models to a folder remote, clone the
git repository afresh, pull, and find nothing to reproduce (nothing retrains, no new runs)."""

from __future__ import annotations

import pytest

from tests.support import project
from tests.support.workspace import git
from tests.team.conftest import Project, TeamServer

pytestmark = [pytest.mark.team, pytest.mark.slow]


def test_push_clone_pull_then_nothing_to_reproduce(
    trained_project: Project, team_server: TeamServer, tmp_path
):
    remote = tmp_path / "remote"
    trained_project.run("dvc", "remote", "add", "--default", "storage", str(remote))
    project.commit_all(trained_project.root, "DVC remote")
    pushed = trained_project.run("dvc", "push")
    assert any(remote.rglob("*")), f"nothing pushed:\n{pushed.stdout}"

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(trained_project.root), str(clone))
    cloned = Project(clone, trained_project.env)
    assert not (clone / "models" / "mlp" / "model.keras").exists()
    cloned.run("dvc", "pull")
    assert (clone / "models" / "mlp" / "model.keras").is_file()

    status = cloned.run("dvc", "status").stdout
    assert "up to date" in status, status
    [(runs_before,)] = team_server.query("SELECT count(*) FROM runs")
    reproduced = cloned.run("dvc", "repro").stdout
    assert "Running stage" not in reproduced, reproduced
    [(runs_after,)] = team_server.query("SELECT count(*) FROM runs")
    assert runs_after == runs_before
