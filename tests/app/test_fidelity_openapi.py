"""/openapi.json says what the server does, walked operation by operation and field by field.

For every operation of the schema: each documented form or query field is probed at its documented
limits and values (accepted) and just outside them (refused with 422 naming the field), and every
status the probes draw (422, 415, 413, 503 while loading, 404 for an unknown id, ...) must be
declared by that operation with the body it really has: the error envelope, or /health's own body.
Valid probes carry undecodable images, so options are judged (they are parsed first) without any
inference running. Generic: new routes are walked as they are added.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
from http_helpers import multipart, serve, tiny_settings

from app.inference.models import Models, ProgressCallback
from app.inference.worker import InferenceWorker

UNDECODABLE = b"not an image"
UNKNOWN_ID = "does-not-exist"
# The values the README documents for cloth_type: canonical names and dataset aliases.
CLOTH_TYPES = [
    "upper", "lower", "overall", "inner", "outer",
    "upper_body", "tops", "lower_body", "bottoms", "dresses", "one-pieces",
]  # fmt: skip

ENVELOPE = {"$ref": "#/components/schemas/ErrorResponse"}
Observed = dict[tuple[str, str], dict[int, httpx.Response]]


def operations(schema: dict) -> Iterator[tuple[str, str, dict]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield path, method.upper(), operation


def resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def form_schema(schema: dict, operation: dict) -> dict | None:
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" not in content:
        return None
    return resolve(schema, content["multipart/form-data"]["schema"])


def is_file(field: dict) -> bool:
    return field.get("format") == "binary"


def valid_values(field: dict) -> list[str]:
    """What the schema says is accepted, as form text."""
    if "enum" in field:
        return [str(value) for value in field["enum"]]
    kind = field.get("type")
    if kind == "boolean":
        return ["true", "false"]
    if kind in ("integer", "number") and {"minimum", "maximum"} <= field.keys():
        cast = int if kind == "integer" else float
        return [str(cast(field["minimum"])), str(cast(field["maximum"]))]
    return []


def invalid_values(field: dict) -> list[str]:
    """What the schema says is refused: just outside each limit, the wrong type, an unknown name."""
    kind = field.get("type")
    values = []
    if "enum" in field:
        values.append("hat")
    if kind == "boolean":
        values.append("maybe")
    if kind == "integer":
        values += ["1.5", "abc"]
    if kind == "number":
        values += ["abc", "nan", "inf"]
    step = 1 if kind == "integer" else 0.5
    if "minimum" in field:
        values.append(str(type(step)(field["minimum"]) - step))
    if "maximum" in field:
        values.append(str(type(step)(field["maximum"]) + step))
    return values


def url_of(base_url: str, path: str, operation: dict) -> str:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path":
            value = "0" if parameter["schema"].get("type") == "integer" else UNKNOWN_ID
            path = path.replace("{" + parameter["name"] + "}", value)
    return base_url + path


def send(
    base_url: str,
    schema: dict,
    path: str,
    method: str,
    operation: dict,
    fields: dict[str, str] | None = None,
    file_bytes: bytes = UNDECODABLE,
) -> httpx.Response:
    """One request: the operation's required files (undecodable unless told), plus `fields`."""
    url = url_of(base_url, path, operation)
    form = form_schema(schema, operation)
    if form is None:
        return httpx.request(method, url, params=fields, timeout=30)
    parts = [
        (name, file_bytes, f"{name}.jpg", "image/jpeg")
        for name in form.get("required", [])
        if is_file(form["properties"][name])
    ]
    parts += [(name, value.encode(), None, None) for name, value in (fields or {}).items()]
    body, content_type = multipart(parts)
    return httpx.request(
        method, url, content=body, headers={"Content-Type": content_type}, timeout=30
    )


def probed_fields(schema: dict, operation: dict) -> dict[str, dict]:
    """Documented non-file fields: the form's, and the query parameters."""
    form = form_schema(schema, operation)
    fields = {
        name: resolve(schema, field)
        for name, field in (form or {}).get("properties", {}).items()
        if not is_file(field)
    }
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "query":
            fields[parameter["name"]] = resolve(schema, parameter["schema"])
    return fields


