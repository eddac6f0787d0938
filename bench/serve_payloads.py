"""What the load sends and how the answers are read, for each kind of request.

Kinds (ours; `/predict_image` and the OIP model name are the service's contract):

    single     POST /predict_image, multipart field `image`, a PNG of one test image
    photo      POST /predict_image, multipart, the same test image as a photo-like upload:
               179x218 RGB, dark blue on cream paper lit unevenly (`photo_like_png`)
    image_raw  POST /predict_image, the same PNG as the raw body (Content-Type: image/png)
    images     POST /predict_images, multipart, the field `images` repeated (--upload-batch PNGs)
    batch      POST /predict, JSON {"pixels": uint8 (N, 28, 28)} (--batch-size images)
    oip        POST /v2/models/<name>/infer, Open Inference Protocol with the binary tensor
               extension: JSON header + raw UINT8 (N, 28, 28), as tritonclient sends by default;
               JSON outputs asked for ("binary_data": false)

Ours is always loaded with the floor too: `GET /livez` on the same server, what the HTTP stack
alone allows; the report gives each single-image cell as a fraction of it.

MLflow's scoring server takes `{"inputs": float (N, 28, 28)}` on /invocations (the pyfunc
signature is float32; values go with 4 decimals): its "single" is the baseline of ours' single-
image kinds, its "batch" that of the multi-image ones.
"""

from __future__ import annotations

import asyncio
import io
import json
import urllib.parse
from pathlib import Path

import numpy as np

from bench.serve_driver import Request, get_once, post_once
from tests.support import servers

# Each kind of ours -> the MLflow kind its throughput is compared with.
BASELINE = {
    "single": "single",
    "photo": "single",
    "image_raw": "single",
    "images": "batch",
    "batch": "batch",
    "oip": "batch",
}
KINDS = tuple(BASELINE)
DEFAULT_KINDS = ("single", "photo", "image_raw", "batch", "oip")
SINGLE_IMAGE_KINDS = ("single", "photo", "image_raw")
# GET /livez: BentoML's liveness probe, no body and no model; no MLflow baseline.
FLOOR = "floor"
MULTIPART_BOUNDARY = "serve-load-boundary-7c1f9b"
OIP_INPUT, OIP_OUTPUT = "images", "probabilities"
OIP_HEADER_LENGTH = "Inference-Header-Content-Length"
# OIP datatypes of the outputs we can read in binary form, should a server send them so.
OIP_DTYPES = {"FP32": "<f4", "FP64": "<f8", "FP16": "<f2"}


class AnswerError(RuntimeError):
    """A server answered a check request with an error or with something unreadable."""


