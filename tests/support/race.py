"""Evaluations that race for `champion`: one process per workspace, released by a barrier.

Each worker logs tiny models whose test accuracy is exactly what it is told (a dense layer
that answers each one-pixel test image with a chosen class), then, round by round, registers
one and puts it through the gate the way `evaluate` does (`handoff.register_chosen` under
`tracking.registry_lock`, which locks its own workspace only, as on another machine).
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import numpy as np

from pipeline import contracts

IMAGES = 100
CLASS_NAMES = tuple(f"class_{index}" for index in range(10))
# One digest for both workers: they evaluate on the same test data.
DATA = contracts.PreparedMeta(
    dataset="race",
    source=contracts.Source(kind="local_dir", location="/data/race"),
    class_names=CLASS_NAMES,
    sha256={"test_images": "0" * 64},
    counts={"train": 0, "val": 0, "test": IMAGES},
    val_fraction=0.1,
    seed=0,
)


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """Image i lights pixel i only; its label is i mod 10."""
    images = np.zeros((IMAGES, 28 * 28), np.float32)
    images[np.arange(IMAGES), np.arange(IMAGES)] = 1.0
    return images.reshape(IMAGES, 28, 28), (np.arange(IMAGES) % 10).astype(np.int64)


def model_with_accuracy(correct: int):
    """A softmax model right on the first `correct` test images and wrong on the others."""
    import keras

    _, labels = test_set()
    answers = np.where(np.arange(IMAGES) < correct, labels, (labels + 1) % 10)
    kernel = np.zeros((28 * 28, 10), np.float32)
    kernel[np.arange(IMAGES), answers] = 5.0
    model = keras.Sequential(
        [
            keras.Input((28, 28)),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax", use_bias=False),
        ]
    )
    model.layers[-1].set_weights([kernel])
    return model


def evaluation(accuracy: float):
    """What `evaluate` would have measured for a model of this test accuracy."""
    from pipeline.champion import scoring

    metrics = contracts.VariantMetrics(
        test_accuracy=accuracy,
        val_accuracy=accuracy,
        test_macro_f1=accuracy,
        test_loss=1.0,
        val_loss=1.0,
        temperature=1.0,
        test_ece=0.0,
        test_ece_calibrated=0.0,
        test_loss_calibrated=1.0,
    )
    empty = np.zeros(0)
    result = scoring.VariantEvaluation(
        metrics, scoring.Scores(accuracy, 1.0, empty, empty), {}, "", np.zeros((10, 10))
    )
    return scoring.Evaluation(variants={"tiny": result}, chosen="tiny")


def log_models(label: str, corrects: list[int]) -> list[contracts.TrainedRun]:
    """One finished run per model, each holding a model right on `correct` test images."""
    import mlflow
    import mlflow.keras

    from pipeline import tracking

    client = tracking.connect()
    experiment_id = tracking.get_or_create_experiment(client, f"race-{label}")
    runs = []
    for correct in corrects:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            info = mlflow.keras.log_model(
                model_with_accuracy(correct), name="model", pip_requirements=["keras"]
            )
        runs.append(
            contracts.TrainedRun(
                variant="tiny",
                run_id=run.info.run_id,
                experiment_id=experiment_id,
                model_uri=info.model_uri,
                tracking_uri=tracking.tracking_uri(),
                metrics=contracts.TrainMetrics(1.0, 0.5, 1, 1.0, 0.5),
            )
        )
    return runs


def register_and_promote(client, run: contracts.TrainedRun, correct: int, name: str):
    """The stage's registration of one model, as `evaluate.run_stage` does it."""
    from pipeline import config, tracking
    from pipeline.champion import handoff

    with tracking.registry_lock():
        return handoff.register_chosen(
            client,
            evaluation(correct / IMAGES),
            runs={"tiny": run},
            meta=DATA,
            test=test_set(),
            name=name,
            settings=config.EvaluateConfig(),
            model_uri=run.model_uri,
        )


def worker(label, root, tracking_uri, name, corrects, barrier, failures, timeout) -> None:
    """A machine of its own: its workspace, its runs; one registration per round, all released
    at once by `barrier`, which it also waits at when each round is done."""
    try:
        os.chdir(root)
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        from pipeline import tracking

        runs = log_models(label, corrects)
        client = tracking.connect()
        barrier.wait(timeout)
        for run, correct in zip(runs, corrects, strict=True):
            barrier.wait(timeout)
            register_and_promote(client, run, correct, name)
            barrier.wait(timeout)
    except Exception:
        failures.put(f"{label}: {traceback.format_exc()}")
        barrier.abort()


def workspace(root: Path) -> Path:
    """A project folder of its own (its own registry lock), as on another machine."""
    root.mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    return root
