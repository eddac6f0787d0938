"""`dvc exp` the way its users compare experiments, in a temporary git copy of the project.

Two experiments with tiny params on synthetic data: `dvc exp show` holds both and leads with the
chosen variant's figures, `dvc metrics diff` and `dvc plots diff` compare them, and MLflow links
each run to its data with the same sha256 the registry records. Slow: two DVC pipeline runs.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline import contracts
from pipeline.champion import registry
from pipeline.stages import offline_plots
from tests.support import chromium, project, servers

pytestmark = pytest.mark.slow
REGISTERED = "synthetic-classifier"
LEADING = ["chosen.variant", "chosen.version", "chosen.promoted", "chosen.test_accuracy"]


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A project copy in which `dvc exp run` made experiments `short` and `long` (cnn trained
    for 1 and 4 epochs); its environment."""
    root = tmp_path_factory.mktemp("experiments")
    copy = project.tiny_project(
        root / "project", data_dir=root / "raw", registered_model=REGISTERED
    )
    env = project.environment(tracking_uri=None, bentoml_home=root / "bentoml")
    for name, epochs in (("short", 1), ("long", 4)):
        project.run(
            copy,
            "dvc",
            "exp",
            "run",
            "-n",
            name,
            "-S",
            f"train.models.cnn.fit.epochs={epochs}",
            env=env,
        )
    return copy, env


def dvc_json(copy: Path, env, *command: str):
    return json.loads(project.run(copy, "dvc", *command, "--json", env=env).stdout)


def test_exp_show_holds_both_experiments_and_leads_with_the_chosen_figures(experiments):
    copy, env = experiments
    shown = dvc_json(copy, env, "exp", "show")
    by_name = {
        experiment["name"]: experiment["revs"][0]["data"]
        for row in shown
        for experiment in row.get("experiments") or []
    }
    assert {"short", "long"} <= set(by_name)
    for name in ("short", "long"):
        metrics = by_name[name]["metrics"]["metrics/evaluate.json"]["data"]
        assert 0.0 <= metrics["chosen"]["test_accuracy"] <= 1.0
        assert metrics["chosen"]["variant"] in ("mlp", "cnn")
        assert set(metrics["variants"]) == {"mlp", "cnn"}
    epochs = {
        name: data["metrics"]["metrics/train/cnn.json"]["data"]["epochs_run"]
        for name, data in by_name.items()
    }
    assert epochs["short"] == 1 and epochs["long"] == 4
    # The table: after the experiment's own columns, the choice and its test accuracy come first;
    # class counts are plots now, not 33 columns.
    header = next(
        csv.reader(io.StringIO(project.run(copy, "dvc", "exp", "show", "--csv", env=env).stdout))
    )
    first_metric = header.index("chosen.variant")
    assert header[first_metric : first_metric + len(LEADING)] == LEADING
    assert not [column for column in header if "T-shirt" in column or "class_3" in column]


def test_metrics_and_plots_diff_compare_the_two_experiments(experiments):
    copy, env = experiments
    diff = dvc_json(copy, env, "metrics", "diff", "short", "long")
    cnn_train = diff["metrics/train/cnn.json"]
    assert cnn_train["epochs_run"] == {"old": 1, "new": 4, "diff": 3}
    assert diff["metrics/evaluate.json"]["variants.cnn.val_loss"]["diff"] != 0
    plots = dvc_json(copy, env, "plots", "diff", "short", "long")["data"]
    curves = plots["plots/train/cnn.csv"][0]
    assert curves["revisions"] == ["short", "long"]
    epochs_per_revision = {}
    for row in curves["content"]["data"]["values"]:
        epochs_per_revision.setdefault(row["rev"], set()).add(int(row["epoch"]))
    assert epochs_per_revision == {"short": {1}, "long": {1, 2, 3, 4}}