def load_images(path: Path, count: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """`count` test images as float32 (N, 28, 28) in [0, 1], their labels, where they came from.

    Synthetic images (no labels) stand in when the prepared test split is missing: throughput
    does not depend on the pixels, only the answers' agreement is checked then.
    """
    if path.exists():
        with np.load(path) as data:
            images = np.resize(np.asarray(data["x"][:count], dtype=np.float32), (count, 28, 28))
            labels = data.get("labels")
        if labels is not None and len(labels) >= count:
            return images, np.asarray(labels[:count]), str(path)
        return images, None, str(path)
    from tests.support import synthetic

    pixels, _ = synthetic.make_split(count, seed=0)
    return pixels.astype(np.float32) / 255, None, "synthetic images (tests/support/synthetic.py)"


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


# A photo-like upload: the size of a user's crop of a phone photo (issue 37 measured 179x218), the
# object across 70% of its width, dark blue ink on cream paper, light falling off by 8% from the
# top left corner to the bottom right one, as under a desk lamp.
PHOTO_SIZE = (179, 218)
PHOTO_OBJECT_FRACTION = 0.7
PHOTO_INK, PHOTO_PAPER = (40, 40, 120), (245, 240, 230)
PHOTO_FALL_OFF = 0.08


def photo_like_png(image: np.ndarray, *, noise: float = 0.0, seed: int = 0) -> bytes:
    """A test image (float (28, 28) in [0, 1], light on dark) as a user might upload a photo of
    it: PHOTO_SIZE RGB, dark on light, unevenly lit; `noise` adds sensor noise (standard
    deviation in grey levels), which makes the PNG several times larger and slower to decode."""
    from PIL import Image

    width, height = PHOTO_SIZE
    side = round(PHOTO_OBJECT_FRACTION * width)
    drawn = Image.fromarray(to_uint8(image), mode="L").resize(
        (side, side), Image.Resampling.BILINEAR
    )
    paper = np.zeros((height, width), dtype=np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    paper[top : top + side, left : left + side] = np.asarray(drawn, dtype=np.float32) / 255
    ink, cream = np.array(PHOTO_INK, np.float32), np.array(PHOTO_PAPER, np.float32)
    rows, columns = np.linspace(0, 1, height)[:, None], np.linspace(0, 1, width)[None, :]
    light = (1 - PHOTO_FALL_OFF * (rows + columns) / 2)[..., None]
    rgb = (cream + (ink - cream) * paper[..., None]) * light
    if noise:
        rgb = rgb + np.random.default_rng(seed).normal(0.0, noise, rgb.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB").save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def multipart(field_name: str, files: list[bytes], content_type: str = "image/png") -> bytes:
    """A multipart/form-data body with `files` under `field_name`, boundary MULTIPART_BOUNDARY."""
    parts = [
        (
            f"--{MULTIPART_BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="{field_name}"; filename="image{index}.png"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        + content
        + b"\r\n"
        for index, content in enumerate(files)
    ]
    return b"".join(parts) + f"--{MULTIPART_BOUNDARY}--\r\n".encode()


def oip_request(pixels: np.ndarray, model_name: str) -> Request:
    """An OIP infer request with the binary tensor extension: JSON header, then the raw bytes."""
    raw = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    header = {
        "inputs": [
            {
                "name": OIP_INPUT,
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": OIP_OUTPUT, "parameters": {"binary_data": False}}],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    path = f"/v2/models/{urllib.parse.quote(model_name, safe='')}/infer"
    return Request(
        path,
        head + raw,
        "application/octet-stream",
        len(pixels),
        ((OIP_HEADER_LENGTH, str(len(head))),),
    )


def single_uploads(images: np.ndarray) -> dict[str, bytes]:
    """The image file each single-image kind uploads: the first test image as a grey PNG, or as
    a photo-like upload (`photo`)."""
    png = png_bytes(images[0])
    return {"single": png, "photo": photo_like_png(images[0]), "image_raw": png}


def single_image_request(png: bytes, field_name: str = "image") -> Request:
    """POST /predict_image with one PNG as a multipart upload under `field_name`."""
    form = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
    return Request("/predict_image", multipart(field_name, [png]), form, 1)


def ours_requests(images: np.ndarray, *, model_name: str, upload_batch: int) -> dict[str, Request]:
    """Every kind of ours: single images are the first test image, batches all of `images`."""
    pixels = to_uint8(images)
    single = single_uploads(images)
    form = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
    uploads = [png_bytes(image) for image in images[:upload_batch]]
    batch = json.dumps({"pixels": pixels.tolist()}, separators=(",", ":")).encode()
    return {
        FLOOR: Request("/livez", b"", "text/plain", 0, method="GET"),
        "single": single_image_request(single["single"]),
        "photo": single_image_request(single["photo"]),
        "image_raw": Request("/predict_image", single["image_raw"], "image/png", 1),
        "images": Request("/predict_images", multipart("images", uploads), form, len(uploads)),
        "batch": Request("/predict", batch, "application/json", len(images)),
        "oip": oip_request(pixels, model_name),
    }


def mlflow_requests(images: np.ndarray) -> dict[str, Request]:
    """MLflow's scoring server takes `{"inputs": ...}` tensors; the signature says float32."""

    def body(batch: np.ndarray) -> bytes:
        return json.dumps(
            {"inputs": np.round(batch.astype(np.float64), 4).tolist()}, separators=(",", ":")
        ).encode()

    return {
        "single": Request("/invocations", body(images[:1]), "application/json", 1),
        "batch": Request("/invocations", body(images), "application/json", len(images)),
    }


def requests_for(
    kinds: list[str], images: np.ndarray, *, model_name: str, upload_batch: int, mlflow: bool
) -> dict[str, dict[str, Request]]:
    """server -> kind -> request: ours of `kinds`, and MLflow's baselines of them."""
    ours = ours_requests(images, model_name=model_name, upload_batch=upload_batch)
    requests = {"ours": {FLOOR: ours[FLOOR]} | {kind: ours[kind] for kind in kinds}}
    if mlflow:
        baselines = {BASELINE[kind] for kind in kinds}
        theirs = mlflow_requests(images)
        requests["mlflow"] = {kind: theirs[kind] for kind in theirs if kind in baselines}
    return requests


def labels(server: str, kind: str, status: int, headers: dict[str, str], payload: bytes) -> list:
    """The predicted class of each image in an answer; AnswerError when there is none."""
    if not 200 <= status < 300:
        raise AnswerError(f"HTTP {status}: {payload[:300]!r}")
    if kind == FLOOR:
        return []
    try:
        if server == "mlflow":
            return argmax(json.loads(payload)["predictions"])
        if kind == "oip":
            return oip_labels(headers, payload)
        answer = json.loads(payload)
        if kind in SINGLE_IMAGE_KINDS:
            return [int(answer["label"])]
        return [int(item["label"]) for item in answer]
    except (ValueError, KeyError, TypeError, IndexError, StopIteration) as error:
        reason = f"{type(error).__name__}: {error}"
        raise AnswerError(f"unreadable answer ({reason}): {payload[:300]!r}") from None


def argmax(probabilities: object, shape: list[int] | None = None) -> list[int]:
    array = np.asarray(probabilities, dtype=np.float64)
    if shape is not None:
        array = array.reshape(shape)
    return [int(label) for label in array.argmax(axis=1)]


def oip_labels(headers: dict[str, str], payload: bytes) -> list[int]:
    """Classes from an OIP infer answer: JSON outputs, or binary ones after a JSON header."""
    by_name = {key.lower(): value for key, value in headers.items()}
    length = int(by_name.get(OIP_HEADER_LENGTH.lower(), len(payload)))
    answer = json.loads(payload[:length])
    output = next(item for item in answer["outputs"] if item["name"] == OIP_OUTPUT)
    if "data" in output:
        return argmax(output["data"], output["shape"])
    # Binary outputs follow the header in the order of "outputs"; ours is asked for alone.
    size = output["parameters"]["binary_data_size"]
    dtype = OIP_DTYPES[output["datatype"]]
    return argmax(np.frombuffer(payload[length : length + size], dtype=dtype), output["shape"])


def check_answers(
    answers: dict[tuple[str, str], list[int]], *, true_labels: np.ndarray | None, classes: int
) -> tuple[list[str], dict[str, str]]:
    """Lines on the answers' agreement, and the kinds of ours whose answers are wrong (why).

    Raises AnswerError when ours and MLflow disagree on the same pixels: then the two servers do
    not serve the same model version and no ratio between them means anything.
    """
    lines: list[str] = []
    failures: dict[str, str] = {}
    for (server, kind), found in answers.items():
        if any(not 0 <= label < classes for label in found):
            if server == "mlflow":
                raise AnswerError(f"MLflow {kind}: labels outside [0, {classes}): {found[:10]}")
            failures[kind] = f"labels outside [0, {classes}): {found[:10]}"
    _check_same_model(answers, lines)
    reference = answers.get(("ours", "batch")) or answers.get(("mlflow", "batch"))
    for kind in ("images", "oip"):
        if reference is not None and ("ours", kind) in answers and kind not in failures:
            found = answers[("ours", kind)]
            # /predict_images goes through the upload preprocessing (re-crop, rescale): only the
            # raw-pixel kinds must agree with /predict.
            agreement = float(np.mean(np.asarray(found) == np.asarray(reference[: len(found)])))
            lines.append(
                f"ours {kind} vs /predict, {len(found)} images: same class for {agreement:.1%}"
            )
            if kind == "oip" and agreement < 0.99:
                failures[kind] = (
                    f"answers differ from /predict's on the same pixels ({agreement:.1%})"
                )
    _check_single_images(answers, lines, failures)
    if true_labels is not None:
        for (server, kind), found in answers.items():
            if len(found) > 1:
                accuracy = float(np.mean(np.asarray(found) == true_labels[: len(found)]))
                lines.append(f"accuracy, {server} {kind}, {len(found)} images: {accuracy:.1%}")
    return lines, failures


def _check_same_model(answers: dict[tuple[str, str], list[int]], lines: list[str]) -> None:
    ours, theirs = answers.get(("ours", "batch")), answers.get(("mlflow", "batch"))
    if ours is None or theirs is None:
        return
    agreement = float(np.mean(np.asarray(ours) == np.asarray(theirs)))
    lines.append(
        f"ours /predict vs MLflow /invocations, {len(ours)} images: same class for {agreement:.1%}"
    )
    # MLflow gets the pixels rounded to 4 decimals; only a near-tie may flip, never many.
    single = answers.get(("mlflow", "single"))
    if agreement < 0.99 or (single is not None and single[0] != ours[0]):
        raise AnswerError("the two servers disagree: is it the same model version? " + lines[-1])


def _check_single_images(
    answers: dict[tuple[str, str], list[int]], lines: list[str], failures: dict[str, str]
) -> None:
    multipart_label = answers.get(("ours", "single"))
    raw_label = answers.get(("ours", "image_raw"))
    if (
        multipart_label
        and raw_label
        and multipart_label != raw_label
        and "image_raw" not in failures
    ):
        failures["image_raw"] = (
            f"class {raw_label[0]} for the raw PNG body, {multipart_label[0]} for the same PNG"
            " as a multipart upload"
        )
    pixels = answers.get(("ours", "batch"))
    upload = multipart_label or raw_label
    if pixels and upload:
        lines.append(
            f"ours /predict_image (PNG, re-centred by preprocessing) says class {upload[0]},"
            f" /predict on the raw pixels says {pixels[0]}"
            + ("" if upload[0] == pixels[0] else " (the upload path re-crops and rescales)")
        )


def oip_lines(base_url: str, name: str) -> list[str]:
    """What the OIP health and model metadata endpoints answer (shown, never fatal)."""
    lines = []
    for path in ("/v2/health/ready", f"/v2/models/{name}"):
        status, payload = asyncio.run(get_once(base_url, path))
        lines.append(f"OIP GET {path}: HTTP {status} {payload[:160].decode(errors='replace')}")
    return lines


def probe(
    name: str,
    server: servers.Server,
    requests: dict[str, Request],
    *,
    timeout_s: float,
) -> tuple[dict[tuple[str, str], list[int]], dict[str, str]]:
    """Send each of `name`'s requests once: the labels answered, by (server, kind), and the
    kinds that failed. A kind of ours that answers with an error is a failed cell (the service
    may not have that endpoint yet); MLflow's baseline failing stops the benchmark."""
    answers: dict[tuple[str, str], list[int]] = {}
    failures: dict[str, str] = {}
    for kind, request in requests.items():
        answer = asyncio.run(post_once(server.url, request, timeout_s=timeout_s))
        try:
            answers[(name, kind)] = labels(name, kind, *answer)
        except AnswerError as error:
            if name == "mlflow":
                raise AnswerError(f"the MLflow server, {kind}: {error}") from None
            failures[kind] = f"{request.path}: {error}"
    return answers, failures
