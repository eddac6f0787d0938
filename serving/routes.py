"""Our own routes, mounted into the BentoML service: image uploads and the Open Inference Protocol.

They run in each worker's event loop. A single image calls the model right there: decoding,
preprocessing and one small model call take a few milliseconds of CPU, less than a hop to a
thread pool and back costs in contention. Batches go to the model in chunks, in a thread
(`serving.batching`), so that the loop serves single images meanwhile. `/` and `/docs.json`
replace BentoML's: the API's page and its OpenAPI document (`serving.openapi`). Every refusal is
an `ApiError`, answered as JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving import batching, endpoints, oip, openapi, preprocess, uploads
from serving.edge import no_endpoint
from serving.errors import ApiError
from serving.model import ServedModel
from serving.settings import Settings

SERVER_NAME = "mnist-mlops"
# The page at /ui: plain HTML, CSS and JavaScript served from here, nothing from elsewhere.
STATIC = Path(__file__).resolve().parent / "static"
# Answers of /predict_image?show_input=true carry the model input, rounded to this many decimals.
INPUT_DECIMALS = 4


def _service():
    """The worker's service instance (the class in `serving.service`)."""
    return bentoml.get_current_service()


def _model_inputs(model: ServedModel, settings: Settings, images: list[bytes], field: str):
    """Float32 (N, 28, 28) model input; an ImageError names the field each image came in."""
    batch = []
    for index, data in enumerate(images):
        try:
            batch.append(
                preprocess.preprocess(
                    data, max_pixels=settings.max_image_pixels, content_size=model.content_size
                )
            )
        except preprocess.ImageError as error:
            name = field if len(images) == 1 and field == "image" else f"{field}[{index}]"
            raise ApiError(f"{name}: {error}") from None
    return np.stack(batch)


def _show_input(request: Request) -> bool:
    value = request.query_params.get("show_input", "false").lower()
    if value not in ("true", "1", "false", "0"):
        raise ApiError(f"show_input must be true or false, got {value!r}")
    return value in ("true", "1")


def _watched(
    endpoint: str, model: ServedModel, batch: np.ndarray, probabilities: np.ndarray
) -> BackgroundTask:
    """The watch's record of an answer, written once the answer is on its way. A coroutine, so
    Starlette runs it in the event loop: a sync task would cost a hop to its thread pool, which
    is more than the record itself. A batch's rows go a step at a time (`record_in_steps`)."""
    service = _service()

    async def record() -> None:
        await service.watch.record_in_steps(
            endpoint,
            batch,
            probabilities,
            step=service.settings.batch_chunk_items,
            model_version=model.version,
        )

    return BackgroundTask(record)


async def predict_image(request: Request) -> JSONResponse:
    """One image, as the multipart file field `image` or as the raw body. With
    `?show_input=true` the answer also holds `input`: the 28x28 picture the model was given."""
    service = _service()
    show_input = _show_input(request)
    images = await uploads.uploads(request, field="image", max_count=1)
    # The model is taken once: a swap (serving.follow) never mixes two versions in one answer.
    model = service.served.model
    batch = _model_inputs(model, service.settings, images, "image")
    probabilities = model.probabilities(batch)
    answer = model.results(probabilities)[0]
    if show_input:
        answer["input"] = np.round(batch[0].astype(np.float64), INPUT_DECIMALS).tolist()
    return JSONResponse(answer, background=_watched("predict_image", model, batch, probabilities))


async def predict_images(request: Request) -> JSONResponse:
    """Several images, as repeated multipart file fields `images`; answers in the same order."""
    service = _service()
    images = await uploads.uploads(request, field="images", max_count=service.settings.max_images)
    model = service.served.model
    batch = _model_inputs(model, service.settings, images, "images")
    probabilities = await batching.probabilities(
        model.probabilities, batch, service.settings.batch_chunk_items
    )
    return JSONResponse(
        model.results(probabilities),
        background=_watched("predict_images", model, batch, probabilities),
    )


