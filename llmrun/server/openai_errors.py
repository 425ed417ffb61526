"""OpenAI-style error objects: `{"error": {"message", "type", "param", "code"}}`.

Every failure the server answers, from a bad field to an unknown route, goes out
in this shape, so an OpenAI client raises its usual exception with our message
(under /api/, Ollama's shape instead: app.ERROR_SHAPES). ApiError is what every
route raises.
"""

from __future__ import annotations

from typing import Any

from llmrun.errors import BadInput, ContextOverflow, LlmrunError

# HTTP status -> OpenAI error type, as OpenAI's API uses them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    500: "server_error",
    501: "invalid_request_error",
    503: "server_error",
}


class ApiError(Exception):
    """A request we refuse: the HTTP status and what the error object says."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_llmrun(e: LlmrunError) -> ApiError:
    """A library error raised while serving a request: bad input is the client's, else ours."""
    if isinstance(e, ContextOverflow):
        return ApiError(400, str(e), code="context_length_exceeded")
    if isinstance(e, BadInput):
        return ApiError(400, str(e), code="invalid_value")
    return ApiError(500, str(e), code="engine_error")
