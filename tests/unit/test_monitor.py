"""The watch's input statistics and the drift report's checks, on small data made here."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline import config
from serving.settings import Declared, Settings
from serving.tools import drift, monitor
from serving.watch import STATISTICS, Answered, Watch, input_statistics, predict_answers

CLASSES = ("a", "b", "c", "d")


def test_input_statistics_of_known_images() -> None:
    images = np.zeros((3, 28, 28), np.float32)
    images[1, 5:9, 10:16] = 1.0  # a 4x6 block of full ink
    images[2, 2, 3] = 0.3  # faint: inside the content box, not ink
    images[2, 20, 25] = 0.9
    stats = input_statistics(images)
    assert list(stats) == list(STATISTICS)
    np.testing.assert_allclose(stats["mean_intensity"], [0.0, 24 / 784, 1.2 / 784], rtol=1e-6)
    np.testing.assert_allclose(stats["ink_fraction"], [0.0, 24 / 784, 1 / 784])
    assert stats["box_height"].tolist() == [0, 4, 19]
    assert stats["box_width"].tolist() == [0, 6, 23]


def test_sampled_pixels_keep_every_row() -> None:
    images = np.random.default_rng(0).random((50, 28, 28)).astype(np.float32)
    every = Watch("m", "1", CLASSES, pixel_rate=1.0)._sampled_pixels(images)
    expected = np.rint(images * 255).astype(int).reshape(50, -1).tolist()
    assert every == expected
    some = Watch("m", "1", CLASSES, 0.3, np.random.default_rng(1))._sampled_pixels(images)
    assert len(some) == 50
    kept = sum(row is not None for row in some)
    assert 5 <= kept <= 25


def test_a_predict_row_keeps_the_answered_class_when_rounding_ties_the_probabilities() -> None:
    """/predict answers probabilities rounded to 6 places: two classes at 0.4999996 and
    0.4999994 both read 0.5, and re-deriving the class from them would name the first."""
    images = np.zeros((1, 28, 28), np.float32)
    body = json.dumps(
        [{"label": 1, "class_name": "b", "probabilities": {"a": 0.5, "b": 0.5, "c": 0, "d": 0}}]
    ).encode()
    answered = predict_answers([images], body)
    assert answered is not None
    _, probabilities, labels = answered
    assert labels.tolist() == [1] and probabilities.argmax(axis=1).tolist() == [0]
    columns = Watch("m", "1", CLASSES).columns("predict", images, probabilities, labels)
    assert columns["label"][0] == [1] and columns["class_name"][0] == ["b"]
    assert columns["confidence"][0] == [0.5]


def test_the_columns_of_several_answers_at_once_are_each_answer_s_in_turn() -> None:
    """The writer thread makes a block's rows with one call (`Watch.columns_of`): the same rows
    as each answer's own columns, one after the other, each with its endpoint and version."""
    rng = np.random.default_rng(3)
    watch = Watch("m", "1", CLASSES, pixel_rate=1.0)
    calls = []
    for endpoint, count, version in (
        ("predict_image", 1, None),
        ("predict", 3, "2"),
        ("oip", 2, None),
    ):
        images = rng.random((count, 28, 28)).astype(np.float32)
        probabilities = rng.dirichlet(np.ones(len(CLASSES)), count).astype(np.float32)
        calls.append((endpoint, images, probabilities, probabilities.argmax(axis=1), version))
    together = watch.columns_of(
        [
            Answered(endpoint, images, p.max(axis=1), labels, version or "1")
            for endpoint, images, p, labels, version in calls
        ]
    )
    one_by_one = [watch.columns(*call) for call in calls]
    assert list(together) == list(one_by_one[0])
    for name, (values, role, kind) in together.items():
        assert values == [value for columns in one_by_one for value in columns[name][0]], name
        assert (role, kind) == one_by_one[0][name][1:]
    assert together["endpoint"][0] == [
        "predict_image",
        "predict",
        "predict",
        "predict",
        "oip",
        "oip",
    ]
    assert together["model_version"][0] == ["1", "2", "2", "2", "1", "1"]


def test_a_predict_body_for_other_pixels_is_not_recorded() -> None:
    body = json.dumps([{"label": 0, "probabilities": {"a": 1.0}}] * 2).encode()
    assert predict_answers([np.zeros((1, 28, 28), np.float32)], body) is None


