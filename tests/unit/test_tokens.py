"""Bearer tokens (serving.tokens): which paths ask for one, what a refusal says, what a token is."""

from __future__ import annotations

import logging
import socket

import prometheus_client
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving import endpoints
from serving.settings import Settings
from serving.tokens import Guard, Tokens, listening_hosts, warn_if_exposed

GOOD = "a-good-token-of-32-characters-00"
OTHER = "another-good-token-for-a-second-"
METRICS_TOKEN = "the-scraper-token-0123456789abcd"


def _guarded(**settings: str) -> TestClient:
    """Every path answers 200 "reached" behind the guard."""

    async def reached(request):
        return PlainTextResponse("reached")

    inner = Starlette(routes=[Route("/{path:path}", reached, methods=["GET", "POST"])])
    return TestClient(Guard(inner, settings=Settings(**settings)))


def _refused(total: float) -> float:
    return (
        sum(
            sample.value
            for metric in prometheus_client.REGISTRY.collect()
            if metric.name == "classifier_unauthorized_requests"
            for sample in metric.samples
            if sample.name.endswith("_total")
        )
        - total
    )


def test_without_tokens_every_path_is_open() -> None:
    client = _guarded()
    for path in ("/predict_image", "/metadata", "/v2/models/x/infer", "/metrics", "/nope"):
        assert client.post(path).text == "reached"


@pytest.mark.parametrize(
    "path", ["/predict_image", "/predict_images", "/predict", "/metadata", "/v2", "/nope"]
)
def test_a_protected_path_needs_one_of_the_tokens(path: str) -> None:
    client = _guarded(service_tokens=f"{GOOD}, {OTHER}")
    assert client.post(path, headers={"Authorization": f"Bearer {GOOD}"}).text == "reached"
    assert client.post(path, headers={"Authorization": f"bearer {OTHER}"}).text == "reached"
    before = _refused(0)
    cases = {
        None: "needs a token",
        f"Bearer {GOOD[:-1]}X": "not one this service accepts",
        f"Bearer {GOOD}x": "not one this service accepts",
        f"Basic {GOOD}": "must read 'Bearer <token>'",
        "Bearer": "must read 'Bearer <token>'",
    }
    for header, message in cases.items():
        response = client.post(path, headers={"Authorization": header} if header else {})
        assert response.status_code == 401, (header, response.text)
        assert message in response.json()["error"]
        assert response.headers["www-authenticate"].startswith('Bearer realm="classifier"')
    assert _refused(before) == len(cases)


def test_probes_pages_and_oip_health_stay_open() -> None:
    client = _guarded(service_tokens=GOOD)
    open_paths = ["/livez", "/readyz", "/healthz", "/ui/static/app.js", "/static_content/x.css"]
    open_paths += [endpoint.path for endpoint in endpoints.TABLE if endpoint.open]
    for path in open_paths:
        assert client.get(path).text == "reached", path
    assert "/v2/health/ready" in open_paths and "/ui" in open_paths
    # Every row with model answers or the served model's details asks for a token.
    for endpoint in endpoints.TABLE:
        if not endpoint.open:
            path = endpoint.path.format(name="m", version="1")
            assert client.request(endpoint.methods[0], path).status_code == 401, path


def test_metrics_take_their_own_tokens() -> None:
    assert _guarded(service_tokens=GOOD).get("/metrics").text == "reached"
    client = _guarded(service_tokens=GOOD, metrics_tokens=METRICS_TOKEN)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {GOOD}"}).status_code == 401
    scraper = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    assert client.get("/metrics", headers=scraper).text == "reached"
    assert client.post("/predict", headers=scraper).status_code == 401


def test_tokens_file_with_comments_adds_to_the_listed_ones(tmp_path) -> None:
    file = tmp_path / "tokens"
    file.write_text(f"# the page's token\n{OTHER}\n\n{METRICS_TOKEN}  # a scraper's\n")
    tokens = Tokens.load(GOOD, str(file), name="SERVICE_TOKENS")
    assert all(tokens.accepts(token) for token in (GOOD, OTHER, METRICS_TOKEN))
    assert not tokens.accepts("# the page's token") and not tokens.accepts("")


@pytest.mark.parametrize(
    ("listed", "message"),
    [("short", "at least 16 characters"), ("a-token-with-a-quote'-in-it-0000", "A-Z a-z 0-9")],
)
def test_a_token_that_cannot_work_is_refused_at_start(listed: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Guard(None, settings=Settings(service_tokens=listed))


def test_an_unreadable_tokens_file_is_refused_at_start(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"SERVICE_TOKENS_FILE: cannot read .*missing"):
        Guard(None, settings=Settings(service_tokens_file=str(tmp_path / "missing")))


def test_listening_without_a_token_beyond_loopback_is_warned_about(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="bentoml.serving"):
        assert warn_if_exposed(["0.0.0.0"], protected=False)
        assert not warn_if_exposed(["0.0.0.0"], protected=True)
        assert not warn_if_exposed(["127.0.0.1", "::1"], protected=False)
    assert len(caplog.records) == 1
    assert "0.0.0.0 with no token" in caplog.text and "SERVICE_TOKENS_FILE" in caplog.text


def test_listening_hosts_are_read_from_the_process() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert "127.0.0.1" in listening_hosts()
