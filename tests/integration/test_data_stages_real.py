"""download + prepare on the real Fashion-MNIST, when the machine has Debian's copy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import contracts
from pipeline.stages import download, prepare

SYSTEM_FASHION = download.SYSTEM_ROOT / "fashion-mnist"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not SYSTEM_FASHION.is_dir(),
        reason=f"{SYSTEM_FASHION} is absent (apt-get install dataset-fashion-mnist)",
    ),
]


def test_download_then_prepare_full_fashion_mnist(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  dataset: fashion_mnist\nprepare:\n  val_fraction: 0.1\n")
    raw, prepared = tmp_path / "raw", tmp_path / "prepared"
    argv = [f"--params={params}", f"--out={raw}", f"--system-root={download.SYSTEM_ROOT}"]
    assert download.main(argv) == 0
    assert contracts.RawManifest.read(raw / "manifest.json").source.kind == "system"
    prepare.main(
        [
            f"--params={params}",
            f"--raw={raw}",
            f"--out={prepared}",
            f"--metrics={tmp_path / 'prepare.json'}",
            f"--class-counts={tmp_path / 'counts'}",
            f"--plot={tmp_path / 'samples.png'}",
        ]
    )
    meta = contracts.PreparedMeta.read(prepared / "meta.json")
    assert meta.counts == {"train": 54000, "val": 6000, "test": 10000}
    assert meta.class_names[0] == "T-shirt/top" and meta.class_names[9] == "Ankle boot"
    sizes = json.loads((tmp_path / "prepare.json").read_text())
    assert sizes == {"examples": {"train": 54000, "val": 6000, "test": 10000}}
    # Fashion-MNIST is balanced, and the stratified split keeps it so: 5,400 / 600 / 1,000.
    for split, per_class in (("train", 5400), ("val", 600), ("test", 1000)):
        rows = (tmp_path / "counts" / f"{split}.csv").read_text().splitlines()[1:]
        assert [row.split(",") for row in rows] == [
            [f'"{name}"', str(per_class)] for name in meta.class_names
        ]
    with np.load(prepared / "val.npz") as val:
        assert val["x"].dtype == np.float32 and val["x"].shape == (6000, 28, 28)
        assert float(val["x"].min()) >= 0.0 and float(val["x"].max()) == 1.0