def _known_model(request: Request) -> ServedModel:
    model = _service().served.model
    name = request.path_params["name"]
    version = request.path_params.get("version")
    if name != model.name:
        raise ApiError(f"no model named {name!r} here; this server serves {model.name!r}", 404)
    if version is not None and version != model.version:
        raise ApiError(
            f"model {name!r} has no version {version!r} here; this server serves version"
            f" {model.version!r}",
            404,
        )
    return model


async def live(request: Request) -> JSONResponse:
    return JSONResponse({"live": True})


async def ready(request: Request) -> JSONResponse:
    # Routes only run once the service (and so its model) is loaded.
    return JSONResponse({"ready": True})


def _software_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


async def server_metadata(request: Request) -> JSONResponse:
    return JSONResponse(oip.server_metadata(name=SERVER_NAME, version=_software_version()))


async def api_document(request: Request) -> JSONResponse:
    """The OpenAPI document of every route (serving.openapi), in place of BentoML's."""
    service = _service()
    settings = service.settings
    document = openapi.document(
        service.bento_service.openapi_spec.asdict(),
        service=service.bento_service.name,
        model_name=service.served.model.name,
        model_version=service.served.model.version,
        software_version=_software_version(),
        limits={
            "max_images": settings.max_images,
            "max_body_bytes": settings.max_body_bytes,
            "max_batch_items": settings.max_batch_items,
        },
    )
    return JSONResponse(document)


async def api_page(request: Request) -> FileResponse:
    """Swagger UI from BentoML's own copy of its assets, with nothing fetched from elsewhere
    (BentoML's page loads Google Tag Manager, and Swagger UI's validator badge)."""
    return FileResponse(STATIC / "api.html", headers={"Cache-Control": "no-cache"})


async def model_metadata(request: Request) -> JSONResponse:
    model = _known_model(request)
    return JSONResponse(
        oip.model_metadata(name=model.name, version=model.version, class_names=model.class_names)
    )


async def model_ready(request: Request) -> JSONResponse:
    model = _known_model(request)
    return JSONResponse({"name": model.name, "ready": True})


async def infer(request: Request) -> Response:
    model = _known_model(request)
    settings = _service().settings
    parsed = oip.parse_request(
        await request.body(),
        header_length=request.headers.get(oip.HEADER_LENGTH),
        max_items=settings.max_batch_items,
    )
    probabilities = await batching.probabilities(
        model.probabilities, parsed.images, settings.batch_chunk_items
    )
    body, headers = oip.encode_response(
        probabilities,
        model_name=model.name,
        model_version=model.version,
        request_id=parsed.request_id,
        binary=parsed.binary_output,
    )
    return Response(
        body, headers=headers, background=_watched("oip_infer", model, parsed.images, probabilities)
    )


async def page(request: Request) -> FileResponse:
    """The page to try the model by hand (serving/static/index.html)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def _refused(request: Request, error: ApiError) -> Response:
    return error.response()


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Starlette's own 404 and 405, as JSON that says what exists."""
    if error.status_code == 405:
        message = f"{request.url.path} does not take {request.method}; see the API at /"
    elif error.status_code == 404:
        message = no_endpoint(request.url.path)
    else:
        message = str(error.detail)
    return ApiError(message, error.status_code, error.headers).response()


def app() -> Starlette:
    """The routes mounted at / of the BentoML service: every row of the route table
    (`serving.endpoints`) that a function of this module answers, and the page's files. Mounted
    routes are matched before BentoML's, so `/` and `/docs.json` are ours."""
    here = globals()
    routes: list[Any] = [
        Route(endpoint.path, here[endpoint.handler], methods=list(endpoint.methods))
        for endpoint in endpoints.TABLE
        if endpoint.handler is not None
    ]
    # The page's CSS and JavaScript: a folder of files, not a route of the table.
    routes.append(Mount("/ui/static", StaticFiles(directory=STATIC), name="static"))
    return Starlette(
        routes=routes, exception_handlers={ApiError: _refused, HTTPException: _http_error}
    )
