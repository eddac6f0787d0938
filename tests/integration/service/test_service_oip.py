"""The Open Inference Protocol (KServe v2 REST) in process and (slow) on a real server; and a
standard Triton client, unchanged, against the real server."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.support.client import oip_binary, oip_json, oip_probabilities
from tests.support.shapes import SHAPES

MODEL = "/v2/models/shapes"


def uint8(images: np.ndarray) -> np.ndarray:
    return np.rint(images * 255).astype(np.uint8)


def predicted(client: httpx.Client, pixels: np.ndarray) -> np.ndarray:
    """/predict's probabilities for the same pixels, in class order."""
    response = client.post("/predict", json={"pixels": pixels.tolist()})
    assert response.status_code == 200, response.text
    return np.array([list(answer["probabilities"].values()) for answer in response.json()])


def test_health_and_server_metadata(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"{MODEL}/ready").json() == {"name": "shapes", "ready": True}
    server = client.get("/v2").json()
    assert "binary_tensor_data" in server["extensions"]
    assert server["name"] and server["version"]


def test_model_metadata_declares_the_tensors(client: httpx.Client) -> None:
    for path in (MODEL, f"{MODEL}/versions/1"):
        metadata = client.get(path).json()
        assert metadata["name"] == "shapes"
        assert metadata["versions"] == ["1"]
        assert metadata["platform"] == "onnxruntime_onnx"
        assert metadata["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28]}]
        assert metadata["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(SHAPES)]}
        ]
        assert metadata["parameters"]["class_names"] == list(SHAPES)


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("encoding", ["json", "binary-in-json-out", "binary"])
def test_infer_matches_predict_on_the_same_pixels(
    client: httpx.Client, shape_store, datatype: str, encoding: str
) -> None:
    pixels = uint8(shape_store.images)
    images = pixels if datatype == "UINT8" else pixels.astype(np.float32) / 255
    if encoding == "json":
        response = client.post(f"{MODEL}/infer", json=oip_json(images, datatype, id="req-7"))
        assert response.json()["id"] == "req-7"
    else:
        binary_output = encoding == "binary"
        response = client.post(
            f"{MODEL}/infer", **oip_binary(images, datatype, binary_output=binary_output)
        )
        assert ("inference-header-content-length" in response.headers) == binary_output
    probabilities = oip_probabilities(response)
    assert probabilities.shape == (len(pixels), len(SHAPES))
    np.testing.assert_allclose(probabilities, predicted(client, pixels), atol=2e-6)
    assert probabilities.argmax(axis=1).tolist() == shape_store.labels.tolist()


def test_infer_takes_nested_json_data(client: httpx.Client, shape_store) -> None:
    pixels = uint8(shape_store.images[:3])
    request = oip_json(pixels)
    request["inputs"][0]["data"] = pixels.tolist()
    np.testing.assert_allclose(
        oip_probabilities(client.post(f"{MODEL}/infer", json=request)),
        predicted(client, pixels),
        atol=2e-6,
    )


@pytest.mark.slow
def test_a_triton_client_works_unchanged(served, shape_store) -> None:
    # tritonclient sends binary tensors and asks for binary outputs by default.
    import tritonclient.http as triton

    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("shapes")
    metadata = client.get_model_metadata("shapes")
    assert metadata["inputs"][0]["name"] == "images"

    pixels = uint8(shape_store.images)
    tensor = triton.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    result = client.infer(
        "shapes", [tensor], outputs=[triton.InferRequestedOutput("probabilities")]
    )
    probabilities = result.as_numpy("probabilities")
    with httpx.Client(base_url=served.url, timeout=30) as http:
        np.testing.assert_allclose(probabilities, predicted(http, pixels), atol=2e-6)

    with pytest.raises(triton.InferenceServerException, match="no model named 'dogs'"):
        client.infer("dogs", [tensor])
    client.close()
