"""A service's answers checked against its own OpenAPI document (`/docs.json`).

`assert_conforms`: the status is one the document lists for that route and method, and the body
validates (jsonschema, the document's `$ref`s resolved) against the schema documented for that status
and media type. `fuzz` sends schemathesis-generated requests (valid and schema-breaking bodies) to every
operation; `bad_requests` are the hand-picked ones generation rarely hits: non-object JSON, broken JSON,
wrong types, missing and unknown fields, oversized and non-JSON bodies, missing or wrong API key.
Works with a starlette TestClient (in-process) and an httpx client of a `bentoml serve` subprocess.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jsonschema
from hypothesis import HealthCheck, Phase, given, settings

METHODS = ("get", "put", "post", "delete", "patch")
HEALTH = frozenset({"/livez", "/readyz", "/healthz"})
FORM = "application/x-www-form-urlencoded"


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path, operation) of every documented operation."""
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def assert_conforms(doc: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """The answer is documented for `method path`: its status, media type and body schema."""
    responses = doc["paths"][path][method.lower()]["responses"]
    status = str(response.status_code)
    where = f"{method} {path} -> {status} {response.text[:300]!r}"
    assert status in responses, f"{where}: undocumented status (documented: {sorted(responses)})"
    content = responses[status].get("content")
    if not content:
        return
    media = response.headers.get("content-type", "").split(";")[0].strip()
    assert media in content, f"{where}: media type {media!r} is not documented ({sorted(content)})"
    schema = content[media].get("schema")
    if schema is None:
        return
    body = response.json() if media == "application/json" else response.text
    # the document's components sit beside the schema, so its "#/components/..." references resolve
    validator = jsonschema.Draft202012Validator({**schema, "components": doc.get("components", {})})
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"{where}: body does not match the documented schema: {errors[:5]}"


def send(client: httpx.Client, method: str, path: str, *, content: bytes | None = None,
         headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return client.request(method, path, content=content, headers=headers or {}, **kwargs)


@dataclass(frozen=True)
class BadRequest:
    """A hand-picked request and the status it must get (None: any status the document lists)."""

    name: str
    method: str
    path: str
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: int | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _request_schema(doc: dict[str, Any], op: dict[str, Any]) -> dict[str, Any]:
    return _resolve(doc, op["requestBody"]["content"]["application/json"]["schema"])


def _row_datetimes(doc: dict[str, Any], schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(array property, date-time field of its items) of a request body schema."""
    found = []
    for name, prop in schema.get("properties", {}).items():
        items = _resolve(doc, prop.get("items") or {})
        found += [(name, field) for field, sub in items.get("properties", {}).items()
                  if sub.get("format") == "date-time"]
    return found


def bad_requests(doc: dict[str, Any], valid: dict[str, dict[str, Any]], *, body_limit: int,
                 auth: dict[str, str] | None) -> list[BadRequest]:
    """Bad requests for every operation; `valid` holds a valid body per path that reads one, `auth` the
    headers carrying the API key (None: no key configured)."""
    out: list[BadRequest] = []
    for method, path, op in operations(doc):
        keyed = dict(auth or {})
        if auth is not None and path not in HEALTH:
            out += [BadRequest("no key", method, path, expect=401),
                    BadRequest("wrong key", method, path, headers={"x-api-key": "wrong"}, expect=401),
                    BadRequest("basic auth", method, path, headers={"authorization": "Basic " + "x" * 8},
                               expect=401)]
        out.append(BadRequest("unknown query parameter", method, path + "?unknown=1", headers=keyed))
        if "requestBody" in op:
            out += _bad_bodies(doc, method, path, _request_schema(doc, op), valid[path], body_limit=body_limit,
                               headers={**keyed, "content-type": "application/json"})
    return out


def _bad_bodies(doc: dict[str, Any], method: str, path: str, schema: dict[str, Any], valid: dict[str, Any], *,
                body_limit: int, headers: dict[str, str]) -> list[BadRequest]:
    out: list[BadRequest] = []

    def body(name: str, content: bytes, expect: int | None = 400, extra: dict[str, str] | None = None) -> None:
        out.append(BadRequest(name, method, path, content, {**headers, **(extra or {})}, expect))

    for value in ([None, None], None, "rows", 1, True, []):
        body(f"non-object JSON {value!r}", _json(value))
    body("broken JSON", b'{"a": ')
    body("empty body", b"")
    body("missing fields", b"{}")
    body("unknown field", _json({**valid, "unknown_field": 1}), 400 if schema.get("additionalProperties") is False
         else None)
    for name in schema.get("properties", {}):
        body(f"wrong type of {name}", _json({**valid, name: [[]]}))
        body(f"null {name}", _json({**valid, name: None}), None)
    for rows, name in _row_datetimes(doc, schema):  # not representable in UTC (400), or far off (route's call)
        for when, expect in (("0001-01-01T00:00:00+05:00", 400), ("9999-12-31T23:59:59-05:00", 400),
                             ("1000-01-01T00:00:00Z", None)):
            body(f"{name} at {when}", _json({**valid, rows: [{**valid[rows][0], name: when}]}), expect)
    body("oversized body", b"[" + b" " * body_limit + b"]", 413)
    body("text/plain JSON", _json(valid), None, {"content-type": "text/plain"})
    body("form body", b"a=1", 415, {"content-type": FORM})
    body("multipart body", b"--b\r\n\r\n--b--\r\n", 415, {"content-type": "multipart/form-data; boundary=b"})
    body("pickle body", b"\x80\x04N.", 415, {"content-type": "application/vnd.bentoml+pickle"})
    return out


def check_bad_requests(client: httpx.Client, doc: dict[str, Any], requests: list[BadRequest]) -> Counter[int]:
    """Send each bad request; every answer conforms and has its expected status. Returns the statuses seen."""
    seen: Counter[int] = Counter()
    for r in requests:
        response = send(client, r.method, r.path, content=r.content, headers=r.headers)
        assert r.expect is None or response.status_code == r.expect, \
            f"{r.name}: {r.method} {r.path} -> {response.status_code} (expected {r.expect}): {response.text[:300]}"
        assert_conforms(doc, r.method, r.path.split("?")[0], response)
        seen[response.status_code] += 1
    return seen


def check_chunked_oversized(client: httpx.Client, doc: dict[str, Any], path: str, *, body_limit: int,
                            headers: dict[str, str]) -> None:
    """A body without a content-length (chunked) past the limit is refused too (read up to the limit)."""

    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(body_limit // 65536 + 1):
            yield b" " * 65536
        yield b"]"

    response = client.post(path, content=chunks(), headers={**headers, "content-type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert_conforms(doc, "POST", path, response)


def fuzz(client: httpx.Client, doc: dict[str, Any], *, headers: dict[str, str], max_examples: int) -> Counter[str]:
    """schemathesis-generated requests for every operation: its coverage phase (boundary values, each
    field missing or mistyped, other methods) and hypothesis-generated requests, bodies valid by the
    schema and, where a route reads one, bodies breaking it (`max_examples` each; a tenth without a
    body). Every answer is checked by `assert_conforms` and schemathesis' own checks (documented status,
    media type and body; a schema-breaking body is refused), and none may be a 500. Deterministic.
    Returns the requests sent per operation and phase/mode."""
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.result import Ok

    schema = schemathesis.openapi.from_dict(doc)
    both = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    counts: Counter[str] = Counter()
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            raise result.err()
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        # the coverage phase: deterministic boundary values, missing and mistyped fields, other methods
        for case in schema.iter_coverage_cases(op, generation_modes=both,
                                               generation_config=schema.config.generation_for(operation=op)):
            _check_case(client, doc, case, headers)
            counts[f"{label} coverage"] += 1
        for mode in both if op.body else both[:1]:  # without a body only headers vary: fewer examples
            counts[f"{label} {mode.value}"] = _fuzz_operation(
                client, doc, op, mode, headers=headers, max_examples=max_examples if op.body else max_examples // 10)
    return counts


def _checks() -> list[Any]:
    from schemathesis import checks as known

    return [getattr(known, name) for name in (
        "status_code_conformance", "content_type_conformance", "response_schema_conformance",
        "negative_data_rejection")]


def _check_case(client: httpx.Client, doc: dict[str, Any], case: Any, headers: dict[str, str]) -> None:
    """Send one generated case (with the key); its answer conforms (a method the path does not
    document: 405 with the error body and `Allow`)."""
    kw = case.as_transport_kwargs(base_url=str(client.base_url).rstrip("/"), headers=headers)
    content = kw.get("data")
    response = client.request(
        kw["method"], kw["url"], headers=kw.get("headers"), params=kw.get("params") or None,
        json=kw.get("json"), content=content.encode() if isinstance(content, str) else content)
    path = case.operation.path
    if case.method.lower() not in doc["paths"][path]:
        assert response.status_code == 405 and "allow" in response.headers, f"{case.method} {path}: {response.text}"
        assert set(response.json()) == {"error"}, response.text
        return
    # a documented 503 (a dependency missing) is an answer; a 500 is a bug even though it is documented
    assert response.status_code != 500, f"{case.method} {path}: server error {response.text[:300]}"
    assert_conforms(doc, case.method.upper(), path, response)
    case.validate_response(response, checks=_checks())


def _fuzz_operation(client: httpx.Client, doc: dict[str, Any], op: Any, mode: Any, *, headers: dict[str, str],
                    max_examples: int) -> int:
    sent = 0

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        nonlocal sent
        _check_case(client, doc, case, headers)
        sent += 1

    run()
    return sent
