"""One route table (`serving.endpoints`): the app, the 404 message and the OpenAPI document read
it, so a row added there is routed, described and named without another edit."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from serving import edge, endpoints, openapi, routes

LIMITS = {"max_images": 8, "max_body_bytes": 1 << 20, "max_batch_items": 256}
# BentoML's own document, as small as `openapi.document` takes it.
BENTOML_SPEC = {
    "paths": {
        "/predict": {"post": {"tags": ["Service APIs"]}},
        "/metadata": {"post": {"tags": ["Service APIs"]}},
        "/livez": {"get": {"tags": ["Infrastructure"], "summary": "live"}},
    }
}


def routed(app) -> set[tuple[str, tuple[str, ...]]]:
    return {
        (route.path, tuple(sorted(set(route.methods) - {"HEAD"})))
        for route in app.routes
        if isinstance(route, Route)
    }


def document() -> dict:
    return openapi.document(
        BENTOML_SPEC,
        service="classifier",
        model_name="shapes",
        model_version="3",
        software_version="0",
        limits=LIMITS,
    )


def test_the_app_routes_exactly_the_rows_it_answers():
    expected = {(row.path, tuple(sorted(row.methods))) for row in endpoints.TABLE if row.handler}
    assert routed(routes.app()) == expected


def test_the_document_describes_every_row_and_keeps_bentoml_probes():
    paths = document()["paths"]
    for row in endpoints.TABLE:
        for method in row.methods:
            assert method.lower() in paths.get(row.path, {}), f"{method} {row.path}"
    assert paths["/livez"]["get"]["summary"] == "live"


def test_the_404_names_every_listed_row():
    message = edge.no_endpoint("/nope")
    for row in endpoints.TABLE:
        assert (f"{row.shown} (" in message) == row.listed, row.path


def test_a_new_row_is_routed_described_and_named(monkeypatch: pytest.MonkeyPatch):
    row = endpoints.Endpoint("/predict_sketch", ("POST",), "a sketch", "predict_image", listed=True)
    monkeypatch.setattr(endpoints, "TABLE", (*endpoints.TABLE, row))
    assert ("/predict_sketch", ("POST",)) in routed(routes.app())
    operation = document()["paths"]["/predict_sketch"]["post"]
    assert operation["summary"] == "a sketch"
    assert "POST /predict_sketch (a sketch)" in edge.no_endpoint("/nope")


def test_the_edge_checks_the_methods_of_the_body_routes():
    assert endpoints.BODY_METHODS == {
        "/predict_image": ("POST",),
        "/predict_images": ("POST",),
        "/predict": ("POST",),
        "/metadata": ("POST",),
    }
    assert endpoints.BENTOML_APIS == ("/predict", "/metadata")


def test_rows_are_unique_and_their_handlers_exist():
    keys = [(row.path, method) for row in endpoints.TABLE for method in row.methods]
    assert len(keys) == len(set(keys))
    for row in endpoints.TABLE:
        assert row.handler is None or callable(getattr(routes, row.handler, None)), row
        assert row.path.startswith("/"), row
