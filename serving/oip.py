"""The Open Inference Protocol (KServe v2, REST): request parsing and answers, no I/O.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ : the model has one
input, `images` (FP32 in [0, 1] or UINT8 0-255, shape [N, 28, 28]) and one output, `probabilities`
(FP32, [N, classes]). Tensors come as JSON (flat or nested lists) or, with the binary tensor data
extension that Triton's clients use by default, as raw little-endian bytes after the JSON header,
whose length the `Inference-Header-Content-Length` header gives.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.errors import ApiError
from serving.preprocess import IMAGE_SIZE

INPUT = "images"
OUTPUT = "probabilities"
HEADER_LENGTH = "inference-header-content-length"
# The datatypes this model takes, as numpy little-endian types.
DATATYPES = {"FP32": np.dtype("<f4"), "UINT8": np.dtype("u1")}
EXTENSIONS = ("binary_tensor_data",)
# What runs the model, in Triton's words: onnxruntime on an ONNX file.
PLATFORM = "onnxruntime_onnx"
SEND = (
    f"send one input named {INPUT!r} with datatype FP32 (values in [0, 1]) or UINT8 (0-255)"
    f" and shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}]"
)


@dataclass(frozen=True)
class InferRequest:
    """A checked inference request: float32 (N, 28, 28) images in [0, 1] and how to answer."""

    images: np.ndarray
    request_id: str | None
    binary_output: bool


def server_metadata(*, name: str, version: str) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(*, name: str, version: str, class_names: tuple[str, ...]) -> dict[str, Any]:
    """The model's name, versions, input and output tensors (and, as parameters, its classes)."""
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, IMAGE_SIZE, IMAGE_SIZE]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(class_names)]}],
        "parameters": {"input_datatypes": list(DATATYPES), "class_names": list(class_names)},
    }


def parse_request(body: bytes, *, header_length: str | None, max_items: int) -> InferRequest:
    """Check an infer request body; ApiError (400) says what is wrong and what to send."""
    header, binary = _split(body, header_length)
    request = _json_object(header)
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(f"`inputs` must be a list of one tensor; {SEND}")
    images = _tensor(inputs[0], binary, max_items=max_items)
    request_id = request.get("id")
    return InferRequest(
        images=images,
        request_id=str(request_id) if request_id is not None else None,
        binary_output=_binary_output(request),
    )


