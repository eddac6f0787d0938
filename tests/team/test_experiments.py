"""Parallel experiments: two `dvc exp run --queue` run by `dvc queue start -j 2`, against the
embedded SQLite store and against the PostgreSQL-backed server.

Both write runs and register versions at the same time. Afterwards every run must be tracked,
nothing may have failed on "database is locked", each experiment's chosen run must be exactly one
registry version (none lost, none twice), and the aliases must agree with the promotion gate.
"""

from __future__ import annotations

import contextlib
import json

import pytest

from pipeline.champion import registry
from tests.support import dvc_queue, project
from tests.team.conftest import REGISTERED_MODEL, Project

pytestmark = [pytest.mark.team, pytest.mark.slow]
# One experiment per seed; each retrains both variants and evaluates them.
SEEDS = (2, 3)
QUEUE_TIMEOUT = 600.0


def queue_experiments(trained: Project) -> dict[str, str]:
    """Queue one experiment per seed, run them two at a time; {experiment name: queue log}.

    The workers are ended here once the experiments are done (or on failure): a worker that
    outlives its experiments is reported, not counted as a failed experiment.
    """
    names = [f"seed-{seed}" for seed in SEEDS]
    for name, seed in zip(names, SEEDS, strict=True):
        trained.run(
            *("dvc", "exp", "run", "--queue", "--name", name),
            *("-S", f"train.models.mlp.fit.seed={seed}", "-S", f"train.models.cnn.fit.seed={seed}"),
        )
    log = trained.root.parent / "dvc-queue.log"
    try:
        dvc_queue.detached(
            trained.root, "queue", "start", "-j", str(len(names)), env=trained.env, log=log
        )
        status = dvc_queue.wait_until_done(trained.root, trained.env, names, QUEUE_TIMEOUT)
    except BaseException:
        # Workers would otherwise go on training and writing to the store after the test failed.
        with contextlib.suppress(Exception):
            dvc_queue.detached(trained.root, "queue", "stop", "--kill", env=trained.env, log=log)
        raise
    finally:
        stuck = dvc_queue.end_workers(trained.root, trained.env, log=log)
        if stuck:
            print(dvc_queue.report(stuck))
    recorded = dvc_queue.workers(trained.root)
    assert len(recorded) == len(names), f"DVC recorded workers {recorded}"
    assert not [worker for worker in recorded if worker.alive()], "workers left running"
    logs = {name: trained.run("dvc", "queue", "logs", name).stdout for name in names}
    for name in names:
        row = next((line for line in status.splitlines() if name in line), "")
        assert "Success" in row, f"experiment {name}: {row!r}\n{status}\n{logs[name][-4000:]}"
    return logs


def experiment_runs(client, name: str) -> list:
    """The runs tagged with DVC experiment `name`."""
    experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiment_ids, filter_string=f"tags.dvc_experiment = '{name}'")


def assert_registry_consistent(client, experiments: list[str]) -> None:
    """One version per experiment plus the baseline's, numbered without gaps, distinct runs; the
    champion has the best test accuracy; the challenger, if any, is another version."""
    versions = client.search_model_versions(f"name = '{REGISTERED_MODEL}'")
    numbers = sorted(int(version.version) for version in versions)
    assert numbers == list(range(1, len(experiments) + 2)), numbers
    run_ids = [version.run_id for version in versions]
    assert len(set(run_ids)) == len(run_ids), f"a run registered twice: {run_ids}"
    for name in experiments:
        tagged = {run.info.run_id for run in experiment_runs(client, name)}
        assert len(tagged & set(run_ids)) == 1, f"{name}: not exactly one version for its runs"
    accuracy = {str(version.version): float(version.tags["test_accuracy"]) for version in versions}
    champion = registry.champion(client, REGISTERED_MODEL)
    assert champion is not None
    assert accuracy[str(champion.version)] == max(accuracy.values()), (champion.version, accuracy)
    # v1 was champion first and the gate needs a gain > 0: a tie never moves the alias.
    if accuracy["1"] == max(accuracy.values()):
        assert str(champion.version) == "1", (champion.version, accuracy)
    challenger = registry.challenger(client, REGISTERED_MODEL)
    assert challenger is None or str(challenger.version) != str(champion.version)


def check_parallel_experiments(trained: Project, client) -> None:
    logs = queue_experiments(trained)
    for name, log in logs.items():
        assert "database is locked" not in log, f"{name}:\n{log[-4000:]}"
        # Runs are named after their variant (`mlp`, or `mlp@<experiment>`).
        runs = {
            run.info.run_name.split("@")[0]: run.info.status
            for run in experiment_runs(client, name)
        }
        assert runs == {"mlp": "FINISHED", "cnn": "FINISHED"}, f"{name}: {runs}"
    assert_registry_consistent(client, list(logs))
    shown = json.loads(trained.run("dvc", "exp", "show", "--json").stdout)
    names = {
        experiment.get("name")
        for baseline in shown
        for experiment in (baseline.get("experiments") or [])
    }
    assert set(logs) <= names, names


def test_parallel_experiments_with_the_sqlite_store(tmp_path):
    """No MLFLOW_TRACKING_URI: the project's own mlflow.db, found from the queue's temp copies."""
    import mlflow

    root = project.tiny_project(
        tmp_path / "project", data_dir=tmp_path / "raw", registered_model=REGISTERED_MODEL
    )
    trained = Project(root, project.environment(tracking_uri=None, bentoml_home=tmp_path / "b"))
    trained.run("dvc", "repro")
    project.commit_all(root, "baseline")
    check_parallel_experiments(trained, mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}"))
    # The temporary copies kept no store of their own.
    assert not list((root / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))


def test_parallel_experiments_with_the_server(trained_project: Project, team_server):
    check_parallel_experiments(trained_project, team_server.client())
