"""In-process cost of turning an upload into model input (`serving.preprocess.preprocess`).

    python bench/preprocess_cost.py
    python bench/preprocess_cost.py --data data/prepared/test.npz --images 300 --repeats 9

Two uploads of the same test images, as `bench/serve_load.py` sends them: the grey 28x28 PNG of
its single-image cells, and the photo-like upload of its photo cell (179x218 RGB, dark on
unevenly lit paper, `serve_payloads.photo_like_png`); and, reported only, the photo-like upload
with sensor noise (2 grey levels), whose PNG is several times larger. Each is timed as a whole
and split into decoding (`load_image`) and the rest (`to_model_input`), one thread, the median of
--repeats passes over --images images; the photo-like upload is judged against issue 37's goal.

`upload_parts` measures the same for `bench/serve_load.py`: what a single-image request's upload
costs in process, preprocessing and the served model's forward pass, the parts its server CPU is
compared with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Run as a script, Python puts bench/ first on sys.path; the repository root makes `bench`,
# `serving` and `tests.support` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import serve_payloads
from serving import preprocess

ROOT = Path(__file__).resolve().parents[1]
GOAL_PHOTO_MS = 0.4
# Fashion-MNIST's layout (the champion's content_size); MNIST's 20 costs the same.
CONTENT_SIZE = 28
NOISE_LEVELS = 2.0


def median_ms(
    function: Callable[[object], object],
    items: list,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median over `repeats` passes of the milliseconds per item of `function`, by `clock`."""
    passes = []
    for _ in range(repeats):
        started = clock()
        for item in items:
            function(item)
        passes.append((clock() - started) * 1000 / len(items))
    return statistics.median(passes)


def cost(uploads: list[bytes], repeats: int) -> dict[str, float]:
    """ms per upload: the whole preprocessing, its decoding and the rest."""
    max_pixels = 4096 * 4096
    decoded = [preprocess.load_image(data, max_pixels=max_pixels) for data in uploads]
    for data in uploads:  # warm-up: imports, caches
        preprocess.preprocess(data, content_size=CONTENT_SIZE)
    return {
        "whole": median_ms(
            lambda data: preprocess.preprocess(data, content_size=CONTENT_SIZE), uploads, repeats
        ),
        "decode": median_ms(
            lambda data: preprocess.load_image(data, max_pixels=max_pixels), uploads, repeats
        ),
        "to_model_input": median_ms(
            lambda image: preprocess.to_model_input(image, content_size=CONTENT_SIZE),
            decoded,
            repeats,
        ),
    }


@dataclass(frozen=True)
class Parts:
    """What one upload costs in process, one thread: preprocessing and the forward pass, ms."""

    preprocess_ms: float
    forward_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.forward_ms


def upload_parts(
    uploads: dict[str, bytes],
    *,
    model_file: Path,
    content_size: int,
    calls: int = 200,
    repeats: int = 7,
) -> dict[str, Parts]:
    """Per kind: the median ms of preprocessing its upload and of the model's forward pass on the
    result, in a session set up as a serving worker's with one thread (serving.model)."""
    from serving.model import open_session

    session = open_session(model_file, threads=1)
    name = session.get_inputs()[0].name
    parts = {}
    for kind, data in uploads.items():
        image = preprocess.preprocess(data, content_size=content_size)[np.newaxis]
        session.run(None, {name: image})
        parts[kind] = Parts(
            preprocess_ms=median_ms(
                lambda upload: preprocess.preprocess(upload, content_size=content_size),
                [data] * calls,
                repeats,
            ),
            forward_ms=median_ms(
                lambda feed: session.run(None, {name: feed}), [image] * calls, repeats
            ),
        )
    return parts


def single_image_parts(
    kinds: list[str], images: np.ndarray, *, model_file: Path, content_size: int
) -> dict[str, Parts]:
    """`upload_parts` of the upload of each single-image kind of `bench/serve_load.py` among
    `kinds`, printed as they are measured: with the floor's server CPU per request, the parts a
    single-image request's server CPU is compared with."""
    uploads = serve_payloads.single_uploads(images)
    parts = upload_parts(
        {kind: uploads[kind] for kind in kinds if kind in uploads},
        model_file=model_file,
        content_size=content_size,
    )
    for kind, found in parts.items():
        print(
            f"- parts in process ({kind}, {len(uploads[kind]):,} bytes, one thread): preprocess"
            f" {found.preprocess_ms:.3f} ms + forward {found.forward_ms:.3f} ms"
        )
    return parts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / "data" / "prepared" / "test.npz",
        help="test split with x (N, 28, 28) floats in [0, 1]; synthetic images if missing",
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be >= 1")

    images, _, source = serve_payloads.load_images(args.data, args.images)
    kinds = {
        "grey 28x28 PNG (single)": [serve_payloads.png_bytes(image) for image in images],
        "photo-like 179x218 RGB PNG (photo)": [
            serve_payloads.photo_like_png(image) for image in images
        ],
        f"photo-like with sensor noise ({NOISE_LEVELS:g} levels)": [
            serve_payloads.photo_like_png(image, noise=NOISE_LEVELS, seed=index)
            for index, image in enumerate(images)
        ],
    }
    print(
        f"# Preprocessing cost in process: {len(images)} images from {source}, content_size"
        f" {CONTENT_SIZE}, median of {args.repeats} passes, one thread\n"
    )
    print("| upload | mean bytes | ms/image | decode ms | to_model_input ms |")
    print("|---|---:|---:|---:|---:|")
    found = {}
    for name, uploads in kinds.items():
        found[name] = figures = cost(uploads, args.repeats)
        size = statistics.fmean(len(data) for data in uploads)
        print(
            f"| {name} | {size:,.0f} | {figures['whole']:.3f} | {figures['decode']:.3f}"
            f" | {figures['to_model_input']:.3f} |"
        )
    photo = found["photo-like 179x218 RGB PNG (photo)"]["whole"]
    verdict = "PASS" if photo <= GOAL_PHOTO_MS else "MISS"
    print(
        f"\n- **{verdict}** photo-like upload: {photo:.3f} ms per image against the goal of"
        f" {GOAL_PHOTO_MS} ms ({photo / GOAL_PHOTO_MS:.2f}x the goal)"
    )


if __name__ == "__main__":
    main()
