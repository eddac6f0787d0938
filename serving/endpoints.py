"""The service's route table: every path a client calls, its methods, who answers and what for.

The app (`serving.routes.app`), the edge's 405 and 404 messages (`serving.edge`) and the OpenAPI
document (`serving.openapi`) all read this table, so a route is added here, with its handler in
`serving.routes` (and its tests); the document describes a new route from its row until
`serving.openapi` says more. BentoML's own health probes and metrics (`/livez`, `/readyz`,
`/metrics`) are not rows: BentoML serves and describes them. Pure data, no imports of the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

APP_TAG = "Service APIs"
OIP_TAG = "Open Inference Protocol"
PAGE_TAG = "Pages"
GET, POST = ("GET",), ("POST",)


@dataclass(frozen=True)
class Endpoint:
    """One row: a path as Starlette and OpenAPI write it (`{name}` for a path parameter)."""

    path: str
    methods: tuple[str, ...]
    # What it is for, in a few words: the 404 message and the document's summary.
    summary: str
    # The function of serving.routes that answers it; None where BentoML answers (its APIs
    # `/predict` and `/metadata`, declared in serving.service, and its own document).
    handler: str | None
    tag: str = APP_TAG
    # Named in the 404 message, which tells a client that got a path wrong what exists.
    listed: bool = False
    # Answers without a token where the service requires one (serving.tokens): health probes,
    # and pages that hold no model answers.
    open: bool = False

    @property
    def shown(self) -> str:
        """The path as a person reads it: `/v2/models/<name>/infer`."""
        return self.path.replace("{", "<").replace("}", ">")


def _oip_model_routes(prefix: str, *, listed: bool) -> tuple[Endpoint, ...]:
    """A model's OIP routes, by name or by name and version."""
    return (
        Endpoint(prefix, GET, "Model metadata", "model_metadata", OIP_TAG),
        Endpoint(f"{prefix}/ready", GET, "Model ready", "model_ready", OIP_TAG),
        Endpoint(f"{prefix}/infer", POST, "OIP tensors", "infer", OIP_TAG, listed=listed),
    )


TABLE: tuple[Endpoint, ...] = (
    Endpoint("/predict_image", POST, "one image file", "predict_image", listed=True),
    Endpoint("/predict_images", POST, "several image files", "predict_images", listed=True),
    Endpoint("/predict", POST, "pixels as JSON", None, listed=True),
    Endpoint("/metadata", POST, "what is served", None, listed=True),
    Endpoint("/v2", GET, "Server metadata", "server_metadata", OIP_TAG),
    Endpoint("/v2/health/live", GET, "Server live", "live", OIP_TAG, open=True),
    Endpoint("/v2/health/ready", GET, "Server ready", "ready", OIP_TAG, open=True),
    *_oip_model_routes("/v2/models/{name}", listed=True),
    *_oip_model_routes("/v2/models/{name}/versions/{version}", listed=False),
    Endpoint("/ui", GET, "try it by hand", "page", PAGE_TAG, listed=True, open=True),
    Endpoint("/", GET, "this API, described", "api_page", PAGE_TAG, listed=True, open=True),
    Endpoint("/docs.json", GET, "This OpenAPI document", "api_document", PAGE_TAG, open=True),
    Endpoint(
        "/schema.json", GET, "BentoML's description of its endpoints", None, PAGE_TAG, open=True
    ),
)

# Routes that read a body: the edge refuses a wrong method before reading one. Routes with path
# parameters, and GET routes (to which Starlette adds HEAD), answer wrong methods themselves.
BODY_METHODS: Mapping[str, tuple[str, ...]] = {
    endpoint.path: endpoint.methods
    for endpoint in TABLE
    if endpoint.methods == POST and "{" not in endpoint.path
}
# BentoML's own APIs, whose refusals (503 when shedding load, 400 from validation) the edge
# rewords.
BENTOML_APIS = tuple(
    endpoint.path for endpoint in TABLE if endpoint.handler is None and endpoint.methods == POST
)

# Paths that answer without a token (serving.tokens), and the page's files under a prefix. The
# Swagger UI of `/` loads BentoML's assets from /static_content/.
OPEN = frozenset(endpoint.path for endpoint in TABLE if endpoint.open)
OPEN_PREFIXES = ("/ui/static/", "/static_content/")


def what_exists() -> str:
    """What a client that got a path wrong is told exists."""
    return "; ".join(
        f"{' or '.join(endpoint.methods)} {endpoint.shown} ({endpoint.summary})"
        for endpoint in TABLE
        if endpoint.listed
    )
