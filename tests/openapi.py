"""Validate our bodies against the schemas of OpenAI's published spec (../shared/spec/openai-openapi.yaml)."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_CANDIDATES = [
    Path(__file__).resolve().parents[2] / "shared" / "spec" / "openai-openapi.yaml",
    Path(__file__).resolve().parents[1] / "shared" / "spec" / "openai-openapi.yaml",
]


def spec_path() -> Path | None:
    for path in SPEC_CANDIDATES:
        if path.exists():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    path = spec_path()
    if path is None:
        raise FileNotFoundError("openai-openapi.yaml not found beside the repository (../shared/spec)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, "rb") as fh:
        return yaml.load(fh, Loader=loader)


def _relax(schema: dict[str, Any], relax: tuple[str, ...]) -> dict[str, Any]:
    """Drop the enums of the named properties (the published spec has not widened `size` for gpt-image-2), and
    read OpenAPI 3.0's ``nullable: true`` as JSON Schema says it (a null is allowed), which jsonschema does not."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("nullable") is True and isinstance(node.get("type"), str):
                node["type"] = [node["type"], "null"]
                if isinstance(node.get("enum"), list) and None not in node["enum"]:
                    node["enum"] = [*node["enum"], None]
            elif node.get("nullable") is True and "$ref" in node:
                node["anyOf"] = [{"$ref": node.pop("$ref")}, {"type": "null"}]
            for name, prop in node.get("properties", {}).items():
                if name in relax and isinstance(prop, dict):
                    prop.pop("enum", None)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@functools.lru_cache(maxsize=16)
def _validator(schema_name: str, relax: tuple[str, ...]) -> jsonschema.Draft202012Validator:
    components = {"components": {"schemas": _relax(_spec()["components"]["schemas"], relax)}}
    resource = Resource.from_contents(components, default_specification=DRAFT202012)
    registry = Registry().with_resource("urn:openai", resource)
    schema = {"$ref": f"urn:openai#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(instance: Any, schema_name: str, relax: tuple[str, ...] = ("size",)) -> None:
    validator = _validator(schema_name, tuple(relax))
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        raise AssertionError(f"{schema_name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
