"""The request deadline (BentoML's `traffic.timeout`), without leaving every request alive.

BentoML 1.4's TimeoutMiddleware schedules `loop.call_later(timeout, ...)` for every request and
never cancels it. The timer holds the request's context (its OpenTelemetry span, a future, the
context variables) until it fires, `timeout` seconds later: at 800 requests/s and 30 s, each
worker kept ~24,000 requests' objects alive, so Python's full garbage collections ran every half
second and took 70-100 ms each, stalling every request in flight (see docs/performance.md).

`Deadline` keeps the same contract (no response started within `timeout` seconds: the request is
cancelled and answered 504) with `asyncio.timeout`, whose timer goes when the answer starts or
the request ends. `install()` puts it in the place BentoML builds its middleware from; it has to
run before BentoML builds the app, which it does after importing the service module.
"""

from __future__ import annotations

import asyncio

from serving.errors import ApiError


class Deadline:
    """ASGI middleware: answer 504 when no response has started within `timeout` seconds."""

    def __init__(self, app, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        started = False
        try:
            async with asyncio.timeout(self.timeout) as deadline:

                async def sending(message) -> None:
                    nonlocal started
                    if not started:
                        # Once the answer is on its way the deadline no longer applies.
                        started = True
                        deadline.reschedule(None)
                    await send(message)

                await self.app(scope, receive, sending)
        except TimeoutError:
            if started or not deadline.expired():
                raise
            await self._timed_out()(scope, receive, send)

    def _timed_out(self):
        return ApiError(
            f"the service could not answer within {self.timeout:g} s; retry later, or send"
            " smaller batches",
            504,
        ).response()


def install() -> None:
    """Make BentoML build `Deadline` wherever it would build its own TimeoutMiddleware."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = Deadline
