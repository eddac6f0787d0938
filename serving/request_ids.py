"""Every request has an id, with tracing or without, and every answer names it.

BentoML takes a request's id from its OpenTelemetry span (a hook of its tracing middleware) and
writes it into the prediction records, and only its own API routes (`/predict`) put it in the
`X-BentoML-Request-ID` header. Tracing costs a worker about 0.45 ms of CPU per small request even
when no span is exported, so the service leaves it off unless TRACING=1 (serving.settings); then
`RequestId` gives each request a random 64-bit id in the same place, and it puts the header on
every answer, whichever route or refusal produced it, so that a client can find its request in
the records (which write the id in decimal; the header, as BentoML writes it, in hex).
"""

from __future__ import annotations

import random

from bentoml._internal.context import trace_context

HEADER = b"x-bentoml-request-id"


def header_value(request_id: int) -> bytes:
    """The id as BentoML writes it in the header: 16 hex digits."""
    return format(request_id, "016x").encode()


class RequestId:
    """ASGI middleware: a request id where tracing gave none, and the header on every answer."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = trace_context.request_id
        if request_id is None:
            request_id = random.getrandbits(64)  # an id, not a secret
            trace_context.request_id = request_id
        value = header_value(request_id)

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == HEADER for name, _ in headers):
                    message = message | {"headers": [*headers, (HEADER, value)]}
            await send(message)

        await self.app(scope, receive, sending)
