"""The OpenAPI document says what a request can really carry: a form field or a header has no
null (absent is its default), an upload form takes its own fields and the image (`file` or its
alias `image`) and nothing else, and limits the server's settings set are stated as set."""

from __future__ import annotations

import copy
from typing import Any

from serve_app.deps import FILE_FIELDS
from serve_app.forms import FluxUpscaleForm
from upscaler.settings import Settings

NULL = {"type": "null"}


def without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``anyOf: [X, null]`` as X (with the outer title, description, default...)."""
    branches = schema.get("anyOf")
    if not branches or NULL not in branches:
        return schema
    rest = [b for b in branches if b != NULL]
    outer = {k: v for k, v in schema.items() if k != "anyOf"}
    if outer.get("default", 0) is None:
        del outer["default"]
    return {**rest[0], **outer} if len(rest) == 1 else {**outer, "anyOf": rest}


def _component(spec: dict[str, Any], node: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    name = node["$ref"].rsplit("/", 1)[1]
    return name, spec["components"]["schemas"][name]


def _settings_bounds(form: str, properties: dict[str, Any], settings: Settings) -> None:
    if form == FluxUpscaleForm.__name__:  # the server's smallest FLUX tile
        properties["tile_size"] = {**properties["tile_size"],
                                   "minimum": settings.flux_min_tile_size}
    if settings.webhook_https_only and "webhook_url" in properties:
        url = properties["webhook_url"]
        properties["webhook_url"] = {**url, "pattern": url["pattern"].replace("[Ss]?", "[Ss]")}


def _upload_form(spec: dict[str, Any], body: dict[str, Any],
                 settings: Settings) -> dict[str, Any]:
    """FastAPI's ``allOf: [form model]`` plus the file fields, as one closed object: the
    routes refuse a field they do not take (``unknown_field``) and a request with no image."""
    flat: dict[str, Any] = {k: v for k, v in body.items() if k not in ("allOf", "properties")}
    properties: dict[str, Any] = {}
    for part in body.get("allOf", []):
        name, form = _component(spec, part) if "$ref" in part else ("", part)
        properties.update(form.get("properties", {}))
        _settings_bounds(name, properties, settings)
        flat.update({k: copy.deepcopy(v) for k, v in form.items()
                     if k not in ("properties", "title", "type")})
    properties.update(body.get("properties", {}))
    flat["properties"] = {name: without_null(p) for name, p in properties.items()}
    flat["additionalProperties"] = False
    flat["anyOf"] = [{"required": [name]} for name in FILE_FIELDS]
    return flat


def as_sent(spec: dict[str, Any], settings: Settings) -> None:
    """Rewrite ``spec`` in place (see the module's docstring)."""
    schemas = spec.get("components", {}).get("schemas", {})
    forms: set[str] = set()
    for ops in spec.get("paths", {}).values():
        for op in ops.values():
            for parameter in op.get("parameters", []):
                parameter["schema"] = without_null(parameter["schema"])
            content = op.get("requestBody", {}).get("content", {})
            if (multipart := content.get("multipart/form-data")) and "$ref" in multipart[
                    "schema"]:
                name, body = _component(spec, multipart["schema"])
                forms |= {p["$ref"].rsplit("/", 1)[1] for p in body.get("allOf", [])
                          if "$ref" in p}
                schemas[name] = _upload_form(spec, body, settings)
    for name in forms:  # now inside each upload's body: one place, not two
        schemas.pop(name, None)
