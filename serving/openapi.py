"""The OpenAPI document at /docs.json: every route a user calls, its request, answer and errors.

BentoML describes only its own endpoints (`/predict`, `/metadata` and the health probes), with a
stock title ("classifier:dev", version "None") and a readme of badge images fetched from the
internet. This builds the document from BentoML's (its request schemas stay the source of truth
for its endpoints) and adds our routes (`serving.routes`): the uploads, the Open Inference
Protocol, the page at /ui and the API page itself. Pure: no I/O, the caller passes what is served.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving import endpoints, oip, preprocess

APP_TAG, OIP_TAG, PAGE_TAG = endpoints.APP_TAG, endpoints.OIP_TAG, endpoints.PAGE_TAG
INFRA_TAG = "Infrastructure"
JSON = "application/json"
REF = "#/components/schemas/"

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "what is wrong, what to send"}},
    },
    "Answer": {
        "type": "object",
        "required": ["label", "class_name", "probabilities", "model_version"],
        "properties": {
            "label": {"type": "integer", "description": "index of the most probable class"},
            "class_name": {"type": "string"},
            "probabilities": {
                "type": "object",
                "description": "class name -> probability (rounded to 6 decimals)",
                "additionalProperties": {"type": "number"},
            },
            "model_version": {"type": "string"},
            "input": {
                "type": "array",
                "description": "only with ?show_input=true: the 28x28 model input in [0, 1]",
                "items": {"type": "array", "items": {"type": "number"}},
            },
        },
    },
    "Answers": {"type": "array", "items": {"$ref": f"{REF}Answer"}},
    "Pixels": {
        "type": "object",
        "required": ["pixels"],
        "properties": {
            "pixels": {
                "type": "array",
                "description": "N images as (N, 28, 28) or (N, 784) numbers: uint8 0-255 or"
                " float 0-1",
                "items": {"type": "array", "items": {}},
            }
        },
    },
    "InferTensor": {
        "type": "object",
        "required": ["name", "shape", "datatype"],
        "properties": {
            "name": {"type": "string", "enum": [oip.INPUT]},
            "shape": {"type": "array", "items": {"type": "integer"}, "example": [1, 28, 28]},
            "datatype": {"type": "string", "enum": list(oip.DATATYPES)},
            "data": {"type": "array", "items": {}, "description": "flat or nested values"},
            "parameters": {
                "type": "object",
                "description": "`binary_data_size` when the tensor's bytes follow the header",
                "additionalProperties": True,
            },
        },
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": f"{REF}InferTensor"}},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [oip.OUTPUT]},
                        "parameters": {"type": "object", "additionalProperties": True},
                    },
                },
            },
            "parameters": {"type": "object", "additionalProperties": True},
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "enum": [oip.OUTPUT]},
                        "shape": {"type": "array", "items": {"type": "integer"}},
                        "datatype": {"type": "string", "enum": ["FP32"]},
                        "data": {"type": "array", "items": {"type": "number"}},
                        "parameters": {"type": "object", "additionalProperties": True},
                    },
                },
            },
        },
    },
    "ServerMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
    "ModelMetadata": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
            "outputs": {"type": "array", "items": {"type": "object", "additionalProperties": True}},
            "parameters": {"type": "object", "additionalProperties": True},
        },
    },
    "Ready": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
}

ERRORS = {
    400: "the request is malformed: the message says what is wrong and what to send",
    404: "no such model or version here (the message names the served one)",
    405: "the route does not take this method",
    413: "the body is over MAX_BODY_BYTES",
    415: "the Content-Type is not one this route reads",
    503: "the service is busy; retry after the Retry-After seconds",
}
UPLOAD_ERRORS = (400, 405, 413, 415)


def _json(schema: str) -> dict[str, Any]:
    return {JSON: {"schema": {"$ref": REF + schema}}}


def _responses(answer: str, description: str, errors: tuple[int, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": description, "content": _json(answer)}}
    for status in errors:
        responses[str(status)] = {"description": ERRORS[status], "content": _json("Error")}
    return responses


def _operation(tag: str, summary: str, description: str, **rest: Any) -> dict[str, Any]:
    return {"tags": [tag], "summary": summary, "description": description, **rest}


def _image_form(field: str, many: bool) -> dict[str, Any]:
    item = {"type": "string", "format": "binary"}
    value = {"type": "array", "items": item} if many else item
    return {"schema": {"type": "object", "required": [field], "properties": {field: value}}}


def upload_paths(*, max_images: int, max_body_bytes: int) -> dict[str, Any]:
    """/predict_image (multipart or raw body) and /predict_images."""
    show_input = {
        "name": "show_input",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean", "default": False},
        "description": "also answer the 28x28 input the model was given",
    }
    raw = {"schema": {"type": "string", "format": "binary"}}
    single = _operation(
        APP_TAG,
        "Classify one image",
        f"One image file ({preprocess.FORMAT_NAMES}; any size and mode), as the multipart"
        f" field `image` or as the raw body. Bodies up to {max_body_bytes} bytes.",
        operationId="predict_image",
        parameters=[show_input],
        requestBody={
            "required": True,
            "content": {
                "multipart/form-data": _image_form("image", many=False),
                "image/*": raw,
                "application/octet-stream": raw,
            },
        },
        responses=_responses("Answer", "the image's class and probabilities", UPLOAD_ERRORS),
    )
    several = _operation(
        APP_TAG,
        "Classify several images",
        f"Up to {max_images} image files as the repeated multipart field `images`; the answers"
        " come in the same order.",
        operationId="predict_images",
        requestBody={
            "required": True,
            "content": {"multipart/form-data": _image_form("images", many=True)},
        },
        responses=_responses("Answers", "one answer per image, in order", UPLOAD_ERRORS),
    )
    return {"/predict_image": {"post": single}, "/predict_images": {"post": several}}


def bentoml_paths(spec_paths: Mapping[str, Any], *, max_batch_items: int) -> dict[str, Any]:
    """BentoML's own endpoints with our answers and refusals (it lists its exception types)."""
    paths = {path: dict(item) for path, item in spec_paths.items()}
    predict = dict(paths.get("/predict", {}).get("post", {}))
    predict.update(
        summary="Classify pixel batches",
        description=f"JSON pixels of up to {max_batch_items} images; requests are batched"
        " together on the server, each gets one answer per image it sent.",
        requestBody={"required": True, "content": _json("Pixels")},
        responses=_responses("Answers", "one answer per image", (400, 405, 413, 415, 503)),
    )
    paths["/predict"] = {"post": predict}
    metadata = dict(paths.get("/metadata", {}).get("post", {}))
    metadata.update(
        summary="What is served",
        description="Registered name, version, variant, dataset, classes, metrics, provenance.",
        responses={
            "200": {
                "description": "the served model",
                "content": {JSON: {"schema": {"type": "object", "additionalProperties": True}}},
            },
            "405": {"description": ERRORS[405], "content": _json("Error")},
        },
    )
    paths["/metadata"] = {"post": metadata}
    return paths


