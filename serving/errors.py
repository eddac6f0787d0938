"""Refusals: one exception type carries the status and a message that says what to send instead."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the service refuses: HTTP `status` (4xx) and a message for the client."""

    def __init__(
        self, message: str, status: int = 400, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        # `{"error": message}` is also the Open Inference Protocol's error body.
        return JSONResponse({"error": self.message}, self.status, headers=self.headers)
