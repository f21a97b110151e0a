"""The provisioning API's OpenAPI 3.1 document, made from the same
declarations that validate its input (:mod:`aaa_vpn.service.provisioning`);
served at ``/openapi.json`` and kept in ``docs/api.json``
(``aaa-vpn api openapi`` writes it)."""

from __future__ import annotations

from typing import Any

from aaa_vpn import __version__
from aaa_vpn.service.provisioning import KINDS, FieldRule, KindRules

_SECRET = {
    "type": "object",
    "description": 'A secret: {"hex": "..."} or {"text": "..."}. Accepted on input, never returned.',
    "properties": {"hex": {"type": "string"}, "text": {"type": "string"}},
    "additionalProperties": False,
}
_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string", "description": "One line, the same message the CLI prints."}},
    "required": ["error"],
}


def _field_schema(rule: FieldRule) -> dict[str, Any]:
    schema: dict[str, Any] = {"description": rule.description}
    if rule.json_type == "array":
        schema.update(type="array", items={"type": "string"})
    else:
        schema["type"] = [rule.json_type, "null"] if rule.nullable else rule.json_type
    if rule.choices:
        schema["enum"] = list(rule.choices)
    if rule.example is not None:
        schema["examples"] = [rule.example]
    return schema


def _schemas(rules: KindRules) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the input schema, the output schema) of a kind."""
    key_type = "integer" if rules.key_assigned else "string"
    properties: dict[str, Any] = {} if rules.key_assigned else {rules.key: {"type": key_type}}
    properties.update({rule.name: _field_schema(rule) for rule in rules.fields})
    output = {"type": "object", "properties": {rules.key: {"type": key_type}, **properties}}
    properties.update({secret.name: {"$ref": "#/components/schemas/Secret"} for secret in rules.secrets})
    required = [] if rules.key_assigned else [rules.key]
    required += [rule.name for rule in rules.fields if rule.required] + [secret.name for secret in rules.secrets]
    given = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return given, output


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    reasons = {
        400: "Invalid input (the CLI's message).",
        401: "No valid token.",
        403: "The token's roles do not allow this.",
        404: "No such record.",
        409: "Exists already, or still referenced.",
        502: "No agent answered.",
    }
    for code in (401, 403, *errors):
        out[str(code)] = {
            "description": reasons[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return out


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def document() -> dict[str, Any]:
    """The whole OpenAPI document."""
    schemas: dict[str, Any] = {"Secret": _SECRET, "Error": _ERROR}
    paths: dict[str, Any] = {}
    for collection, (rules, _stem) in KINDS.items():
        title = collection.capitalize()
        given, output = _schemas(rules)
        schemas[f"{title}Input"] = given
        schemas[title] = output
        one = {"$ref": f"#/components/schemas/{title}"}
        key_schema = {"type": "integer"} if rules.key_assigned else {"type": "string"}
        key = {"name": "key", "in": "path", "required": True, "schema": key_schema, "description": rules.key}
        listing: dict[str, Any] = {
            "summary": f"List {collection} (role read-only).",
            "responses": _responses(
                _json({"type": "object", "properties": {collection: {"type": "array", "items": one}}})
            ),
        }
        if collection == "vpn":
            listing["parameters"] = [{"name": "user", "in": "query", "schema": {"type": "string"}}]
        paths[f"/api/v1/{collection}"] = {
            "get": listing,
            "post": {
                "summary": f"Add a {rules.kind} (role provisioning).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{title}Input"}}},
                },
                "responses": _responses(_json(one), 400, 409),
            },
        }
        change = dict(given)
        change["required"] = []
        schemas[f"{title}Change"] = change
        paths[f"/api/v1/{collection}/{{key}}"] = {
            "parameters": [key],
            "get": {"summary": f"Show one {rules.kind}.", "responses": _responses(_json(one), 404)},
            "patch": {
                "summary": f"Change a {rules.kind}: members not given keep their value; null empties a nullable one"
                " (role provisioning).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{title}Change"}}},
                },
                "responses": _responses(_json(one), 400, 404, 409),
            },
            "delete": {
                "summary": f"Delete a {rules.kind} (role provisioning).",
                "responses": _responses(_json({}), 404, 409),
            },
        }
    session_id = {"name": "session_id", "in": "path", "required": True, "schema": {"type": "string"}}
    outcome = _json({"type": "object", "description": "What each agent (FA, HA) answered."})
    paths["/api/v1/sessions"] = {
        "get": {
            "summary": "List sessions (never their keys).",
            "parameters": [{"name": "user", "in": "query", "schema": {"type": "string"}}],
            "responses": _responses(_json({"type": "object"})),
        }
    }
    paths["/api/v1/sessions/{session_id}"] = {
        "parameters": [session_id],
        "get": {"summary": "Show one session and the agents it involves.", "responses": _responses(_json({}), 404)},
        "delete": {"summary": "Delete a session (role sessions).", "responses": _responses(_json({}), 404)},
    }
    for action, summary in (
        ("push", "Push the user's current VPN to the session at once: CoA-Requests (RFC 5176) to its FA and HA."),
        ("disconnect", "End the session: Disconnect-Requests to its FA and HA, then delete it."),
    ):
        paths[f"/api/v1/sessions/{{session_id}}/{action}"] = {
            "parameters": [session_id],
            "post": {"summary": f"{summary} (role sessions)", "responses": _responses(outcome, 404, 502)},
        }
    time_query = [
        {"name": name, "in": "query", "schema": {"type": "string"}, "description": description}
        for name, description in (
            ("user", "Only this user's records."),
            ("session", "Only this aaa_vpn session's records."),
            ("since", "Updated at or after (ISO 8601 or seconds since the epoch)."),
            ("until", "Updated before."),
            ("limit", "At most this many."),
        )
    ]
    paths["/api/v1/accounting"] = {
        "get": {
            "summary": "Accounting records (RFC 2866).",
            "parameters": time_query,
            "responses": _responses(_json({})),
        }
    }
    paths["/api/v1/accounting/{unique_id}"] = {
        "parameters": [{"name": "unique_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"summary": "One accounting record.", "responses": _responses(_json({}), 404)},
    }
    nai = {"name": "nai", "in": "path", "required": True, "schema": {"type": "string"}}
    paths["/api/v1/users/{nai}/web-credential"] = {
        "parameters": [nai],
        "put": {
            "summary": "Set the user's web password (stored as a scrypt verifier only; role provisioning).",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"password": {"type": "string", "minLength": 10}},
                            "required": ["password"],
                        }
                    }
                },
            },
            "responses": _responses(_json({}), 400, 404),
        },
        "delete": {"summary": "Remove the user's web password.", "responses": _responses(_json({}), 404)},
    }
    allowed = {
        "type": "object",
        "properties": {kind: {"type": "array", "items": {"type": "string"}} for kind in ("gateway", "service", "qos")},
        "additionalProperties": False,
    }
    paths["/api/v1/users/{nai}/self-service"] = {
        "parameters": [nai],
        "get": {"summary": "What the user may choose on their own page.", "responses": _responses(_json(allowed), 404)},
        "put": {
            "summary": "Set what the user may choose (names of existing records; role provisioning).",
            "requestBody": {"required": True, "content": {"application/json": {"schema": allowed}}},
            "responses": _responses(_json(allowed), 400, 404),
        },
    }
    paths["/api/v1/audit"] = {
        "get": {
            "summary": "The audit log: who changed what, when (never a secret).",
            "parameters": [
                {"name": "since", "in": "query", "schema": {"type": "number"}},
                {"name": "limit", "in": "query", "schema": {"type": "integer"}},
            ],
            "responses": _responses(_json({})),
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aaa_vpn provisioning API",
            "version": __version__,
            "description": "Everything `aaa-vpn` provisions, over HTTP (docs/api.md).",
            "license": {"name": "GPL-2.0-or-later", "identifier": "GPL-2.0-or-later"},
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"token": []}],
        "paths": paths,
    }


__all__ = ["document"]
