"""Request ids without tracing (serving.request_ids): one per request, in the header of every
answer, the same one the request's code (and so its records) sees."""

from __future__ import annotations

from bentoml._internal.context import trace_context
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from serving.request_ids import RequestId, header_value


async def seen(request):
    """Answers the request id its handler sees, as the records would write it."""
    return JSONResponse({"request_id": trace_context.request_id})


async def own_header(request):
    return PlainTextResponse("mine", headers={"X-BentoML-Request-ID": "00000000000000ff"})


def client() -> TestClient:
    routes = [Route("/seen", seen), Route("/own", own_header)]
    return TestClient(RequestId(Starlette(routes=routes)))


def test_every_answer_names_the_id_its_request_was_handled_with() -> None:
    http = client()
    answers = [http.get("/seen") for _ in range(5)]
    ids = [answer.json()["request_id"] for answer in answers]
    assert all(isinstance(found, int) for found in ids) and len(set(ids)) == 5
    for answer, found in zip(answers, ids, strict=True):
        assert answer.headers["x-bentoml-request-id"] == header_value(found).decode()
    # A path nothing answers still gets one, refusals included.
    missing = http.get("/nothing-here")
    assert missing.status_code == 404 and len(missing.headers["x-bentoml-request-id"]) == 16


def test_an_id_tracing_gave_is_kept_and_a_header_already_there_is_not_doubled() -> None:
    token = trace_context._request_id_var.set(0xABC)
    try:
        answer = client().get("/seen")
    finally:
        trace_context._request_id_var.reset(token)
    assert answer.json()["request_id"] == 0xABC
    assert answer.headers["x-bentoml-request-id"] == "0000000000000abc"
    own = client().get("/own")
    assert own.headers.get_list("x-bentoml-request-id") == ["00000000000000ff"]
