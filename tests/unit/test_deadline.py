"""The request deadline: a 504 for a request with no answer in time, an answer on its way is not
cut, and a finished request leaves nothing alive (BentoML's own timeout kept every request's
context for the whole timeout; serving.deadline)."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import importlib.util
import json
import weakref

import pytest
from bentoml._internal.server.base_app import BaseAppFactory
from bentoml._internal.server.http import traffic

from serving import deadline

REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class State:
    """Something a request holds in its context (as OpenTelemetry holds its span)."""


async def call(app, path: str = "/predict_image") -> tuple[int, bytes]:
    """Run one HTTP request through an ASGI app: its status and body."""
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body


def answering(delay_before_s: float = 0.0, delay_within_s: float = 0.0, seen=None):
    """An app that waits, starts a 200 answer, waits again, then ends it; `seen` records how
    its calls ended."""

    async def app(scope, receive, send) -> None:
        try:
            await asyncio.sleep(delay_before_s)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.sleep(delay_within_s)
            await send({"type": "http.response.body", "body": b"answer"})
        except asyncio.CancelledError:
            if seen is not None:
                seen.append("cancelled")
            raise

    return app


def test_a_request_without_an_answer_in_time_is_cancelled_and_answered_504():
    seen: list[str] = []
    app = deadline.Deadline(answering(delay_before_s=5, seen=seen), timeout=0.05)
    status, body = asyncio.run(call(app))
    assert status == 504
    assert "within 0.05 s" in json.loads(body)["error"]
    assert seen == ["cancelled"]


def test_an_answer_already_on_its_way_is_not_cut():
    app = deadline.Deadline(answering(delay_within_s=0.2), timeout=0.05)
    assert asyncio.run(call(app)) == (200, b"answer")


def test_a_timeout_error_of_the_app_itself_is_not_taken_for_the_deadline():
    async def failing(scope, receive, send):
        raise TimeoutError("the app's own")

    with pytest.raises(TimeoutError, match="the app's own"):
        asyncio.run(call(deadline.Deadline(failing, timeout=5)))


def states_alive_after(middleware, requests: int = 200) -> int:
    """How many requests' context objects are still alive after `requests` quick requests."""

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = middleware(app, timeout=30)
    refs: list[weakref.ref] = []

    async def one() -> None:
        state = State()
        refs.append(weakref.ref(state))
        REQUEST_STATE.set(state)
        assert (await call(wrapped))[0] == 200

    async def many() -> int:
        for _ in range(requests):
            # Each in its own task and context, as each HTTP request is.
            await asyncio.get_running_loop().create_task(one(), context=contextvars.Context())
        gc.collect()
        return sum(ref() is not None for ref in refs)

    return asyncio.run(many())


def test_finished_requests_leave_nothing_alive():
    # At most the last one's (held by the event loop's last, cancelled, timer), however many ran.
    assert states_alive_after(deadline.Deadline, requests=500) <= 1


def bentoml_timeout() -> type:
    """BentoML's own TimeoutMiddleware, from a fresh copy of its module (the service, once
    imported, has put `Deadline` in its place)."""
    spec = importlib.util.find_spec(traffic.__name__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TimeoutMiddleware


def test_bentoml_s_own_timeout_keeps_every_request_alive():
    """Why serving.deadline exists; when this fails, BentoML has fixed its middleware and the
    replacement can go."""
    assert states_alive_after(bentoml_timeout()) == 200


class Factory(BaseAppFactory):
    name = "test"


def test_installed_bentoml_builds_the_deadline_with_its_timeout(monkeypatch):
    monkeypatch.setattr(traffic, "TimeoutMiddleware", bentoml_timeout())
    deadline.install()
    [built] = Factory(timeout=30).middlewares
    assert built.cls is deadline.Deadline and built.kwargs == {"timeout": 30}
