"""Every misuse gets a 4xx JSON message that says what to send, and the next request is served.

Each case runs in process and (slow) against a real `bentoml serve` with the same limits
(conftest: MAX_BODY_BYTES 2 MiB, MAX_IMAGE_PIXELS 1,000,000, MAX_IMAGES 4, MAX_BATCH_ITEMS 16).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support import shapes
from tests.support.client import (
    assert_answer,
    assert_refused,
    chunks,
    drawing_bytes,
    image_file,
    multipart,
    oip_binary,
    oip_json,
)

GOOD = drawing_bytes(1, seed=42)
GARBAGE = np.random.default_rng(0).bytes(2000)
PIXELS = np.zeros((2, 28, 28), np.uint8)
NAN_ROW = "[" + ", ".join(["0.5"] * 783 + ["NaN"]) + "]"
INFINITY_ROW = "[" + ", ".join(["0.5"] * 783 + ["Infinity"]) + "]"
INFER = "/v2/models/shapes/infer"
GOOD_REQUESTS = {
    "/predict_image": {"files": {"image": image_file(GOOD)}},
    "/predict_images": {"files": [("images", image_file(GOOD))] * 2},
    "/predict": {"json": {"pixels": np.zeros((1, 784)).tolist()}},
    INFER: {"json": oip_json(PIXELS)},
}


def _truncated_png() -> bytes:
    noise = np.random.default_rng(1).integers(0, 256, size=(64, 64), dtype=np.uint8)
    data = shapes.encode(Image.fromarray(noise), "PNG")
    return data[: len(data) // 2]


def _too_many_pixels() -> bytes:
    image = Image.new("L", (1200, 1000), 255)
    image.paste(0, (500, 300, 700, 700))
    return shapes.encode(image, "PNG")


def _over_body_limit() -> bytes:
    return np.random.default_rng(2).bytes(3 * 1024 * 1024)


def _chunked_over_body_limit() -> dict[str, Any]:
    body, content_type = multipart({"image": image_file(_over_body_limit())})
    return {"content": chunks(body), "headers": {"content-type": content_type}}


def _text_in_the_file_field() -> dict[str, Any]:
    # A real multipart form (a file part makes httpx send multipart) whose `image` is text.
    body, content_type = multipart(
        {"other": image_file(GOOD)}, data={"image": "http://127.0.0.1:9/image.png"}
    )
    return {"content": body, "headers": {"content-type": content_type}}


def _raw(data: bytes | str, content_type: str) -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": content_type}}


def _image(data: bytes) -> dict[str, Any]:
    return {"files": {"image": image_file(data)}}


def _images(*uploads: bytes) -> dict[str, Any]:
    return {"files": [("images", image_file(data)) for data in uploads]}


def _pixels(pixels: Any) -> dict[str, Any]:
    return {"json": {"pixels": pixels}}


def _oip_tensor(**changes: Any) -> dict[str, Any]:
    request = oip_json(PIXELS)
    request["inputs"][0] |= changes
    return {"json": request}


UPLOAD_CASES = [
    ("/predict_image", lambda: _image(GARBAGE), 400, "not an image in a supported", "not-image"),
    ("/predict_image", lambda: _image(_truncated_png()), 400, "truncated or corrupt", "truncated"),
    ("/predict_image", lambda: _image(b""), 400, "empty", "empty-file"),
    ("/predict_image", lambda: {}, 400, "no body", "no-body"),
    ("/predict_image", lambda: _raw(b"", "image/png"), 400, "empty", "empty-raw-body"),
    ("/predict_image", lambda: _raw(GARBAGE, "image/png"), 400, "not an image", "raw-garbage"),
    (
        "/predict_image",
        lambda: _image(_too_many_pixels()),
        400,
        "1200x1000 = 1200000 pixels, over the limit of 1000000",
        "over-pixel-limit",
    ),
    (
        "/predict_image",
        lambda: _image(shapes.png_of_size(20000, 20000)),
        400,
        "too large|20000x20000",
        "decompression-bomb",
    ),
    (
        "/predict_image",
        lambda: _image(_over_body_limit()),
        413,
        "over the limit of 2097152 bytes",
        "body-over-limit",
    ),
    (
        "/predict_image",
        _chunked_over_body_limit,
        413,
        "over the limit of 2097152 bytes",
        "chunked-body-over-limit",
    ),
    (
        "/predict_image",
        lambda: {"files": {"picture": image_file(GOOD)}},
        400,
        "no field 'image' \\(it has 'picture'\\).*multipart field 'image'",
        "image-under-another-name",
    ),
    (
        "/predict_image",
        _text_in_the_file_field,
        400,
        "'image' holds text.*not a file.*never downloads URLs",
        "text-instead-of-a-file",
    ),
    (
        "/predict_image",
        lambda: {"data": {"image": "http://127.0.0.1:9/image.png"}},
        415,
        "does not read application/x-www-form-urlencoded",
        "url-encoded-form",
    ),
    (
        "/predict_image",
        lambda: {"json": {"pixels": [[0] * 784]}},
        415,
        "does not read application/json.*/predict",
        "json-to-predict-image",
    ),
    ("/predict_image", lambda: _raw("hello", "text/plain"), 415, "text/plain", "text-plain"),
    (
        "/predict_image",
        lambda: {"files": [("image", image_file(GOOD))] * 2},
        400,
        "2 'image' files.*/predict_images",
        "two-images-to-predict-image",
    ),
    (
        "/predict_image",
        lambda: _raw(b"--x\r\nbroken", "multipart/form-data"),
        400,
        "multipart body cannot be read",
        "multipart-without-boundary",
    ),
    (
        "/predict_images",
        lambda: _images(*[GOOD] * 5),
        400,
        "5 images is over the limit of 4",
        "too-many-images",
    ),
    (
        "/predict_images",
        lambda: _images(*[GOOD] * 9),
        400,
        "more than 4 images is over the limit of 4",
        "far-too-many-images",
    ),
    (
        "/predict_images",
        lambda: _images(GOOD, GARBAGE, GOOD),
        400,
        r"images\[1\]: the data \(2000 bytes\) is not an image",
        "one-bad-image-of-three",
    ),
    ("/predict_images", lambda: {}, 400, "no body", "no-images"),
    (
        "/predict_images",
        lambda: _raw(GOOD, "image/png"),
        415,
        "multipart file field 'images'",
        "raw-body-to-predict-images",
    ),
]
PIXEL_CASES = [
    (
        "/predict",
        lambda: _pixels(np.zeros((2, 27, 27)).tolist()),
        400,
        r"shape \(2, 27, 27\)",
        "wrong-shape",
    ),
    (
        "/predict",
        lambda: _pixels(np.zeros((2, 783)).tolist()),
        400,
        r"shape \(2, 783\)",
        "wrong-flat-shape",
    ),
    (
        "/predict",
        lambda: _raw(f'{{"pixels": [{NAN_ROW}]}}', "application/json"),
        400,
        "NaN or infinity",
        "nan",
    ),
    (
        "/predict",
        lambda: _raw(f'{{"pixels": [{INFINITY_ROW}]}}', "application/json"),
        400,
        "NaN or infinity",
        "infinity",
    ),
    ("/predict", lambda: _pixels([[-1, *[0] * 783]]), 400, r"negative value \(-1\)", "negative"),
    ("/predict", lambda: _pixels([[300, *[0] * 783]]), 400, "contains 300, above 255", "above-255"),
    ("/predict", lambda: _pixels([]), 400, "empty batch", "empty-batch"),
    (
        "/predict",
        lambda: _pixels([[0] * 784] * 17),
        400,
        "17 images, over the limit of 16",
        "over-batch-limit",
    ),
    ("/predict", lambda: {"json": {}}, 400, "pixels is missing", "no-pixels"),
    (
        "/predict",
        lambda: _raw('{"pixels": [[0, 1', "application/json"),
        400,
        "Invalid JSON",
        "broken-json",
    ),
    (
        "/predict",
        lambda: {"files": {"pixels": image_file(GOOD)}},
        415,
        "reads JSON, not multipart/form-data.*/predict_image",
        "image-to-predict",
    ),
    (
        "/predict",
        lambda: _raw(GOOD, "image/png"),
        415,
        "reads JSON, not image/png",
        "raw-image-to-predict",
    ),
]
OIP_CASES = [
    (
        INFER,
        lambda: _oip_tensor(shape=[2, 27, 27], data=[0] * 2 * 27 * 27),
        400,
        r"shape \[2, 27, 27\]; expected \[N, 28, 28\]",
        "oip-wrong-shape",
    ),
    (
        INFER,
        lambda: _oip_tensor(datatype="INT64"),
        400,
        "datatype 'INT64'.*FP32.*UINT8",
        "oip-wrong-datatype",
    ),
    (
        INFER,
        lambda: _oip_tensor(data=[0] * 100),
        400,
        "holds 100 values but the shape needs 1568",
        "oip-wrong-length",
    ),
    (INFER, lambda: _oip_tensor(name="pixels"), 400, "unknown input 'pixels'", "oip-wrong-name"),
    (
        INFER,
        lambda: _oip_tensor(datatype="FP32", data=[2.0] * 1568),
        400,
        r"FP32 values must be in \[0, 1\]",
        "oip-fp32-out-of-range",
    ),
    (
        INFER,
        lambda: _oip_tensor(shape=[17, 28, 28], data=[0] * 17 * 784),
        400,
        "17 images, over the limit of 16",
        "oip-over-batch-limit",
    ),
    (
        INFER,
        lambda: _raw(b'{"inputs": [', "application/json"),
        400,
        "not valid JSON",
        "oip-broken-json",
    ),
    (
        INFER,
        lambda: {"json": {"outputs": []}},
        400,
        "`inputs` must be a list of one tensor",
        "oip-no-inputs",
    ),
    (
        INFER,
        lambda: oip_binary(PIXELS) | {"headers": {"Inference-Header-Content-Length": "9999"}},
        400,
        "Inference-Header-Content-Length is '9999'",
        "oip-header-length-too-long",
    ),
    (
        INFER,
        lambda: _truncated_binary(),
        400,
        "carries 1000 bytes of binary data",
        "oip-binary-too-short",
    ),
    (
        "/v2/models/dogs/infer",
        lambda: {"json": oip_json(PIXELS)},
        404,
        "no model named 'dogs' here; this server serves 'shapes'",
        "oip-unknown-model",
    ),
    (
        "/v2/models/shapes/versions/7/infer",
        lambda: {"json": oip_json(PIXELS)},
        404,
        "no version '7'",
        "oip-unknown-version",
    ),
]


def _truncated_binary() -> dict[str, Any]:
    request = oip_binary(PIXELS)
    header = int(request["headers"]["Inference-Header-Content-Length"])
    request["content"] = request["content"][: header + 1000]
    return request


@pytest.mark.parametrize(
    ("endpoint", "request_arguments", "status", "message"),
    [pytest.param(*case[:4], id=case[4]) for case in UPLOAD_CASES + PIXEL_CASES + OIP_CASES],
)
def test_misuse_is_refused_and_the_next_request_is_served(
    client: httpx.Client,
    endpoint: str,
    request_arguments: Callable[[], dict[str, Any]],
    status: int,
    message: str,
) -> None:
    assert_refused(client.post(endpoint, **request_arguments()), status, message)
    # The OIP cases with another model name or version are followed by a good OIP request.
    following = endpoint if endpoint in GOOD_REQUESTS else INFER
    after = client.post(following, **GOOD_REQUESTS[following])
    assert after.status_code == 200, after.text
    if following != INFER:
        answers = after.json()
        for answer in answers if isinstance(answers, list) else [answers]:
            assert_answer(answer)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/predict_image", "POST"),
        ("PUT", "/predict_images", "POST"),
        ("GET", "/predict", "POST"),
        ("DELETE", "/metadata", "POST"),
        ("GET", INFER, "POST"),
        ("POST", "/v2/health/ready", "GET"),
        ("POST", "/v2/models/shapes", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(
    client: httpx.Client, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, path)
    assert_refused(response, 405, f"{path} .*{method}")
    assert allowed in response.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/nope"),
        ("POST", "/predictions"),
        ("POST", "/v2/models/shapes/infer/extra"),
        ("GET", "/ui/static/missing.js"),
    ],
)
def test_unknown_path_is_404_naming_the_endpoints(
    client: httpx.Client, method: str, path: str
) -> None:
    assert_refused(client.request(method, path), 404, f"no endpoint {path}: POST /predict_image")
    after = client.post("/predict_image", **GOOD_REQUESTS["/predict_image"])
    assert after.status_code == 200, after.text