def test_monitor_settings_from_the_environment() -> None:
    assert Settings.from_env({}).monitor_pixel_rate == 0.0
    assert Settings.from_env({"MONITOR_PIXEL_RATE": "0.25"}).monitor_pixel_rate == 0.25
    for bad in ("2", "-0.1", "some", "nan"):
        with pytest.raises(ValueError, match="MONITOR_PIXEL_RATE must be a number from 0 to 1"):
            Settings.from_env({"MONITOR_PIXEL_RATE": bad})
    assert Declared.from_env({}).monitor_dir == "monitoring"
    assert Declared.from_env({"MONITOR_DIR": "/var/log/x"}).monitor_dir == "/var/log/x"
    assert Declared.from_env({}).monitor_flush_ms == 500
    assert Declared.from_env({"MONITOR_FLUSH_MS": "100"}).monitor_flush_ms == 100
    with pytest.raises(ValueError, match="MONITOR_FLUSH_MS must be a positive integer"):
        Declared.from_env({"MONITOR_FLUSH_MS": "0"})


def _predictions(rng: np.random.Generator, count: int, *, shift: float = 0.0, mix=None):
    labels = rng.choice(len(CLASSES), size=count, p=mix or [0.25] * 4)
    return drift.Predictions(
        labels=labels,
        confidence=np.clip(rng.normal(0.8 - shift, 0.1, count), 0, 1),
        statistics={name: rng.normal(0.3 + shift, 0.05, count) for name in STATISTICS},
    )


CHECKS = config.DriftChecks()
PSI_CHECKS = config.DriftChecks(
    **{name: config.DriftCheck("psi", 0.2) for name in config.DriftChecks.__dataclass_fields__}
)


@pytest.mark.parametrize("checks", [CHECKS, PSI_CHECKS], ids=["p-values", "psi"])
def test_same_distribution_is_no_drift(checks: config.DriftChecks) -> None:
    rng = np.random.default_rng(0)
    reference, served = _predictions(rng, 5000), _predictions(rng, 300)
    results = drift.compare(served, reference, class_names=CLASSES, checks=checks)
    assert set(results) == {"class_mix", "confidence", *STATISTICS}
    assert not any(result["drift"] for result in results.values()), results


@pytest.mark.parametrize("checks", [CHECKS, PSI_CHECKS], ids=["p-values", "psi"])
def test_moved_distributions_are_drift(checks: config.DriftChecks) -> None:
    rng = np.random.default_rng(0)
    reference = _predictions(rng, 5000)
    served = _predictions(rng, 300, shift=0.1, mix=[0.7, 0.1, 0.1, 0.1])
    results = drift.compare(served, reference, class_names=CLASSES, checks=checks)
    assert all(result["drift"] for result in results.values()), results
    assert results["class_mix"]["largest_shift"].startswith("a 2")  # a: ~25% -> ~70%
    assert results["mean_intensity"]["served_mean"] > results["mean_intensity"]["reference_mean"]


def test_a_test_that_does_not_fit_the_quantity_is_refused() -> None:
    rng = np.random.default_rng(0)
    reference, served = _predictions(rng, 500), _predictions(rng, 300)
    wrong = config.DriftChecks(class_mix=config.DriftCheck("ks", 0.01))
    with pytest.raises(ValueError, match=r"class_mix\.test: 'ks' needs numbers; use chi2 or psi"):
        drift.compare(served, reference, class_names=CLASSES, checks=wrong)
    wrong = config.DriftChecks(confidence=config.DriftCheck("chi2", 0.01))
    with pytest.raises(ValueError, match=r"confidence\.test: 'chi2' is for classes; use ks or psi"):
        drift.compare(served, reference, class_names=CLASSES, checks=wrong)


def _log_row(
    model: str = "m", version: str = "1", *, when: str = "2026-11-20T10:00:00", **values: Any
) -> str:
    row = {"model_name": model, "model_version": version, "label": 1, "confidence": 0.9}
    row |= {name: 0.5 for name in STATISTICS} | values
    return json.dumps(row | {"timestamp": when, "request_id": "7", "endpoint": "predict"})