def oip_paths() -> dict[str, Any]:
    """The Open Inference Protocol's routes (serving.oip)."""
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
    binary_header = {
        "name": "Inference-Header-Content-Length",
        "in": "header",
        "required": False,
        "schema": {"type": "integer"},
        "description": "binary tensor extension: the JSON header's length; tensor bytes follow",
    }
    infer_body = {
        "required": True,
        "content": {
            JSON: {"schema": {"$ref": f"{REF}InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
    paths: dict[str, Any] = {
        "/v2": {"get": _oip("Server metadata", "ServerMetadata", ())},
        "/v2/health/live": {"get": _oip("Server live", "Live", ())},
        "/v2/health/ready": {"get": _oip("Server ready", "Live", ())},
    }
    for prefix, parameters in (
        ("/v2/models/{name}", [name]),
        ("/v2/models/{name}/versions/{version}", [name, version]),
    ):
        paths[prefix] = {"get": _oip("Model metadata", "ModelMetadata", (404,), parameters)}
        paths[f"{prefix}/ready"] = {"get": _oip("Model ready", "Ready", (404,), parameters)}
        infer = _oip("Infer", "InferResponse", (400, 404, 413), [*parameters, binary_header])
        infer["requestBody"] = infer_body
        infer["description"] = (
            f"{oip.SEND}. Tensors as JSON, or binary after the JSON header"
            " (Inference-Header-Content-Length), as tritonclient sends them."
        )
        paths[f"{prefix}/infer"] = {"post": infer}
    return paths


def _oip(summary: str, answer: str, errors: tuple[int, ...], parameters=()) -> dict[str, Any]:
    operation = _operation(OIP_TAG, summary, f"{summary} (KServe v2 REST).")
    operation["operationId"] = "oip_" + summary.lower().replace(" ", "_") + str(len(parameters))
    if parameters:
        operation["parameters"] = list(parameters)
    operation["responses"] = _responses(answer, summary, errors)
    return operation


def page_paths() -> dict[str, Any]:
    """The HTML pages and documents (they answer a browser, not a program)."""

    def page(summary: str, media: str) -> dict[str, Any]:
        content = {media: {"schema": {"type": "string"}}}
        responses = {"200": {"description": summary, "content": content}}
        return {"get": _operation(PAGE_TAG, summary, summary + ".", responses=responses)}

    return {
        "/ui": page("The page to try the model by hand", "text/html"),
        "/": page("This API's page (Swagger UI)", "text/html"),
        "/docs.json": page("This OpenAPI document", JSON),
        "/schema.json": page("BentoML's description of its endpoints, for its clients", JSON),
    }


TABLE_PATHS = {endpoint.path for endpoint in endpoints.TABLE}


def from_row(endpoint: endpoints.Endpoint) -> dict[str, Any]:
    """An operation for a route this module does not describe yet: its table row's summary."""
    responses = {"200": {"description": endpoint.summary}}
    return _operation(endpoint.tag, endpoint.summary, endpoint.summary + ".", responses=responses)


def document(
    bentoml_spec: Mapping[str, Any],
    *,
    service: str,
    model_name: str,
    model_version: str,
    software_version: str,
    limits: Mapping[str, int],
) -> dict[str, Any]:
    """The whole document. `bentoml_spec` is BentoML's (`Service.openapi_spec.asdict()`);
    `limits` holds max_images, max_body_bytes and max_batch_items."""
    bentoml = bentoml_paths(
        bentoml_spec.get("paths", {}), max_batch_items=limits["max_batch_items"]
    )
    described = bentoml | oip_paths() | page_paths()
    described |= upload_paths(
        max_images=limits["max_images"], max_body_bytes=limits["max_body_bytes"]
    )
    # Every row of the route table, as described here or from its row; BentoML's probes and
    # metrics as BentoML describes them.
    paths = {path: item for path, item in bentoml.items() if path not in TABLE_PATHS}
    for endpoint in endpoints.TABLE:
        item = paths.setdefault(endpoint.path, {})
        for method in (name.lower() for name in endpoint.methods):
            item[method] = described.get(endpoint.path, {}).get(method) or from_row(endpoint)
    schemas = {**(bentoml_spec.get("components") or {}).get("schemas", {}), **SCHEMAS}
    return {
        "openapi": bentoml_spec.get("openapi", "3.0.2"),
        "info": {
            "title": f"{service}: {model_name} v{model_version}",
            "version": f"{software_version} (model {model_name} v{model_version})",
            "description": (
                f"Classifies 28x28 grey images with **{model_name}** version {model_version}."
                " Send image files to `/predict_image` or `/predict_images`, pixels to"
                " `/predict`, tensors to the Open Inference Protocol under `/v2`; try it by"
                ' hand at [/ui](./ui). Every refusal is a 4xx with `{"error": ...}` that says'
                " what to send instead."
            ),
        },
        "servers": [{"url": "."}],
        "tags": [
            {"name": APP_TAG, "description": "Classify images"},
            {"name": OIP_TAG, "description": "KServe v2 REST, for tritonclient and others"},
            {"name": PAGE_TAG, "description": "Pages for people, and this document"},
            {"name": INFRA_TAG, "description": "Health probes and metrics (BentoML's)"},
        ],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": _referenced(schemas, paths)},
    }


def _referenced(schemas: Mapping[str, Any], paths: Mapping[str, Any]) -> dict[str, Any]:
    """The schemas the paths use, directly or through other schemas. BentoML adds some nobody
    uses, and one of them (its task status) is not valid OpenAPI 3.0 (`type: null`)."""
    kept: dict[str, Any] = {}
    pending = _refs(paths)
    while pending:
        name = pending.pop()
        if name not in kept and name in schemas:
            kept[name] = schemas[name]
            pending |= _refs(schemas[name])
    return dict(sorted(kept.items()))


def _refs(tree: Any) -> set[str]:
    """Names of the component schemas `tree` refers to."""
    if isinstance(tree, Mapping):
        found = {tree["$ref"].removeprefix(REF)} if isinstance(tree.get("$ref"), str) else set()
        for value in tree.values():
            found |= _refs(value)
        return found
    if isinstance(tree, list):
        return set().union(*(_refs(value) for value in tree)) if tree else set()
    return set()
