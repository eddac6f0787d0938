"""Requests a client sends to the service and checks of its answers (uploads, pixels, OIP)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support import shapes

OIP_HEADER = "Inference-Header-Content-Length"


def drawing_bytes(
    label: int, *, seed: int = 0, image_format: str = "PNG", mode: str = "L"
) -> bytes:
    """A clean black-on-white drawing of shape `label`, encoded as an upload."""
    rng = np.random.default_rng(seed)
    image = shapes.draw_shape(label, rng=rng, ink=0, paper=255)
    return shapes.encode(shapes.in_mode(image, mode), image_format)


def image_file(data: bytes, image_format: str = "PNG") -> tuple[str, bytes, str]:
    """An httpx `files` entry for image bytes."""
    extension = image_format.lower()
    return (f"upload.{extension}", data, f"image/{extension}")


def multipart(files: Any, data: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The body and content type httpx would send for `files` (and text fields `data`)."""
    request = httpx.Request("POST", "http://localhost/", files=files, data=data)
    return request.read(), request.headers["content-type"]


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    """`data` as a generator, which httpx sends chunked, without a Content-Length."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def assert_answer(
    answer: dict[str, Any], label: int | None = None, class_names=shapes.SHAPES
) -> None:
    """One answer has the documented fields, a distribution over every class, and the label."""
    assert set(answer) == {"label", "class_name", "probabilities", "model_version"}
    assert isinstance(answer["label"], int)
    assert answer["class_name"] == class_names[answer["label"]]
    assert list(answer["probabilities"]) == list(class_names)
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert max(answer["probabilities"], key=answer["probabilities"].get) == answer["class_name"]
    assert answer["model_version"] == "1"
    if label is not None:
        assert answer["label"] == label, answer


def assert_refused(response: httpx.Response, status: int, message: str) -> None:
    """A JSON refusal with status `status` and an `error` text that matches `message`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"], body
    assert re.search(message, body["error"]), body["error"]


def oip_json(images: np.ndarray, datatype: str = "UINT8", **extra: Any) -> dict[str, Any]:
    """An OIP infer request with the images as a flat JSON list."""
    tensor = {"name": "images", "shape": list(images.shape), "datatype": datatype}
    return {"inputs": [tensor | {"data": images.ravel().tolist()}], **extra}


def oip_binary(
    images: np.ndarray, datatype: str = "UINT8", *, binary_output: bool = True
) -> dict[str, Any]:
    """httpx arguments for an OIP infer request with binary tensor data, as Triton's clients
    send it by default."""
    raw = np.ascontiguousarray(images, dtype="<f4" if datatype == "FP32" else "u1").tobytes()
    header = {
        "inputs": [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": binary_output}}],
    }
    text = json.dumps(header).encode()
    return {
        "content": text + raw,
        "headers": {OIP_HEADER: str(len(text)), "content-type": "application/octet-stream"},
    }


def oip_probabilities(response: httpx.Response) -> np.ndarray:
    """The `probabilities` output of an OIP answer, JSON or binary."""
    assert response.status_code == 200, response.text
    length = response.headers.get(OIP_HEADER)
    header = json.loads(response.content[: int(length)] if length else response.content)
    (output,) = header["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32"
    if length:
        raw = response.content[int(length) :]
        assert len(raw) == output["parameters"]["binary_data_size"]
        values = np.frombuffer(raw, dtype="<f4")
    else:
        values = np.asarray(output["data"], dtype=np.float32)
    return values.reshape(output["shape"])