def _served_log(tmp_path: Path, lines: dict[str, list[str]]) -> Path:
    for name, rows in lines.items():
        path = tmp_path / "predictions" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
    return tmp_path


def test_read_log_keeps_the_models_rows_from_every_file(tmp_path: Path) -> None:
    folder = _served_log(
        tmp_path,
        {
            "data.1.log": [_log_row(), _log_row("m", "2"), "not json", ""],
            "data.2.log": [_log_row(when="2026-11-21T09:00:00")],
            "data.1.log.2026-11-19": [_log_row(), _log_row("other", "1")],
        },
    )
    served = monitor.read_log(folder, model_name="m", model_version="1", classes=len(CLASSES))
    assert len(served.predictions) == 3 and served.files == 3
    assert served.other_models == {"m v2": 1, "other v1": 1}
    assert served.unreadable == 1
    later = monitor.read_log(
        folder,
        model_name="m",
        model_version="1",
        classes=len(CLASSES),
        since=datetime(2026, 11, 21),
    )
    assert len(later.predictions) == 1


def test_too_few_predictions_is_not_enough_data(tmp_path: Path) -> None:
    folder = _served_log(tmp_path, {"data.1.log": [_log_row()] * 5 + [_log_row("m", "2")] * 500})
    served = monitor.read_log(folder, model_name="m", model_version="1", classes=len(CLASSES))
    reference = _predictions(np.random.default_rng(0), 1000)
    result = drift.report(
        served, reference, class_names=CLASSES, model="m v1", config=config.MonitorConfig()
    )
    assert result["drift"] is None and result["status"] == "not enough data"
    assert result["predictions"] == 5 and result["checks"] == {}
    assert result["summary"].startswith("not enough data: 5 predictions of m v1, at least 100")
    assert "500 predictions of other models (m v2)" in result["summary"]


def test_missing_log_folder_says_what_to_pass(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="pass the service's MONITOR_DIR"):
        monitor.log_files(tmp_path / "nowhere")


def test_params_monitor_section_is_typed(tmp_path: Path) -> None:
    loaded = config.load(Path(__file__).resolve().parents[2] / "params.yaml").monitor
    assert loaded.min_predictions >= 1
    assert loaded.checks.class_mix.test in ("chi2", "psi")
    path = tmp_path / "params.yaml"
    path.write_text("monitor:\n  checks:\n    colour: {test: ks, threshold: 0.1}\n")
    with pytest.raises(config.ConfigError, match=r"monitor\.checks\.colour"):
        config.load(path)
    path.write_text("monitor:\n  checks:\n    confidence: {test: t, threshold: 0.1}\n")
    with pytest.raises(
        config.ConfigError, match=r"monitor\.checks\.confidence\.test: 't' is not one"
    ):
        config.load(path)


@pytest.mark.parametrize(
    "impossible",
    [
        {"confidence": float("nan")},
        {"mean_intensity": float("inf")},
        {"label": -1},
        {"label": len(CLASSES)},
    ],
    ids=["nan-confidence", "infinite-statistic", "negative-class", "class-past-the-last"],
)
def test_a_row_with_an_impossible_value_is_unreadable(tmp_path: Path, impossible) -> None:
    """Not counted: a NaN would make every p-value NaN (never drift), a class outside the
    model's would crash or skew the class mix."""
    folder = _served_log(tmp_path, {"data.1.log": [_log_row()] * 3 + [_log_row(**impossible)]})
    served = monitor.read_log(folder, model_name="m", model_version="1", classes=len(CLASSES))
    assert len(served.predictions) == 3 and served.unreadable == 1
    assert np.isfinite(served.predictions.confidence).all()


def test_since_with_a_time_zone_is_compared_in_local_time(tmp_path: Path) -> None:
    folder = _served_log(
        tmp_path,
        {
            "data.1.log": [
                _log_row(when="2026-11-20T10:00:00"),
                _log_row(when="2026-11-21T10:00:00"),
            ]
        },
    )
    midnight = datetime(2026, 11, 21).astimezone()  # local midnight, with its zone
    served = monitor.read_log(
        folder, model_name="m", model_version="1", classes=len(CLASSES), since=midnight
    )
    assert len(served.predictions) == 1 and served.unreadable == 0
