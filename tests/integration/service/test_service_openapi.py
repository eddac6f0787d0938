"""The API describes itself: /docs.json is valid OpenAPI, covers every mounted route, names the
served model, and the page at / fetches nothing from outside the service."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
from openapi_spec_validator import validate
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.testclient import TestClient

from tests.support.client import drawing_bytes, image_file

# Starlette adds HEAD to every GET route; a document lists GET.
IMPLIED = {"HEAD"}


def mounted_routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(path, method) of every route of the app, mounted apps included; folders of static
    files (BentoML's Swagger assets, the page's CSS and JavaScript) are files, not routes."""
    for route in routes:
        if isinstance(route, Route):
            for method in sorted(set(route.methods or ()) - IMPLIED):
                yield prefix + route.path, method
        elif isinstance(route, Mount) and not isinstance(route.app, StaticFiles):
            yield from mounted_routes(route.routes, prefix + route.path)


def test_the_document_is_valid_openapi(client: httpx.Client) -> None:
    response = client.get("/docs.json")
    assert response.status_code == 200, response.text
    validate(response.json())


def test_every_mounted_route_is_in_the_document(asgi_client: TestClient) -> None:
    document = asgi_client.get("/docs.json").json()
    routes = sorted(set(mounted_routes(asgi_client.app.routes)))
    # The routes a user calls are all there, BentoML's and ours alike.
    for expected in ("/predict", "/predict_image", "/predict_images", "/metadata", "/ui"):
        assert any(path == expected for path, _ in routes), expected
    assert any(path.startswith("/v2/models/{name}") for path, _ in routes)
    missing = [
        f"{method} {path}"
        for path, method in routes
        if method.lower() not in document["paths"].get(path, {})
    ]
    assert not missing, f"routes the document does not describe: {missing}"


def test_uploads_are_described_with_both_bodies_and_their_errors(asgi_client) -> None:
    document = asgi_client.get("/docs.json").json()
    single = document["paths"]["/predict_image"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(single["requestBody"]["content"])
    assert single["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == [
        "image"
    ]
    for path in ("/predict_image", "/predict_images", "/predict"):
        responses = document["paths"][path]["post"]["responses"]
        assert {"200", "400", "413", "415"} <= set(responses), path
        assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])


def test_the_documented_answer_is_what_the_service_answers(asgi_client) -> None:
    document = asgi_client.get("/docs.json").json()
    answer_schema = document["components"]["schemas"]["Answer"]
    answer = asgi_client.post(
        "/predict_image", files={"image": image_file(drawing_bytes(1, seed=3))}
    ).json()
    assert set(answer_schema["required"]) <= set(answer) <= set(answer_schema["properties"])
    refusal = asgi_client.post("/predict_image", content=b"", headers={"content-type": "image/png"})
    assert refusal.status_code == 400
    assert set(refusal.json()) == set(document["components"]["schemas"]["Error"]["required"])


def test_the_title_names_the_service_and_the_served_model(asgi_client, shape_store) -> None:
    info = asgi_client.get("/docs.json").json()["info"]
    metadata = asgi_client.post("/metadata").json()
    name, version = metadata["registered_model"], metadata["version"]
    assert info["title"] == f"classifier: {name} v{version}"
    assert f"v{version}" in info["version"]
    assert "None" not in info["version"] and ":dev" not in info["title"]


def test_nothing_is_fetched_from_elsewhere(asgi_client: TestClient) -> None:
    document = asgi_client.get("/docs.json").text
    # No badge image or any other address outside the service in the document the page renders.
    assert "://" not in json.loads(document)["info"]["description"]
    assert not re.search(r"!\[[^\]]*\]\(", document), "the document shows an image"
    page = asgi_client.get("/")
    assert page.status_code == 200
    assert "googletagmanager" not in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets, page.text
    for asset in assets:
        assert not re.match(r"^(\w+:)?//", asset), f"the page loads {asset} from elsewhere"
        assert asgi_client.get(asset.removeprefix(".")).status_code == 200, asset
    # Swagger UI sends the document to validator.swagger.io for a badge unless told not to.
    initializer = next(asset for asset in assets if asset.endswith("api.js"))
    assert "validatorUrl: null" in asgi_client.get(initializer.removeprefix(".")).text
