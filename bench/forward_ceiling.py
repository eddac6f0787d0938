"""What the served file's forward pass alone allows on this machine.

    python bench/forward_ceiling.py --onnx <model.onnx>       # batches of 256 test images

Counts the file's multiply-adds per image from its ONNX graph (convolutions and matrix products,
the rest is noise), times its forward pass on a batch in this process with one thread, set up as
a serving worker's session (`serving.model.open_session`), and says how many images per second
the usable cores could give if they did nothing but that forward pass. A goal in images/s above
that ceiling cannot be met by the service around the model, only by a cheaper model or more
cores; the achieved GFLOP/s says how close the runtime already is to what a core can do.
`bench/serve_load.py` prints it beside its batch cells.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 256


@dataclass(frozen=True)
class Ceiling:
    """The forward pass of one batch: multiply-adds per image, CPU ms per image, usable cores."""

    multiply_adds: int
    batch: int
    ms_per_image: float
    cores: int

    @property
    def images_per_s(self) -> float:
        """Images/s of the usable cores if each ran only this forward pass."""
        return self.cores * 1000 / self.ms_per_image

    @property
    def gflops(self) -> float:
        """Floating-point operations per second of one core (a multiply-add is two)."""
        return 2 * self.multiply_adds / (self.ms_per_image / 1000) / 1e9

    def text(self) -> str:
        return (
            f"{self.multiply_adds / 1e6:.1f} M multiply-adds per image; a batch of {self.batch}"
            f" costs {self.ms_per_image:.3f} ms of CPU per image on one thread"
            f" ({self.gflops:.0f} GFLOP/s), so {self.cores} cores doing nothing else allow at"
            f" most {self.images_per_s:,.0f} images/s"
        )


def multiply_adds(path: Path) -> int:
    """Multiply-adds of one image through the file's Conv, MatMul and Gemm nodes whose weights
    are constants (float or quantized), from the graph's shapes inferred with a batch of one."""
    import onnx

    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*model.graph.value_info, *model.graph.output]
    }
    weights = {tensor.name: list(tensor.dims) for tensor in model.graph.initializer}
    # A quantized file (QDQ) gives its weights through DequantizeLinear: the same dims.
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in weights:
            weights[node.output[0]] = weights[node.input[0]]
    total = 0
    for node in model.graph.node:
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if weight is None or node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        output = shapes.get(node.output[0]) or []
        if node.op_type == "Conv":
            # Each output pixel of each output channel: input channels x kernel.
            total += int(np.prod(weight)) * int(np.prod(output[2:] or [1]))
        else:
            # Each output row of the product (a batch of one may still have several).
            rows = int(np.prod(output[:-1])) if output and all(output) else 1
            total += int(np.prod(weight)) * rows
    return total


def measure(path: Path, images: np.ndarray, *, repeats: int = 5) -> Ceiling:
    """The ceiling of `path` on `images` (N, 28, 28), float32 in [0, 1]: the median over
    `repeats` of one batch's CPU per image, after a warm-up call."""
    from bench import preprocess_cost
    from serving.model import open_session

    session = open_session(path, threads=1)
    feed = {session.get_inputs()[0].name: np.ascontiguousarray(images, dtype=np.float32)}
    session.run(None, feed)
    batch_ms = preprocess_cost.median_ms(
        lambda batch: session.run(None, batch), [feed], repeats, clock=time.process_time
    )
    return Ceiling(
        multiply_adds=multiply_adds(path),
        batch=len(images),
        ms_per_image=batch_ms / len(images),
        cores=len(os.sched_getaffinity(0)),
    )


def main(argv: list[str] | None = None) -> None:
    from bench import serve_payloads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", type=Path, required=True, help="the ONNX file to measure")
    parser.add_argument("--data", type=Path, default=Path("data/prepared/test.npz"))
    parser.add_argument("--batch", type=int, default=BATCH)
    args = parser.parse_args(argv)
    images, _, source = serve_payloads.load_images(args.data, args.batch)
    print(f"{args.onnx} on {source}: {measure(args.onnx, images).text()}")


if __name__ == "__main__":
    main()