def walk(base_url: str, observed: Observed) -> dict:
    """Probe every operation of the server's schema; record one response per status seen."""
    schema = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    for path, method, operation in operations(schema):
        seen = observed[(path, method)]

        def record(response: httpx.Response, seen: dict = seen) -> httpx.Response:
            seen.setdefault(response.status_code, response)
            return response

        baseline = record(send(base_url, schema, path, method, operation)).status_code
        for name, field in probed_fields(schema, operation).items():
            for value in valid_values(field):
                response = record(send(base_url, schema, path, method, operation, {name: value}))
                assert response.status_code == baseline, (
                    f"{method} {path}: {name}={value!r} is documented as valid: {response.text}"
                )
            for value in invalid_values(field):
                response = record(send(base_url, schema, path, method, operation, {name: value}))
                assert response.status_code == 422, (
                    f"{method} {path}: {name}={value!r} is documented as invalid, yet "
                    f"{response.status_code}"
                )
                assert response.json()["error"] == "invalid_field"
                assert name in response.json()["message"]
        if form_schema(schema, operation) is not None:
            record(send(base_url, schema, path, method, operation, file_bytes=b"x" * 1_200_000))
            record(httpx.request(method, url_of(base_url, path, operation), json={}, timeout=30))
    return schema


def assert_declared(schema: dict, observed: Observed) -> None:
    """Each error status seen is declared, with a JSON schema the body it came with matches."""
    for (path, method), responses in observed.items():
        declared = schema["paths"][path][method.lower()]["responses"]
        assert "500" in declared, f"{method} {path}: 500 (unexpected errors) is not declared"
        for status, response in responses.items():
            if status < 400:
                continue
            assert str(status) in declared, f"{method} {path} answers {status}, not declared"
            body_schema = declared[str(status)]["content"]["application/json"]["schema"]
            component = resolve(schema, body_schema)
            missing = set(component.get("required", [])) - response.json().keys()
            assert not missing, f"{method} {path} {status}: body lacks {missing}: {response.text}"
            if body_schema.get("$ref", "").endswith("/ErrorResponse"):
                assert response.json()["success"] is False
        # Declared errors carry the envelope, unless the route answers its own body in an error
        # state (/health's 503 says "loading" or "error" in the HealthResponse).
        own_body = declared.get("200", {}).get("content", {}).get("application/json", {})
        for status, declaration in declared.items():
            body_schema = declaration.get("content", {}).get("application/json", {})
            if int(status) >= 400 and body_schema != own_body:
                assert body_schema.get("schema") == ENVELOPE, (
                    f"{method} {path} declares {status} without the error envelope"
                )


def test_the_schema_documents_cloth_type_values_and_the_server_stays_case_insensitive(
    tiny_server: str,
) -> None:
    schema = httpx.get(f"{tiny_server}/openapi.json", timeout=30).json()
    form = form_schema(schema, schema["paths"]["/api/try-on"]["post"])
    assert form is not None
    assert form["properties"]["cloth_type"]["enum"] == CLOTH_TYPES
    operation = schema["paths"]["/api/try-on"]["post"]
    baseline = send(tiny_server, schema, "/api/try-on", "POST", operation).status_code
    for value in ("UPPER", "Dresses", " tops "):
        fields = {"cloth_type": value}
        response = send(tiny_server, schema, "/api/try-on", "POST", operation, fields)
        assert response.status_code == baseline, response.text


def test_every_field_and_every_error_status_is_what_the_server_does(
    tiny_server: str, tiny_weights: Path
) -> None:
    observed: Observed = defaultdict(dict)
    schema = walk(tiny_server, observed)

    # The same operations while the models load: the 503s.
    gate = threading.Event()

    def load_never(progress: ProgressCallback) -> Models:
        gate.wait(60)
        raise RuntimeError("the test is over")

    settings = tiny_settings(tiny_weights)
    with serve(settings, InferenceWorker.from_settings(settings, load_never)) as loading_url:
        for path, method, operation in operations(schema):
            response = send(loading_url, schema, path, method, operation)
            observed[(path, method)].setdefault(response.status_code, response)
        gate.set()
    assert_declared(schema, observed)
    assert 503 in observed[("/api/try-on", "POST")] and 503 in observed[("/health", "GET")]
    assert {413, 415, 422} <= observed[("/api/try-on", "POST")].keys()
