"""OpenAI-shaped errors: what `cai serve` answers instead of a 200."""

from __future__ import annotations

import logging
from typing import Any

from cai.errors import UserInputError

log = logging.getLogger("cai.serve")


class ApiError(Exception):
    """An answer other than 200, with an OpenAI-shaped body."""

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code

    def body(self) -> dict[str, Any]:
        return error_body(str(self), self.kind, self.param, self.code)


class RequestError(ApiError):
    """A bad request: answered with HTTP 400 and the message."""


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def unsupported(name: str, why: str = "") -> RequestError:
    """A field (or a value of it) that cai serve does not do, refused by name."""
    return RequestError(f"'{name}' is not supported by cai serve{why}", param=name, code="unsupported_parameter")


def as_api_error(e: BaseException) -> ApiError:
    """Any failure as an ApiError: a user's mistake is a 400, anything else a logged 500."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, UserInputError):
        return RequestError(str(e))
    log.error("request failed", exc_info=e)
    return ApiError(f"backend error: {type(e).__name__}", 500, "server_error")
