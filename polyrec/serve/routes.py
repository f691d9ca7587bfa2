"""The request path around the endpoints: per-request stage timing (the Server-Timing header) and a route
class that validates the JSON body from bytes in one pydantic-core call.

FastAPI's own body handling parses JSON with `json.loads`, validates the Python objects, solves dependencies
and then runs a sync endpoint in the threadpool. For a scoring endpoint that is pure overhead: pydantic-core
parses and validates the bytes in one pass (`model_validate_json`), and the endpoint runs inline on the event
loop (no thread hop; the work is CPU-bound and holds the GIL for most of it, so a thread would not overlap it
with anything). The route still takes its OpenAPI document from the endpoint's signature and response model,
so /openapi.json names every feature as before.
"""

from __future__ import annotations

import email.message
import inspect
import time
from contextvars import ContextVar
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

STAGES_KEY = "polyrec.stages"  # ASGI scope key: the request's Stages, read by ServerTiming


class Stages:
    """Wall time of a request's stages, in order (time.perf_counter; a few microseconds in all). The endpoint
    marks the end of each stage; ServerTiming sends them with the total in the Server-Timing header, so a
    client can tell server time from network and client time."""

    __slots__ = ("start", "last", "items")

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.items: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        now = time.perf_counter()
        self.items.append((name, now - self.last))
        self.last = now

    def header(self) -> bytes:
        """`total;dur=3.214, parse;dur=0.301, ...` in milliseconds (the Server-Timing syntax)."""
        total = time.perf_counter() - self.start
        parts = [f"total;dur={1000 * total:.3f}", *(f"{n};dur={1000 * d:.3f}" for n, d in self.items)]
        return ", ".join(parts).encode()


_current: ContextVar[Stages | None] = ContextVar("polyrec_stages", default=None)


def current_stages() -> Stages:
    """The running request's Stages (set by JsonBodyRoute; a throwaway one outside a request), so endpoints
    mark stages without a parameter that FastAPI would document as a query parameter."""
    return _current.get() or Stages()


class ServerTiming:
    """ASGI middleware: starts a Stages when the request arrives and adds `Server-Timing` to the response
    head (total = arrival to response start: body read, validation, scoring, the answer's JSON)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        stages = Stages()
        scope[STAGES_KEY] = stages

        async def timed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", stages.header())]}
            await send(message)

        await self.app(scope, receive, timed_send)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    msg = email.message.Message()
    msg["content-type"] = content_type
    sub = msg.get_content_subtype()
    return msg.get_content_maintype() == "application" and (sub == "json" or sub.endswith("+json"))


def _body_error(kind: str, msg: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body",), "msg": msg, "input": None}])


def _located(error: Any) -> dict[str, Any]:
    """A pydantic error as FastAPI reports body errors: loc under "body"; bytes (a body that is not valid
    JSON or UTF-8) are not echoed back, since the answer is JSON."""
    out = {**error, "loc": ("body", *error["loc"])}
    if isinstance(out.get("input"), (bytes, bytearray)):
        out["input"] = None
    return out


class JsonBodyRoute(APIRoute):
    """An APIRoute whose endpoint takes one pydantic model (its first parameter's annotation) and returns a
    Response. Requests: the body bytes -> `Model.model_validate_json` -> endpoint(model) on the event loop.
    A body that is not JSON, or fails validation, is FastAPI's 422 (loc starting with "body")."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        model = next(iter(inspect.signature(endpoint).parameters.values())).annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{endpoint.__name__}: the first parameter must be annotated with a pydantic model")

        async def handler(request: Request) -> Response:
            body = await request.body()
            if not body:
                raise _body_error("missing", "Field required (the body is empty: send a JSON object)")
            if not _is_json(request.headers.get("content-type")):
                raise _body_error("model_attributes_type",
                                  "the body must be JSON sent with content-type: application/json")
            try:
                parsed = model.model_validate_json(body)
            except ValidationError as exc:
                raise RequestValidationError([_located(e) for e in exc.errors(include_url=False)]) from None
            stages = request.scope.get(STAGES_KEY)
            stages = stages if isinstance(stages, Stages) else Stages()  # no ServerTiming in front
            stages.mark("parse")
            token = _current.set(stages)
            try:
                return endpoint(parsed)
            finally:
                _current.reset(token)

        return handler
