"""A real `bentoml serve` started with tokens: every route answers the good token, the probes and
pages answer without one, and a missing, wrong or almost-right token is a 401 in JSON, counted.
The misuse table, sent with the good token, keeps its 4xx answers (no 5xx); the page at /ui, in a
real headless Chromium, asks for the token once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from serving import endpoints
from tests.integration.service.test_service_misuse import (
    GOOD_REQUESTS,
    INFER,
    OIP_CASES,
    PIXEL_CASES,
    UPLOAD_CASES,
)
from tests.integration.service.test_service_page import WAIT_S, browser, settled
from tests.support import servers
from tests.support.client import assert_refused, drawing_bytes

pytestmark = pytest.mark.slow
__all__ = ["browser"]  # the page test's Chromium, a fixture

TOKEN = "service-token-for-the-test-0123456789"
SECOND = "second-service-token-9876543210abcd"
SCRAPER = "metrics-scraper-token-0123456789ab"
# One good request for every row of the route table (a new row must be added here).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    path: ("POST", arguments) for path, arguments in GOOD_REQUESTS.items() if path != INFER
} | {
    "/metadata": ("POST", {"json": {}}),
    "/v2/models/{name}/infer": ("POST", GOOD_REQUESTS[INFER]),
    "/v2/models/{name}/versions/{version}/infer": ("POST", GOOD_REQUESTS[INFER]),
}


def _request(client: httpx.Client, path: str, **headers: str) -> httpx.Response:
    method, arguments = ROWS.get(path, ("GET", {}))
    concrete = path.format(name="shapes", version="1")
    return client.request(method, concrete, headers=headers, **arguments)


@pytest.fixture(scope="module")
def guarded(shape_store, tmp_path_factory) -> Iterator[servers.Server]:
    folder = tmp_path_factory.mktemp("guarded")
    tokens = folder / "tokens"
    tokens.write_text(f"# people\n{TOKEN}\n{SECOND}  # the page\n")
    tokens.chmod(0o600)
    environment = shape_store.environment(
        SERVING_WORKERS="1",
        MONITOR_DIR=str(folder / "monitoring"),
        SERVICE_TOKENS_FILE=str(tokens),
        METRICS_TOKENS=SCRAPER,
    )
    with servers.bentoml_serve(environment, log=folder / "serve.log") as server:
        server.wait_ready("/readyz", timeout=120)
        yield server


@pytest.fixture(scope="module")
def client(guarded) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        yield http


def test_the_good_token_opens_every_route(client: httpx.Client) -> None:
    for endpoint in endpoints.TABLE:
        for token in (TOKEN, SECOND):
            response = _request(client, endpoint.path, authorization=f"Bearer {token}")
            assert response.status_code == 200, (endpoint.path, response.text)


def test_no_wrong_or_almost_right_token_is_a_counted_401(client: httpx.Client) -> None:
    before = _refused(client)
    protected = [endpoint.path for endpoint in endpoints.TABLE if not endpoint.open]
    headers = [{}, {"authorization": "Bearer wrong-token-0123456789abcdef"}]
    headers.append({"authorization": f"Bearer {TOKEN[:-1]}{chr(ord(TOKEN[-1]) + 1)}"})
    for path in protected:
        for header in headers:
            response = _request(client, path, **header)
            assert_refused(response, 401, "token")
            assert response.headers["www-authenticate"].startswith("Bearer")
    assert _refused(client) - before == len(protected) * len(headers)


def test_probes_and_pages_answer_without_a_token(client: httpx.Client, guarded) -> None:
    for path in ("/livez", "/readyz", "/ui", "/", "/v2/health/ready", "/ui/static/app.js"):
        assert client.get(path).status_code == 200, path
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 401
    assert "asking for one of 2 bearer tokens" in guarded.output()
    assert "(listening on 127.0.0.1)" in guarded.output()
    assert TOKEN not in guarded.output() and SECOND not in guarded.output()


@pytest.mark.parametrize(
    ("endpoint", "request_arguments", "status", "message"),
    [pytest.param(*case[:4], id=case[4]) for case in UPLOAD_CASES + PIXEL_CASES + OIP_CASES],
)
def test_misuse_with_the_token_is_still_a_4xx(
    client: httpx.Client, endpoint: str, request_arguments, status: int, message: str
) -> None:
    arguments = request_arguments()
    arguments["headers"] = {**arguments.get("headers", {}), "authorization": f"Bearer {TOKEN}"}
    assert_refused(client.post(endpoint, **arguments), status, message)


def _refused(client: httpx.Client) -> float:
    """classifier_unauthorized_requests_total over its reasons, read with the scraper's token."""
    response = client.get("/metrics", headers={"authorization": f"Bearer {SCRAPER}"})
    assert response.status_code == 200, response.text
    return float(
        np.sum(
            [
                float(line.rsplit(" ", 1)[1])
                for line in response.text.splitlines()
                if line.startswith("classifier_unauthorized_requests_total{")
            ]
        )
    )


def test_the_page_asks_for_the_token_once(browser, guarded, tmp_path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(element_id: str):
        return WebDriverWait(browser, WAIT_S).until(
            lambda driver: (
                driver.find_element("id", element_id).is_displayed()
                and driver.find_element("id", element_id)
            )
        )

    browser.get(f"{guarded.url}/ui")
    form = shown("token-form")
    assert "needs a token" in browser.find_element("id", "token-prompt").text
    browser.find_element("id", "token").send_keys(TOKEN)
    form.find_element("css selector", "button").click()
    WebDriverWait(browser, WAIT_S).until(
        lambda driver: driver.find_element("id", "model-version").text == "1"
    )
    upload = tmp_path / "drawing.png"
    upload.write_bytes(drawing_bytes(1, seed=3))
    file_input = browser.find_element("id", "file")
    assert settled(browser, lambda: file_input.send_keys(str(upload))) == "done"
    assert not form.is_displayed()
    # A reload keeps the token (this tab's sessionStorage); a wrong one is asked for again.
    browser.refresh()
    WebDriverWait(browser, WAIT_S).until(
        lambda driver: driver.find_element("id", "model-version").text == "1"
    )
    assert not browser.find_element("id", "token-form").is_displayed()
    browser.execute_script(f"sessionStorage.setItem('classifier-token', '{TOKEN}x')")
    browser.refresh()
    shown("token-form")
    assert "not one this service accepts" in browser.find_element("id", "token-prompt").text
