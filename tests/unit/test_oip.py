"""The Open Inference Protocol codec: requests parsed to model input, answers encoded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving import oip
from serving.errors import ApiError


def binary_request(images: np.ndarray, datatype: str, **header: object) -> tuple[bytes, str]:
    raw = images.astype("<f4" if datatype == "FP32" else "u1").tobytes()
    tensor = {"name": "images", "shape": list(images.shape), "datatype": datatype}
    tensor["parameters"] = {"binary_data_size": len(raw)}
    text = json.dumps({"inputs": [tensor], **header}).encode()
    return text + raw, str(len(text))


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
def test_binary_and_json_tensors_give_the_same_images(datatype: str) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    images = pixels if datatype == "UINT8" else pixels.astype(np.float32) / 255
    body, length = binary_request(images, datatype)
    binary = oip.parse_request(body, header_length=length, max_items=8)
    as_json = {"inputs": [{"name": "images", "shape": [3, 28, 28], "datatype": datatype}]}
    as_json["inputs"][0]["data"] = images.ravel().tolist()
    parsed = oip.parse_request(json.dumps(as_json).encode(), header_length=None, max_items=8)
    expected = pixels.astype(np.float32) / 255
    np.testing.assert_allclose(binary.images, expected, atol=1e-7)
    np.testing.assert_allclose(parsed.images, expected, atol=1e-7)
    assert binary.images.dtype == parsed.images.dtype == np.float32


@pytest.mark.parametrize(
    ("header", "binary"),
    [
        ({}, False),
        ({"parameters": {"binary_data_output": True}}, True),
        ({"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}, True),
        ({"outputs": [{"name": "probabilities"}]}, False),
        (
            {
                "parameters": {"binary_data_output": True},
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}],
            },
            False,
        ),
    ],
)
def test_the_client_chooses_binary_or_json_output(header: dict, binary: bool) -> None:
    body, length = binary_request(np.zeros((1, 28, 28), np.uint8), "UINT8", **header)
    assert oip.parse_request(body, header_length=length, max_items=1).binary_output is binary


@pytest.mark.parametrize("binary", [False, True])
def test_encoded_answers_decode_to_the_probabilities(binary: bool) -> None:
    probabilities = np.random.default_rng(1).random((4, 3)).astype(np.float32)
    body, headers = oip.encode_response(
        probabilities, model_name="m", model_version="2", request_id="abc", binary=binary
    )
    length = int(headers.get(oip.HEADER_LENGTH, len(body)))
    answer = json.loads(body[:length])
    assert answer["model_name"] == "m" and answer["model_version"] == "2"
    assert answer["id"] == "abc"
    (output,) = answer["outputs"]
    assert output["shape"] == [4, 3] and output["datatype"] == "FP32"
    if binary:
        assert headers["content-type"] == "application/octet-stream"
        values = np.frombuffer(body[length:], "<f4")
        assert output["parameters"]["binary_data_size"] == len(body) - length
    else:
        values = np.asarray(output["data"], np.float32)
    np.testing.assert_array_equal(values.reshape(4, 3), probabilities)


@pytest.mark.parametrize(
    ("request_body", "message"),
    [
        ({"inputs": []}, "list of one tensor"),
        ({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784]}]}, "shape"),
        ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1, 28, 28]}]}, "BYTES"),
        (
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28],
                        "data": [300] * 784,
                    }
                ]
            },
            r"\[0, 255\]",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28],
                        "data": [0.5] * 784,
                    }
                ]
            },
            "only integers",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": [1, 28, 28],
                        "data": [[0.5] * 784, [0.5]],
                    }
                ]
            },
            "ragged",
        ),
        (
            {
                "inputs": [
                    {"name": "images", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}
                ],
                "outputs": [{"name": "logits"}],
            },
            "unknown output 'logits'",
        ),
        ({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [True, 28, 28]}]}, "shape"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_requests_say_what_is_wrong(request_body: object, message: str) -> None:
    with pytest.raises(ApiError, match=message) as refused:
        oip.parse_request(json.dumps(request_body).encode(), header_length=None, max_items=4)
    assert refused.value.status == 400


def test_binary_data_without_its_size_is_refused() -> None:
    body, length = binary_request(np.zeros((1, 28, 28), np.uint8), "UINT8")
    header = json.loads(body[: int(length)])
    del header["inputs"][0]["parameters"]
    text = json.dumps(header).encode()
    with pytest.raises(ApiError, match=r"no parameters\.binary_data_size"):
        oip.parse_request(text + body[int(length) :], header_length=str(len(text)), max_items=1)