def encode_response(
    probabilities: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    binary: bool,
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers, with the output as JSON or as binary tensor data."""
    output: dict[str, Any] = {
        "name": OUTPUT,
        "datatype": "FP32",
        "shape": list(probabilities.shape),
    }
    raw = b""
    if binary:
        raw = np.ascontiguousarray(probabilities, dtype="<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = probabilities.astype(np.float32).ravel().tolist()
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        answer["id"] = request_id
    answer["outputs"] = [output]
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    return header + raw, {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data that follows it."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise ApiError(
            f"Inference-Header-Content-Length is {header_length!r} but the body has"
            f" {len(body)} bytes; it must be the length of the JSON part that starts the body"
        )
    cut = int(header_length)
    return body[:cut], body[cut:]


def _json_object(header: bytes) -> dict[str, Any]:
    if not header:
        raise ApiError(f'the request is empty; send {{"inputs": [...]}} ({SEND})')
    try:
        request = json.loads(header)
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(f"the request is not valid JSON ({error}); {SEND}") from None
    if not isinstance(request, dict):
        raise ApiError(f'the request must be a JSON object {{"inputs": [...]}}; {SEND}')
    return request


def _tensor(tensor: dict[str, Any], binary: bytes, *, max_items: int) -> np.ndarray:
    """The input tensor as float32 (N, 28, 28) in [0, 1]."""
    name = tensor.get("name")
    if name != INPUT:
        raise ApiError(f"unknown input {name!r}; {SEND}")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise ApiError(f"input {INPUT!r} has datatype {datatype!r}; {SEND}")
    shape = _shape(tensor.get("shape"), max_items=max_items)
    count = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    if isinstance(parameters, dict) and "binary_data_size" in parameters:
        values = _binary_values(parameters["binary_data_size"], binary, datatype, count)
    elif binary:
        raise ApiError(
            f"the body carries {len(binary)} bytes after the JSON header but input {INPUT!r}"
            " has no parameters.binary_data_size; give it the size of its binary data"
        )
    else:
        values = _json_values(tensor.get("data"), datatype, count)
    return _scaled(values, datatype).reshape(shape)


def _shape(shape: Any, *, max_items: int) -> list[int]:
    expected = [IMAGE_SIZE, IMAGE_SIZE]
    if (
        not isinstance(shape, list)
        or len(shape) != 3
        or not all(isinstance(size, int) and not isinstance(size, bool) for size in shape)
        or shape[1:] != expected
        or shape[0] < 1
    ):
        raise ApiError(
            f"input {INPUT!r} has shape {shape!r}; expected [N, {IMAGE_SIZE}, {IMAGE_SIZE}]"
            " with N >= 1 images"
        )
    if shape[0] > max_items:
        raise ApiError(
            f"input {INPUT!r} holds {shape[0]} images, over the limit of {max_items}"
            " (MAX_BATCH_ITEMS); split them over several requests"
        )
    return shape


def _binary_values(size: Any, binary: bytes, datatype: str, count: int) -> np.ndarray:
    dtype = DATATYPES[datatype]
    expected = count * dtype.itemsize
    if not isinstance(size, int) or size != expected:
        raise ApiError(
            f"input {INPUT!r}: binary_data_size is {size!r} but shape and datatype {datatype}"
            f" need {expected} bytes"
        )
    if len(binary) != expected:
        raise ApiError(
            f"input {INPUT!r}: the body carries {len(binary)} bytes of binary data after the"
            f" JSON header, but binary_data_size says {expected}"
        )
    return np.frombuffer(binary, dtype=dtype)


def _json_values(data: Any, datatype: str, count: int) -> np.ndarray:
    if not isinstance(data, list):
        raise ApiError(
            f"input {INPUT!r} has no `data` list (and no binary data); send its values as a"
            " flat or nested JSON list, or as binary tensor data"
        )
    try:
        values = np.asarray(data).ravel()
    except ValueError:
        raise ApiError(f"input {INPUT!r}: `data` is ragged; nest it as the shape says") from None
    if values.size != count:
        raise ApiError(
            f"input {INPUT!r}: `data` holds {values.size} values but the shape needs {count}"
        )
    if values.dtype.kind not in "iuf" or (datatype == "UINT8" and values.dtype.kind == "f"):
        kind = "integers 0-255" if datatype == "UINT8" else "numbers"
        raise ApiError(f"input {INPUT!r} is {datatype}: `data` must hold only {kind}")
    if datatype == "UINT8" and values.size and (values.min() < 0 or values.max() > 255):
        raise ApiError(f"input {INPUT!r} is UINT8: values must be in [0, 255]")
    return values.astype(DATATYPES[datatype])


def _scaled(values: np.ndarray, datatype: str) -> np.ndarray:
    if datatype == "UINT8":
        return values.astype(np.float32) / np.float32(255.0)
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise ApiError(f"input {INPUT!r} contains NaN or infinity; send finite values in [0, 1]")
    lowest, highest = float(values.min()), float(values.max())
    if lowest < 0 or highest > 1:
        raise ApiError(
            f"input {INPUT!r} is FP32 with values in [{lowest:g}, {highest:g}]; FP32 values must"
            " be in [0, 1] (send 0-255 pixels as UINT8)"
        )
    return values


def _binary_output(request: dict[str, Any]) -> bool:
    """Whether the client asked for the output as binary tensor data (Triton's default)."""
    parameters = request.get("parameters") or {}
    wanted = bool(isinstance(parameters, dict) and parameters.get("binary_data_output"))
    outputs = request.get("outputs")
    if outputs is None:
        return wanted
    if not isinstance(outputs, list):
        raise ApiError(
            f"`outputs` must be a list of requested outputs, e.g. [{{'name': {OUTPUT!r}}}]"
        )
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name != OUTPUT:
            raise ApiError(f"unknown output {name!r}; this model has one output, {OUTPUT!r}")
        output_parameters = output.get("parameters") or {}
        if isinstance(output_parameters, dict) and "binary_data" in output_parameters:
            wanted = bool(output_parameters["binary_data"])
    return wanted
