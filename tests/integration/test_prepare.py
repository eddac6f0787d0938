"""Stage `prepare` as DVC runs it: raw folder and params in, splits, meta, metrics and plot out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import contracts
from pipeline.data import idx
from pipeline.stages import prepare
from tests.support import synthetic


def run_prepare(tmp_path: Path, raw: Path) -> dict[str, Path]:
    (tmp_path / "params.yaml").write_text("prepare:\n  val_fraction: 0.25\n  seed: 1\n")
    paths = {
        "out": tmp_path / "prepared",
        "metrics": tmp_path / "m.json",
        "class-counts": tmp_path / "counts",
        "plot": tmp_path / "p" / "s.png",
    }
    prepare.main(
        [
            f"--params={tmp_path / 'params.yaml'}",
            f"--raw={raw}",
            *(f"--{name}={path}" for name, path in paths.items()),
        ]
    )
    return paths


def test_main_writes_splits_meta_metrics_and_plot(tmp_path: Path):
    raw = tmp_path / "raw"
    manifest = synthetic.write_raw(raw, n_train=120, n_test=40)
    paths = run_prepare(tmp_path, raw)
    out = paths["out"]
    with np.load(out / "train.npz") as train:
        assert train["x"].shape == (90, 28, 28)
        assert tuple(train["class_names"]) == synthetic.CLASS_NAMES
        raw_images = idx.read(raw / manifest.files["train_images"].file)
        np.testing.assert_allclose(train["x"].max(), raw_images.max() / 255)
    meta = contracts.PreparedMeta.read(out / "meta.json")
    assert meta == contracts.PreparedMeta(
        dataset="synthetic",
        source=manifest.source,
        class_names=synthetic.CLASS_NAMES,
        sha256=manifest.sha256,
        counts={"train": 90, "val": 30, "test": 40},
        val_fraction=0.25,
        seed=1,
    )
    sizes = json.loads(paths["metrics"].read_text())
    assert sizes == {"examples": {"train": 90, "val": 30, "test": 40}}
    val_counts = (paths["class-counts"] / "val.csv").read_text().splitlines()
    assert val_counts[0] == "class,count" and len(val_counts) == 1 + len(synthetic.CLASS_NAMES)
    assert '"class_3",3' in val_counts
    assert sorted(path.name for path in paths["class-counts"].iterdir()) == [
        "test.csv",
        "train.csv",
        "val.csv",
    ]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*tmp"))


def test_a_manifest_from_another_version_fails_naming_the_key(tmp_path: Path):
    raw = tmp_path / "raw"
    synthetic.write_raw(raw, n_train=120, n_test=40)
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["classes"] = manifest.pop("class_names")
    (raw / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(contracts.ContractError, match=r"manifest\.json: unknown key.*'classes'"):
        run_prepare(tmp_path, raw)
    assert not (tmp_path / "prepared").exists()
