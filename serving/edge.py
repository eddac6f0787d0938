"""ASGI middleware in front of every route, BentoML's and ours: the service's edge.

It refuses before anything parses the request: a body over the limit (413, with or without a
Content-Length), a method an endpoint does not take (405), a body `/predict` cannot read (415).
It also says BentoML's own refusals our way: load shedding (503) with our JSON message and a
`Retry-After`, validation errors (400) with pydantic's message as the `error` text, and its
plain-text "Not Found" for a path nobody serves (404) as JSON naming the endpoints.
"""

from __future__ import annotations

import json

from serving import endpoints
from serving.errors import ApiError
from serving.settings import Settings


def no_endpoint(path: str) -> str:
    """The 404 message for a path nobody serves (BentoML's and our routes' alike): what exists,
    from the route table's listed rows."""
    return f"no endpoint {path}: {endpoints.what_exists()}"


class Edge:
    """Body limit, method and content-type checks, and load-shedding answers for the service.

    The settings are read when BentoML builds the app in each worker (at start, not import).
    """

    def __init__(self, app, *, settings: Settings | None = None) -> None:
        self.app = app
        self.settings = settings or Settings.from_env()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check_route(scope)
            receive = await self._limited(scope, receive)
        except ApiError as error:
            await error.response()(scope, receive, send)
            return
        await self.app(scope, receive, self._in_our_words(scope, receive, send))

    def _check_route(self, scope) -> None:
        path, method = scope["path"], scope["method"]
        allowed = endpoints.BODY_METHODS.get(path)
        if allowed is not None and method not in allowed and method != "OPTIONS":
            raise ApiError(
                f"{path} takes {' or '.join(allowed)}, not {method}; see the API at /",
                405,
                {"Allow": ", ".join(allowed)},
            )
        if path == "/predict" and method == "POST":
            content_type = _header(scope, b"content-type").lower()
            if not content_type.startswith("application/json"):
                raise ApiError(
                    f"/predict reads JSON, not {content_type or 'a body without a Content-Type'};"
                    ' send {"pixels": [[...784 numbers...], ...]} with Content-Type:'
                    " application/json, or POST image files to /predict_image or /predict_images",
                    415,
                )

    async def _limited(self, scope, receive):
        """`receive`, or a replay of the whole body once it is known to be within the limit."""
        limit = self.settings.max_body_bytes
        length = _header(scope, b"content-length")
        if length:
            if not length.isdigit():
                raise ApiError(f"the Content-Length {length!r} is not a number of bytes")
            if int(length) > limit:
                raise _too_large(limit)
            return receive
        if scope["method"] in ("GET", "HEAD"):
            return receive
        # No length given (chunked upload): read up to the limit, then replay what was read.
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                raise _too_large(limit)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _in_our_words(self, scope, receive, send):
        """`send`, with BentoML's own refusals said our way: on /predict and /metadata a 503
        (load shed) as our message with Retry-After and a 400 with its validation detail as the
        `error` text instead of "1 validation error for Input"; elsewhere a plain-text 404 (no
        such path) as JSON that names the endpoints. Other answers pass straight through."""
        path = scope["path"]
        state = {"status": 0, "reword": False, "body": b""}

        async def wrapped(message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["reword"] = _bentoml_refusal(path, message)
                if not state["reword"]:
                    await send(message)
                return
            if message["type"] != "http.response.body" or not state["reword"]:
                await send(message)
                return
            state["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            answer = self._reworded(state["status"], state["body"], path)
            await answer(scope, receive, send)

        return wrapped

    def _reworded(self, status: int, body: bytes, path: str):
        if status == 404:
            return ApiError(no_endpoint(path), 404).response()
        if status == 503:
            seconds = self.settings.retry_after_s
            return ApiError(
                f"the service is busy and cannot answer in time; retry after {seconds} s,"
                " or send smaller batches",
                503,
                {"Retry-After": str(seconds)},
            ).response()
        return ApiError(_validation_message(body)).response()


def _validation_message(body: bytes) -> str:
    """The message of BentoML's 400 body: pydantic's first error, with where it was."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace") or "the request is invalid"
    if isinstance(answer, list) and answer:  # BentoML wraps some refusals in a 1-tuple
        answer = answer[0]
    if not isinstance(answer, dict):
        return str(answer)
    details = answer.get("detail")
    if not isinstance(details, list) or not details or not isinstance(details[0], dict):
        return str(answer.get("error") or answer)
    first = details[0]
    message = str(first.get("msg", "")).removeprefix("Value error, ")
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    if first.get("type") == "missing":
        return (
            f'{where or "a field"} is missing; send JSON like {{"pixels": [[...784 numbers...]]}}'
        )
    return f"{where}: {message}" if where and not message.startswith(where) else message


def _bentoml_refusal(path: str, start_message) -> bool:
    """Whether a response (its start message) is one of BentoML's refusals that we reword: a 400
    or 503 of its own endpoints, or its plain-text 404 (ours, e.g. OIP's unknown model, are
    JSON already)."""
    status = start_message["status"]
    if path in endpoints.BENTOML_APIS:
        return status in (400, 503)
    if status != 404:
        return False
    return not _header(start_message, b"content-type").startswith("application/json")


def _header(scope, name: bytes) -> str:
    """A header of a request's scope or a response's start message ("" when absent)."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return value.decode("latin-1").strip()
    return ""


def _too_large(limit: int) -> ApiError:
    return ApiError(
        f"the request body is over the limit of {limit} bytes; send smaller or fewer images"
        " (the limit is MAX_BODY_BYTES)",
        413,
    )
