"""Where the stages' MLflow store is, from the workspace or a DVC experiment copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import tracking


@pytest.fixture
def experiment_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory is a `dvc exp run --queue` copy inside project `tmp_path`."""
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpabc123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return copy


def test_the_embedded_store_is_the_projects_not_the_copys(experiment_copy: Path):
    root = experiment_copy.parents[3]
    assert tracking.tracking_uri() == f"sqlite:///{root / 'mlflow.db'}"


def test_a_relative_sqlite_uri_is_taken_from_the_project_root(
    experiment_copy: Path, monkeypatch: pytest.MonkeyPatch
):
    root = experiment_copy.parents[3]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db")
    assert tracking.tracking_uri() == f"sqlite:///{root / 'stores' / 'team.db'}"


@pytest.mark.parametrize(
    "uri", ["sqlite:////srv/mlflow.db", "http://127.0.0.1:5000", "postgresql://u@db/mlflow"]
)
def test_absolute_and_server_uris_are_kept(
    experiment_copy: Path, monkeypatch: pytest.MonkeyPatch, uri: str
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.tracking_uri() == uri