def test_runs_are_named_after_variant_and_experiment_and_carry_the_registered_data_digest(
    experiments,
):
    copy, _ = experiments
    client = mlflow.MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    # `long` changed only the cnn: DVC restored mlp from its run cache, without a new run.
    assert sorted(run.info.run_name for run in runs) == ["cnn@long", "cnn@short", "mlp@short"]
    versions = client.search_model_versions(f"name='{REGISTERED}'")
    assert versions
    for version in versions:
        tags = registry.VersionTags.from_tags(version.tags)
        run = client.get_run(version.run_id)
        digests = {
            context_tags["mlflow.data.context"]: context_tags["data_sha256"]
            for context_tags in (
                {tag.key: tag.value for tag in dataset_input.tags}
                for dataset_input in run.inputs.dataset_inputs
            )
        }
        assert set(digests) == {"training", "validation", "testing"}
        assert set(digests.values()) == {tags.data_sha256}
    meta = contracts.PreparedMeta.read(copy / "data" / "prepared" / "meta.json")
    assert {registry.VersionTags.from_tags(v.tags).data_sha256 for v in versions} == {
        meta.content_sha256
    }


def canvases(html: str) -> int:
    """How many Vega charts a rendered page drew."""
    return html.count('class="marks"')


def test_dvc_plots_render_offline_with_the_local_vega_template(experiments, tmp_path):
    copy, env = experiments
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: the template falls back to DVC's CDN page")
    # What `make install` does in the project: Vega, Vega-Lite and Vega-Embed inline.
    template = copy / ".dvc" / "plots" / "offline.html"
    project.run(copy, "python", "-m", "pipeline.stages.offline_plots", f"--out={template}", env=env)
    offline = tmp_path / "offline"
    project.run(copy, "dvc", "plots", "diff", "short", "long", "-o", str(offline), env=env)
    page = (offline / "index.html").read_text()
    assert "cdn.jsdelivr" not in page and "<script src=" not in page
    # DVC's own page, for comparison: the same charts, Vega from the CDN.
    online = tmp_path / "online"
    default = tmp_path / "dvc_default.html"
    default.write_text(offline_plots.online_page())
    project.run(
        copy,
        "dvc",
        "plots",
        "diff",
        "short",
        "long",
        "-o",
        str(online),
        f"--html-template={default}",
        env=env,
    )
    # Without a network, only the local template draws: the two training-curve charts, the
    # confusion matrix and the three class-count charts.
    assert canvases(chromium.rendered_dom((online / "index.html").as_uri())) == 0
    drawn = chromium.rendered_dom((offline / "index.html").as_uri())
    assert canvases(drawn) == 6
    chromium.screenshot((offline / "index.html").as_uri(), "dvc-plots-offline.png")


def test_the_mlflow_ui_lists_the_training_runs_with_their_datasets(experiments, tmp_path):
    copy, _ = experiments
    chromium.executable()
    with servers.mlflow_server(tmp_path, backend=f"sqlite:///{copy / 'mlflow.db'}") as server:
        experiment = mlflow.MlflowClient(server.url).get_experiment_by_name("synthetic")
        # MLflow 3.17's UI picks GenAI or model-training views by a switch of its own (the
        # experiment kind tag does not decide it); this is the link `make ui` prints.
        url = f"{server.url}/#/experiments/{experiment.experiment_id}?workflowType=machine_learning"
        page = chromium.rendered_dom(url)
        chromium.for_docs(chromium.screenshot(url, "mlflow-training-runs.png"))
    for run_name in ("cnn@long", "cnn@short", "mlp@short"):
        assert run_name in page
    assert "synthetic/training" in page


def test_only_changed_columns_metrics_show_and_applying_an_experiment(experiments):
    """The rest of the documented `dvc` commands; last in this module, since `dvc exp apply`
    changes the copy's workspace."""
    copy, env = experiments
    changed = project.run(copy, "dvc", "exp", "show", "--only-changed", "--csv", env=env).stdout
    header = next(csv.reader(io.StringIO(changed)))
    assert "train.models.cnn.fit.epochs" in header
    assert "prepare.val_fraction" not in header
    shown = project.run(copy, "dvc", "metrics", "show", env=env).stdout
    assert "metrics/evaluate.json" in shown and "chosen.test_accuracy" in shown
    project.run(copy, "dvc", "exp", "apply", "long", env=env)
    params = yaml.safe_load((copy / "params.yaml").read_text())
    assert params["train"]["models"]["cnn"]["fit"]["epochs"] == 4
    assert json.loads((copy / "metrics" / "train" / "cnn.json").read_text())["epochs_run"] == 4
