"""The int8 file with its head in float against the same file quantized to the end.

    python bench/int8_head.py --onnx <the version's model.onnx> [--data data/prepared]

Quantizes the registered float32 file twice on the same training images (`evaluate.int8`'s
calibration sample): as `pipeline.model.int8.quantize` does (the last weighted layer and the
softmax stay float) and, as the baseline, every layer quantized. Prints what the int8 rule sees
for each on the validation split: accuracy, classes kept, how far the answers' sums are from 1,
ECE, and the rule's verdict.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import config
from pipeline.model import int8, onnx_export


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="a float32 model.onnx")
    parser.add_argument("--data", type=Path, default=Path("data/prepared"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    rule = config.load(args.params).evaluate.int8
    with np.load(args.data / "val.npz") as val, np.load(args.data / "train.npz") as train:
        images, labels = val["x"], val["labels"]
        calibration = int8.calibration_sample(train["x"], rule.calibration_images)
    fp32 = onnx_export.onnx_probabilities(args.onnx, images)
    with tempfile.TemporaryDirectory() as scratch:
        head_float = int8.quantize(args.onnx, Path(scratch) / "head-float.onnx", calibration)
        with mock.patch.object(int8, "head_nodes", lambda path: []):
            baseline = int8.quantize(args.onnx, Path(scratch) / "all-int8.onnx", calibration)
        print(f"head kept float: {int8.head_nodes(args.onnx)}")
        for name, path in (("all layers int8 (baseline)", baseline), ("head float", head_float)):
            decision = int8.decide(
                rule, labels=labels, fp32=fp32, int8=onnx_export.onnx_probabilities(path, images)
            )
            print(f"{name}: {decision.reason}")


if __name__ == "__main__":
    main()
