"""The JSON Schema of design files, generated from the registries (roles, tensor kinds, activations, template kinds
and their options), so the schema's enums can never drift from what validation and the templates accept.

``python -m engine.design.schema`` prints it; ``engine/assets/design.schema.json`` is its committed copy (a test
checks the two are equal; regenerate with ``python -m engine.design.schema > engine/assets/design.schema.json``).
"""
from __future__ import annotations

import json
from typing import Any

from engine.design.model import (ACTIVATIONS, FORMAT, KINDS, MAX_DIM, MAX_FEATURES, MAX_NAME_LENGTH,
                                 MAX_TENSOR_INDICES, MAX_TENSORS, NAME_RULE, RESERVED_INDEX_NAMES, ROLES, VERSION)

DESCRIPTION = ("A tensor-network layer: W (in_features x out_features) as a network of small tensors. Rules that "
               "JSON Schema cannot express (leg dims multiply to the features, every bond joins exactly two tensors "
               "unless a hyperedge, the network is connected, no tensor has more than 2^63 - 1 entries) are checked "
               "by `tnstudio validate`.")
NAME = {"type": "string", "pattern": f"^{NAME_RULE}$",
        "description": "a tensor id or index name: a letter or _, then letters, digits, _, . or -, at most 64 "
                       "characters (ids and index names become code in exports)"}


def meta_schema() -> dict[str, Any]:
    """``meta``: free-form, but the keys templates write are documented (and checked) here, the template options
    (e.g. ``lateral``) straight from the template registry."""
    from engine.design.templates import TEMPLATE_KINDS, TEMPLATE_OPTIONS, option_kinds

    levels = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True}
    props: dict[str, Any] = {
        "template": {"enum": list(TEMPLATE_KINDS), "description": "the template kind the design was generated from"},
        "bond": {"anyOf": [{"type": "integer", "minimum": 1},
                           {"type": "array", "items": {"type": "integer", "minimum": 1}}],
                 "description": "the template's bond dimension (or one per bond)"},
        "activation": {"enum": [None, *ACTIVATIONS], "description": "the template's activation"},
    }
    for o in TEMPLATE_OPTIONS:
        choice = {"enum": list(o.choices)}
        props[o.name] = {**({"anyOf": [choice, levels]} if o.levels else choice),
                         "description": f"template option of {', '.join(option_kinds(o))}: {o.help}"}
        if o.levels:
            props[f"{o.name}_levels"] = {**levels, "description": f"the levels that got the {o.name} option"}
    return {"type": "object", "description": "free-form data; the keys below are written by the templates",
            "properties": props}


def design_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a design file."""
    open_roles = [r for r in ROLES if r != "bond"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "tnstudio-design.schema.json",
        "title": "TN Studio design",
        "description": DESCRIPTION,
        "type": "object",
        "required": ["format", "version", "target", "indices", "tensors"],
        "properties": {
            "format": {"const": FORMAT},
            "version": {"const": VERSION},
            "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
            "target": {
                "type": "object",
                "required": ["kind", "in_features", "out_features"],
                "properties": {
                    "kind": {"const": "linear"},
                    "in_features": {"type": "integer", "minimum": 1, "maximum": MAX_FEATURES},
                    "out_features": {"type": "integer", "minimum": 1, "maximum": MAX_FEATURES},
                },
                "additionalProperties": False,
            },
            "indices": {
                "type": "object",
                "minProperties": 2,
                "propertyNames": {**NAME, "not": {"enum": list(RESERVED_INDEX_NAMES)}},
                "additionalProperties": {
                    "type": "object",
                    "required": ["dim", "role"],
                    "properties": {
                        "dim": {"type": "integer", "minimum": 1, "maximum": MAX_DIM},
                        "role": {"enum": list(ROLES)},
                        "axis": {"type": "integer", "minimum": 0},
                        "hyperedge": {"type": "boolean"},
                    },
                    "if": {"properties": {"role": {"enum": open_roles}}},
                    "then": {"required": ["axis"]},
                    "additionalProperties": False,
                },
            },
            "tensors": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TENSORS,
                "items": {
                    "type": "object",
                    "required": ["id", "indices"],
                    "properties": {
                        "id": NAME,
                        "indices": {"type": "array", "items": NAME, "minItems": 1,
                                    "maxItems": MAX_TENSOR_INDICES, "uniqueItems": True},
                        "kind": {"enum": list(KINDS)},
                        "activation": {"enum": [None, *ACTIVATIONS]},
                        "position": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                    },
                    "additionalProperties": False,
                },
            },
            "order": {"type": "array", "items": NAME, "uniqueItems": True},
            "root": NAME,
            "meta": meta_schema(),
        },
        "additionalProperties": False,
    }


def schema_json() -> str:
    """The schema as the committed file holds it (2-space indent, trailing newline)."""
    return json.dumps(design_schema(), indent=2) + "\n"


if __name__ == "__main__":
    print(schema_json(), end="")
