"""The HTTP surface every service shares, in one place: one error body (`ErrorBody`) for every 4xx and
5xx answer, request bodies bounded (413) and JSON (415), and `/docs.json` documenting every status each
route can return with the body it sends.

BentoML answers some errors itself in shapes of its own (a bad `/predict` body: `{"error", "detail"}`
with pydantic's items; a refused content type: a one-item list; a probe: plain text) and documents
errors it never sends (404 on an API, a `detail` string). `HttpContract`, an ASGI middleware every
service adds (`expose`), rewrites each error answer into `ErrorBody` and patches the generated
document (`document`); the services' FastAPI routes answer the same body (`install_error_handlers`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from retrain.core.config import Settings, get_settings
from retrain.serving.models import ErrorBody, ErrorItem
from retrain.serving.runtime import HEALTH_PATHS, ApiKeyMiddleware, ASGIApp, Receive, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

DOCS_PATH = "/docs.json"
METRICS_PATH = "/metrics"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# the content types BentoML would not read as JSON (its form, multipart and pickle decoders)
NOT_JSON = frozenset({"multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"})
BODY_BASE_BYTES = 1 << 20
BODY_ROW_BYTES = 16 << 10
REF_PREFIX = "#/components/schemas/"
UNEXPECTED = "Unexpected error; the server log has the details."
# the schemas in the document are pydantic's JSON Schema 2020-12 (a numeric exclusiveMinimum, type null),
# which is OpenAPI 3.1's dialect: BentoML labels the document 3.0.2, under which they are invalid
OPENAPI_VERSION = "3.1.0"
# error schemas BentoML and FastAPI put in the document; dropped once nothing refers to them
_FOREIGN_SCHEMAS = ("InvalidArgument", "NotFound", "InternalServerError", "HTTPValidationError", "ValidationError")
_OPERATIONS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_SECURITY = {"ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "x-api-key"},
             "BearerAuth": {"type": "http", "scheme": "bearer"}}


def body_limit(max_batch: int) -> int:
    """The largest request body a service reads: 1 MiB plus 16 KiB per row of its largest batch."""
    return BODY_BASE_BYTES + max_batch * BODY_ROW_BYTES


def error_json(message: str, detail: Sequence[ErrorItem] = ()) -> bytes:
    return ErrorBody(error=message, detail=list(detail)).model_dump_json(exclude_defaults=True).encode()


def error_response(status: int, message: str, detail: Sequence[ErrorItem] = (),
                   headers: Mapping[str, str] | None = None) -> Response:
    """An `ErrorBody` answer (a BentoML API may return it: BentoML passes a Response through)."""
    return Response(error_json(message, detail), status_code=status, media_type="application/json",
                    headers=dict(headers or {}))


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _invalid(n: int) -> str:
    return f"{n} validation error{'' if n == 1 else 's'} in the request body"


def _items(raw: Any) -> list[ErrorItem]:
    """pydantic/FastAPI error entries as `ErrorItem`s (loc, type, msg; the input and links dropped)."""
    if not isinstance(raw, list):
        return []
    items = []
    for e in raw:
        if isinstance(e, dict) and isinstance(e.get("msg"), str):
            loc = [p for p in e.get("loc") or () if isinstance(p, str | int)]
            items.append(ErrorItem(loc=loc, type=str(e.get("type") or "invalid"), msg=e["msg"]))
    return items


def normalize_error(status: int, content_type: str, body: bytes) -> bytes:
    """Any error answer as an `ErrorBody`, keeping its message and its field-level items."""
    if "json" not in content_type:
        text = body.decode("utf-8", "replace").strip()
        return error_json(text[:2000] or _phrase(status))
    try:
        payload = json.loads(body)
    except ValueError:
        return error_json(_phrase(status))
    if isinstance(payload, list) and len(payload) == 1:  # BentoML answers a 4xx as a one-item list
        payload = payload[0]
    if not isinstance(payload, dict):
        return error_json(_phrase(status))
    items = _items(payload.get("detail"))
    message = payload.get("error")
    if not isinstance(message, str):
        message = payload.get("detail") if isinstance(payload.get("detail"), str) else None
    if message is None:
        message = _invalid(len(items)) if items else _phrase(status)
    return error_json(message, items)


# ---------------------------------------------------------------------- the document


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF_PREFIX + "ErrorBody"}}}}


def _refs(node: Any, found: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.add(value)
            else:
                _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)
    return found


def document(doc: dict[str, Any], *, api_key: bool, max_body_bytes: int,
             unavailable: Mapping[str, str]) -> dict[str, Any]:
    """BentoML's generated OpenAPI document with every status each route can return and its body.

    Kept: the success answers (the probes' and metrics' as text). Added: 400/413/415/504 where a route
    reads a body, 401 (and the security schemes) when an API key is configured, 503 on `unavailable`
    routes and `/readyz`, 500 everywhere but the probes, all as `ErrorBody`. Dropped: the error entries
    BentoML and FastAPI generate. Labelled OpenAPI 3.1, the dialect its schemas are written in.
    """
    doc["openapi"] = OPENAPI_VERSION
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorBody.model_json_schema(ref_template=REF_PREFIX + "{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorBody"] = error_schema
    if api_key:
        doc["components"]["securitySchemes"] = dict(_SECURITY)
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if method not in _OPERATIONS or not isinstance(op, dict):
                continue
            responses = {str(code): r for code, r in op.get("responses", {}).items() if str(code).startswith("2")}
            plain = path in HEALTH_PATHS or path == METRICS_PATH
            if plain:  # probes and metrics answer text
                for r in responses.values():
                    r.setdefault("content", {"text/plain": {"schema": {"type": "string"}}})
            if "requestBody" in op:
                responses["400"] = _error("The body is not JSON or breaks a rule of the request schema; `detail` "
                                          "names each broken rule and its field when the schema is broken.")
                responses["413"] = _error(f"The body is larger than {max_body_bytes} bytes.")
                responses["415"] = _error("The body is not JSON: send `Content-Type: application/json` (form, "
                                          "multipart and pickle bodies are refused).")
                responses["504"] = _error("Not answered within the service's traffic timeout.")
            if api_key and path not in HEALTH_PATHS:
                responses["401"] = _error("Missing or wrong API key: send `x-api-key: <key>` or "
                                          "`Authorization: Bearer <key>`.")
                op["security"] = [{name: []} for name in _SECURITY]
            if path in unavailable:
                responses["503"] = _error(unavailable[path])
            elif path == "/readyz":
                responses["503"] = _error("Not ready: no model loaded yet, or a store it needs is not open.")
            if path not in HEALTH_PATHS:
                responses["500"] = _error(UNEXPECTED)
            op["responses"] = dict(sorted(responses.items()))
    for name in _FOREIGN_SCHEMAS:
        others = {k: v for k, v in schemas.items() if k != name}
        if name in schemas and REF_PREFIX + name not in _refs([doc.get("paths"), others], set()):
            del schemas[name]
    return doc


# ---------------------------------------------------------------------- the middleware


class HttpContract:
    """Bounds and types request bodies, answers every error as `ErrorBody`, documents it in `/docs.json`.

    A body method with a non-JSON content type is refused (415), a body over `max_body_bytes` too (413:
    by its content-length, unread; a chunked body is read up to the limit first). Error answers from
    inside (BentoML's, Starlette's, the routes') are rewritten into `ErrorBody` with their status and
    headers; the document is patched by `document`. Successful answers stream through untouched.
    """

    def __init__(self, app: ASGIApp, *, settings_provider: Callable[[], Settings] = get_settings,
                 unavailable: Mapping[str, str] | None = None, max_body_bytes: int | None = None) -> None:
        settings = settings_provider()
        self.app = app
        self.max_body_bytes = max_body_bytes if max_body_bytes is not None else body_limit(settings.serve_max_batch)
        self.api_key = bool(settings.api_key_value)
        self.unavailable = dict(unavailable or {})

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return
        if scope["method"] in BODY_METHODS:
            headers = {k.lower(): v for k, v in scope.get("headers") or []}
            media_type = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            if media_type in NOT_JSON:
                await _answer(send, 415, error_json(f"the body must be JSON (Content-Type: application/json), "
                                                    f"not {media_type}"))
                return
            length = headers.get(b"content-length")
            if length is not None and length.strip().isdigit():
                if int(length) > self.max_body_bytes:
                    await _answer(send, 413, self._too_large(int(length)))
                    return
            else:
                read = await self._read_body(receive)
                if read is None:
                    await _answer(send, 413, self._too_large(None))
                    return
                receive = read
        docs = scope["method"] == "GET" and scope.get("path") == DOCS_PATH
        rewriting = _Rewriting(send, self._document if docs else None)
        try:
            await self.app(scope, receive, rewriting)
        except Exception:
            if not rewriting.started:  # else the server logs it; the client already has its answer
                await _answer(send, 500, error_json(UNEXPECTED))
            raise

    def _too_large(self, size: int | None) -> bytes:
        given = f"of {size} bytes " if size is not None else ""
        return error_json(f"request body {given}exceeds the limit of {self.max_body_bytes} bytes")

    async def _read_body(self, receive: Receive) -> Receive | None:
        """A chunked body read up to the limit: a receive replaying it, or None when it is too large."""
        chunks: list[bytes] = []
        size = 0
        first: dict[str, Any] = {"type": "http.request", "body": b"", "more_body": False}
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        if first["type"] == "http.request":
            first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return first

        return replay

    def _document(self, raw: bytes) -> bytes:
        try:
            doc = json.loads(raw)
        except ValueError:
            return raw
        return json.dumps(document(doc, api_key=self.api_key, max_body_bytes=self.max_body_bytes,
                                   unavailable=self.unavailable)).encode()


class _Rewriting:
    """The `send` of one request: error answers (and the document, with `document`) are held until
    complete and sent rewritten; anything else passes through."""

    def __init__(self, send: Send, document: Callable[[bytes], bytes] | None) -> None:
        self.send = send
        self.document = document
        self.held: dict[str, Any] | None = None
        self.body = bytearray()
        self.started = False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            if status >= 400 or (self.document is not None and status == 200):
                self.held = message
                return
            self.started = True
            await self.send(message)
            return
        if message["type"] != "http.response.body" or self.held is None:
            await self.send(message)
            return
        self.body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        start, self.held = self.held, None
        status = start["status"]
        headers = start.get("headers") or []
        content_type = next((v.decode("latin-1") for k, v in headers if k.lower() == b"content-type"), "")
        kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
        raw = bytes(self.body)
        if status >= 400:
            out = normalize_error(status, content_type, raw)
        else:
            assert self.document is not None
            out = self.document(raw)
        self.started = True
        await _answer(self.send, status, out, kept)


async def _answer(send: Send, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*headers, (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- wiring a service


def _body_loc(loc: Any) -> list[Any]:
    """FastAPI's `["body", ...]` from the body down (as BentoML's `/predict` names fields)."""
    parts = list(loc or ())
    return parts[1:] if parts[:1] == ["body"] else parts


def install_error_handlers(app: FastAPI) -> None:
    """A FastAPI app's errors as `ErrorBody`: a body breaking the route's model is a 400 naming each field
    (as `/predict` answers, `loc` from the body down), an HTTPException keeps its status and headers."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import Request

    async def invalid(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        items = _items([{**e, "loc": _body_loc(e.get("loc"))} for e in exc.errors()])
        return error_response(400, _invalid(len(items)), items)

    async def refused(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail), headers=exc.headers)

    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, refused)


def expose(service: Any, extras: FastAPI | None, *, unavailable: Mapping[str, str],
           settings_provider: Callable[[], Settings] = get_settings) -> None:
    """Wire a BentoML service's HTTP surface: the API key (401, outermost), then `HttpContract`, and the
    error handlers of its FastAPI routes. `unavailable`: path -> when that route answers 503."""
    service.add_asgi_middleware(ApiKeyMiddleware, settings_provider=settings_provider)
    service.add_asgi_middleware(HttpContract, settings_provider=settings_provider, unavailable=unavailable)
    if extras is not None:
        install_error_handlers(extras)
