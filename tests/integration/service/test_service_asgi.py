"""The service's answers, in process through `Classifier.to_asgi()`: every upload format and
mode, raw bodies, batches of images and pixels, checked against the model itself."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import onnxruntime
import pytest
from starlette.testclient import TestClient

from serving import preprocess
from tests.support.client import assert_answer, chunks, drawing_bytes, image_file, multipart
from tests.support.shapes import SHAPES

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
MODES = ("L", "RGB", "RGBA")
# JPEG has no alpha channel; Pillow reads its own 32-bit BMP back without the alpha.
UNSAVABLE = {("JPEG", "RGBA"), ("BMP", "RGBA")}


@pytest.mark.parametrize(
    ("image_format", "mode"),
    [(f, m) for f in FORMATS for m in MODES if (f, m) not in UNSAVABLE],
)
def test_predict_image_classifies_every_format_and_mode(
    asgi_client: TestClient, image_format: str, mode: str
) -> None:
    for label in range(len(SHAPES)):
        data = drawing_bytes(label, seed=label, image_format=image_format, mode=mode)
        response = asgi_client.post(
            "/predict_image", files={"image": image_file(data, image_format)}
        )
        assert response.status_code == 200, response.text
        assert_answer(response.json(), label)


@pytest.mark.parametrize(
    "content_type", ["image/png", "image/jpeg", "image/anything", "application/octet-stream"]
)
def test_predict_image_reads_the_raw_body(asgi_client: TestClient, content_type: str) -> None:
    # Pillow decides what the bytes are; the declared image type only routes the body.
    data = drawing_bytes(4, seed=11)
    response = asgi_client.post(
        "/predict_image", content=data, headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    assert_answer(response.json(), 4)


def test_raw_body_and_multipart_give_the_same_answer(asgi_client: TestClient) -> None:
    data = drawing_bytes(0, seed=12, image_format="JPEG", mode="RGB")
    raw = asgi_client.post("/predict_image", content=data, headers={"content-type": "image/jpeg"})
    form = asgi_client.post("/predict_image", files={"image": image_file(data, "JPEG")})
    assert raw.status_code == form.status_code == 200
    assert raw.json() == form.json()


def test_predict_image_is_the_model_on_the_preprocessed_image(
    asgi_client: TestClient, shape_store
) -> None:
    data = drawing_bytes(3, seed=5)
    response = asgi_client.post("/predict_image", files={"image": image_file(data)})
    assert response.status_code == 200, response.text
    expected = shape_store.probabilities(preprocess.preprocess(data)[np.newaxis])[0]
    served = np.array(list(response.json()["probabilities"].values()))
    np.testing.assert_allclose(served, expected, atol=2e-6)


def test_predict_images_answers_each_image_in_order(asgi_client: TestClient) -> None:
    labels = [2, 0, 4, 1]
    files = [("images", image_file(drawing_bytes(label, seed=10 + label))) for label in labels]
    response = asgi_client.post("/predict_images", files=files)
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == len(labels)
    for answer, label in zip(answers, labels, strict=True):
        assert_answer(answer, label)


def test_chunked_upload_under_the_limit_is_served(asgi_client: TestClient) -> None:
    # Without a Content-Length the edge reads the body itself, then hands it on.
    body, content_type = multipart({"image": image_file(drawing_bytes(4, seed=3))})
    response = asgi_client.post(
        "/predict_image", content=chunks(body, 1000), headers={"content-type": content_type}
    )
    assert response.status_code == 200, response.text
    assert_answer(response.json(), 4)


@pytest.mark.parametrize(
    "encoding",
    [
        lambda images: np.rint(images * 255).astype(np.uint8).tolist(),
        lambda images: images.reshape(len(images), 784).tolist(),
    ],
    ids=["uint8-N-28-28", "float-N-784"],
)
def test_predict_is_the_model_on_the_same_pixels(
    asgi_client: TestClient, shape_store, encoding: Callable[[np.ndarray], list]
) -> None:
    pixels = encoding(shape_store.images)
    response = asgi_client.post("/predict", json={"pixels": pixels})
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == len(shape_store.images)
    sent = np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28)
    expected = shape_store.probabilities(sent / 255.0 if sent.max() > 1 else sent)
    for answer, row, label in zip(answers, expected, shape_store.labels, strict=True):
        assert_answer(answer, int(label))
        np.testing.assert_allclose(list(answer["probabilities"].values()), row, atol=2e-6)


def test_metadata_names_the_model(asgi_client: TestClient) -> None:
    response = asgi_client.post("/metadata", json={})
    assert response.status_code == 200, response.text
    metadata = response.json()
    assert metadata["class_names"] == list(SHAPES)
    assert metadata["version"] == "1"
    assert metadata["registered_model"] == "shapes"
    assert metadata["bento_model"] == "shapes:v1"
    # How the model runs, and which file: the one the BentoML model holds, by its sha256.
    runtime = metadata["runtime"]
    assert (runtime["name"], runtime["file"], runtime["precision"]) == (
        "onnxruntime",
        "model.onnx",
        "fp32",
    )
    assert runtime["version"] == onnxruntime.__version__
    assert runtime["providers"][-1] == "CPUExecutionProvider"
    assert runtime["sha256"] == metadata["onnx"]["sha256"]


def test_the_in_process_service_leaves_the_test_limits_out_of_the_environment(
    asgi_client: TestClient,
) -> None:
    """Real servers and stages started later inherit this process's environment: the test
    limits (MAX_IMAGES=4, ...) must not reach them, while this service keeps applying them."""
    from tests.integration.service.conftest import LIMITS

    assert not set(LIMITS) & set(os.environ), "the test limits leaked into os.environ"
    limit = LIMITS["MAX_IMAGES"]
    too_many = [("images", image_file(drawing_bytes(0)))] * (limit + 1)
    response = asgi_client.post("/predict_images", files=too_many)
    assert response.status_code == 400
    assert f"over the limit of {limit}" in response.json()["error"]
