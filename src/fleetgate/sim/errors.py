"""vLLM 0.32's error bodies: ``{"error": {"message", "type", "param", "code"}}``, code = status.

The messages are worded as vLLM words them, so clients (and the gateway) that parse them see
the same text from the simulator as from a real server.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from pydantic import ValidationError

_TYPES = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}


class ApiError(Exception):
    """A refusal that becomes a vLLM-style JSON error response."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, type_: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type_ or _TYPES.get(status, "BadRequestError")

    def response(self) -> web.Response:
        return error_response(self.status, self.message, self.type, self.param)


def error_response(status: int, message: str, type_: str, param: str | None) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": status}}
    return web.json_response(body, status=status, dumps=compact_json)


def compact_json(data: Any) -> str:
    """vLLM (FastAPI) writes JSON without spaces."""
    return json.dumps(data, separators=(",", ":"))


def bad_param(message: str, param: str, value: Any = ..., *, show_param: bool = True) -> ApiError:
    """vLLM's parameter errors end with ``(parameter=P, value=V)``."""
    if show_param:
        suffix = f"parameter={param}" if value is ... else f"parameter={param}, value={value}"
        message = f"{message} ({suffix})"
    return ApiError(400, message, param=param)


def unknown_model(name: str, served: str) -> ApiError:
    return ApiError(
        404, f"The model `{name}` does not exist. Valid aliases: {served}.", param="model"
    )


def prompt_too_long(max_model_len: int) -> ApiError:
    # vLLM stops counting at max_model_len + 1, so the number it reports is always that.
    over = max_model_len + 1
    return bad_param(
        f"This model's maximum context length is {max_model_len} tokens. However, your prompt "
        f"contains at least {over} input tokens, which exceeds this limit even without any "
        "output tokens. Please reduce the length of the input prompt.",
        "input_tokens",
        over,
    )


def max_tokens_over_len(max_tokens: int, max_model_len: int, param: str = "max_tokens") -> ApiError:
    return bad_param(
        f"{param}={max_tokens} cannot be greater than max_model_len={max_model_len}. "
        "Please request fewer output tokens.",
        param,
        max_tokens,
    )


def max_tokens_too_small(value: int) -> ApiError:
    return bad_param(f"max_tokens must be at least 1, got {value}.", "max_tokens", value)


def engine_dead() -> ApiError:
    return ApiError(
        500, "EngineCore encountered an issue. See stack trace (above) for the root cause."
    )


def _shown_input(value: Any) -> str:
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return str(value)


def _validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """FastAPI-style request validation, as vLLM renders it: type ``Bad Request``."""
    lines = []
    for err in errors:
        item = {
            "type": err["type"],
            "loc": ".".join(str(part) for part in err["loc"]),
            "msg": err["msg"],
            "input": _shown_input(err["input"]),
        }
        if err.get("ctx"):
            item["ctx"] = err["ctx"]
        lines.append(repr(item))
    n = len(lines)
    message = f"{n} validation error{'s' if n != 1 else ''}:\n  " + "\n  ".join(lines)
    first = ".".join(str(part) for part in errors[0]["loc"])
    return ApiError(400, message, param=first, type_="Bad Request")


def query_validation(errors: list[dict[str, Any]]) -> ApiError:
    """A query parameter FastAPI refused (``loc`` starts with ``query``)."""
    return _validation_error(errors)


# pydantic names the member of a union that failed (``stop.str``); vLLM's locations do not
_UNION_TAG = re.compile(r"^(str|int|float|bool|list\[.*\]|dict\[.*\])$")


def from_validation(exc: ValidationError) -> ApiError:
    errors = [
        {
            "type": e["type"],
            "loc": ("body", *(p for p in e["loc"] if not _UNION_TAG.match(str(p)))),
            "msg": e["msg"],
            "input": e.get("input"),
            "ctx": {k: str(v) for k, v in (e.get("ctx") or {}).items()},
        }
        for e in exc.errors(include_url=False)
    ]
    return _validation_error(errors)


def from_json_error(exc: json.JSONDecodeError) -> ApiError:
    return _validation_error(
        [
            {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
        ]
    )


def missing_fields(names: list[str], body: dict[str, Any]) -> ApiError:
    return _validation_error(
        [
            {"type": "missing", "loc": ("body", name), "msg": "Field required", "input": body}
            for name in names
        ]
    )


def not_an_object(value: Any) -> ApiError:
    return _validation_error(
        [
            {
                "type": "model_attributes_type",
                "loc": ("body",),
                "msg": "Input should be a valid dictionary or object to extract fields from",
                "input": value,
            }
        ]
    )
