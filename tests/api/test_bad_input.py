"""Input that cannot be echoed as it came (lone surrogates, NaN and Infinity, huge integers, long
strings) in every field of every JSON route, through the real app: the answer is never a 5xx, is
valid strict JSON in valid UTF-8, and echoes only a small excerpt."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from api import validation
from jobs.kinds.events import outbox as events

#: The values each field gets in turn.
BAD_VALUES: dict[str, Any] = {
    "lone surrogate": "a\ud800b",
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),
    "huge integer": 10**400,
    "long string": "x" * 200_000,
}
#: No error answer is larger than this (a long input is echoed as an excerpt only).
MAX_ANSWER_BYTES = 16_000


def _raw(body: Any) -> bytes:
    # ensure_ascii writes a lone surrogate as the escape \ud800 (valid JSON text, as a client sends
    # it); allow_nan writes NaN and Infinity as Python's json (and FastAPI's parser) reads them.
    return json.dumps(body, ensure_ascii=True, allow_nan=True).encode()


def _refuse_constant(name: str) -> Any:
    raise AssertionError(f"the answer holds {name}, which is not JSON")


def assert_renders(response: Any, what: str) -> Any:
    """The answer is no 5xx, strict JSON in UTF-8, and small (unless it is a success)."""
    assert response.status_code < 500, (what, response.status_code, response.content[:500])
    body = json.loads(response.content.decode("utf-8"), parse_constant=_refuse_constant)
    if response.status_code >= 400:
        assert len(response.content) <= MAX_ANSWER_BYTES, (what, len(response.content))
    return body


# --- bodies from the OpenAPI document --------------------------------------------------------------


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _variants(schema: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(schema, defs)
    choices = schema.get("oneOf") or schema.get("anyOf")
    if not choices:
        return [schema]
    found = [variant for choice in choices for variant in _variants(choice, defs)]
    return [variant for variant in found if variant.get("type") != "null"]


def _sample(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A plausible value of ``schema`` (required fields only)."""
    schema = _variants(schema, defs)[0]
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", []))
        return {name: _sample(sub, defs) for name, sub in schema.get("properties", {}).items() if name in required}
    if kind == "array":
        return [_sample(schema.get("items", {}), defs)]
    if kind == "string":
        return str(uuid.uuid4()) if schema.get("format") == "uuid" else "x" * max(schema.get("minLength", 1), 1)
    if kind == "integer":
        return max(schema.get("minimum", 1), schema.get("exclusiveMinimum", 0) + 1)
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return None


def mutations(schema: dict[str, Any], defs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Values of ``schema`` in which one place (the value itself, a field at any depth, a free-form
    object's new key, or a key) holds a bad value: (where, value)."""
    yield from BAD_VALUES.items()
    for variant in _variants(schema, defs):
        if variant.get("type") == "object" or "properties" in variant:
            base = _sample(variant, defs)
            for name, sub in variant.get("properties", {}).items():
                for where, value in mutations(sub, defs):
                    yield f"{name}.{where}", {**base, name: value}
            if variant.get("additionalProperties", True) is not False:
                for where, value in BAD_VALUES.items():
                    yield f"<new key>.{where}", {**base, "key": value}
            yield "<key with a lone surrogate>", {**base, "k\ud800": 1}
        elif variant.get("type") == "array":
            for where, value in mutations(variant.get("items", {}), defs):
                yield f"[0].{where}", [value]


def _json_operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                concrete = path.replace("{", "").replace("}", "")
                for name in (p["name"] for p in operation.get("parameters", []) if p["in"] == "path"):
                    concrete = concrete.replace(name, str(uuid.uuid4()))
                yield method, concrete, content["application/json"]["schema"]


def test_bad_values_in_every_field_of_every_json_route_render(client):
    document = client.get("/openapi.json").json()
    defs = document["components"]["schemas"]
    operations = list(_json_operations(document))
    assert {path.split("/")[1] for _, path, _ in operations} >= {"jobs", "events", "products", "batches"}
    for method, path, schema in operations:
        for where, body in mutations(schema, defs):
            response = client.request(method, path, content=_raw(body), headers={"content-type": "application/json"})
            assert_renders(response, f"{method.upper()} {path} {where}")


@pytest.mark.parametrize("type_name", ["user_registered", "order_created"])
def test_bad_values_in_every_field_of_each_public_event_payload_render(client, type_name):
    schema = events.payload_model(type_name).model_json_schema()
    for where, payload in mutations(schema, schema.get("$defs", {})):
        response = client.post(
            "/events",
            content=_raw({"type": type_name, "payload": payload}),
            headers={"content-type": "application/json"},
        )
        assert_renders(response, f"{type_name} payload {where}")


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("post", "/jobs", rb'{"kind":"fail","args":{"message":"a\ud800b"}}'),
        ("post", "/jobs", rb'{"kind":"no\ud800op"}'),
        ("post", "/jobs", rb'{"kind":"fail","args":{"fail_times":NaN}}'),
        ("post", "/jobs", rb'{"kind":"fail","args":{"fail_times":Infinity}}'),
        ("post", "/products", b'{"sku":"s","inventory":1' + b"0" * 4000 + b"}"),
        ("post", "/products", rb'{"sku":"s\ud800","inventory":1}'),
        ("post", "/products", rb'{"sku":"s","inventory":-Infinity}'),
        ("post", f"/jobs/{uuid.uuid4()}/replay", rb'{"reason":"why \ud800"}'),
        ("post", "/batches", rb'{"operation":"validate\udfff","record_ids":[1]}'),
        ("post", "/events", rb'{"type":"user_registered","payload":{"org_id":"\ud800"}}'),
    ],
)
def test_the_reported_inputs_are_a_422_in_valid_json(client, method, path, raw):
    response = client.request(method, path, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.content[:300]
    assert_renders(response, raw.decode())


def test_a_422_shows_a_short_excerpt_of_a_long_input_and_escapes_surrogates(client):
    def post(path: str, body: object) -> dict:
        return client.post(path, content=_raw(body), headers={"content-type": "application/json"}).json()

    error = post("/products", {"sku": "s" * 50_000, "inventory": 1})["detail"][0]
    assert error["loc"] == ["body", "sku"]
    assert len(json.dumps(error["input"])) <= validation.MAX_EXCERPT_CHARS + 10
    assert post("/products", {"sku": "s\ud800", "inventory": 1})["detail"][0]["input"] == "s\\ud800"
    assert post("/jobs", {"kind": "fail", "args": {"fail_times": float("nan")}})["detail"][0]["input"] == "NaN"
    huge = post("/products", {"sku": "s", "inventory": 10**400})["detail"][0]
    assert huge["loc"] == ["body", "inventory"] and huge["input"] == f"<an integer of {(10**400).bit_length()} bits>"


def test_a_422_lists_at_most_a_few_errors(client):
    bad_events = [{"type": "user_registered", "id": "not-a-uuid", "payload": {}} for _ in range(500)]
    response = client.post("/events", json=bad_events)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == validation.MAX_ERRORS + 1
    assert detail[-1]["type"] == "too_many_errors"
