"""The JSON Schema of design files, generated from the registries (roles, tensor kinds, activations, template kinds
and their options), so the schema's enums can never drift from what validation and the templates accept.

``python -m engine.design.schema`` prints it; ``engine/assets/design.schema.json`` is its committed copy (a test
checks the two are equal; regenerate with ``python -m engine.design.schema > engine/assets/design.schema.json``).
"""
from __future__ import annotations

import json
from typing import Any

from engine.design.model import (ACTIVATIONS, CONV_VERSION, FORMAT, KINDS, MAX_DIM, MAX_FEATURES, MAX_NAME_LENGTH,
                                 MAX_TENSOR_INDICES, MAX_TENSORS, NAME_RULE, OPEN_ROLES, RESERVED_INDEX_NAMES, ROLES,
                                 VERSIONS)

DESCRIPTION = ("A tensor-network layer: W (in_features x out_features) as a network of small tensors, or (version 2, "
               "a conv2d target) a convolution kernel K (out, in, kh, kw) = the network's tensor ordered (out legs, in "
               "legs, kernel legs) reshaped row-major. Rules that JSON Schema cannot express (leg dims multiply to the "
               "features, channels or kernel positions, every bond joins exactly two tensors unless a hyperedge, the "
               "network is connected, no tensor has more than 2^63 - 1 entries) are checked by `tnstudio validate`.")


def _pair(minimum: int) -> dict[str, Any]:
    """An integer, or [height, width] (what the conv target's sizes accept)."""
    one = {"type": "integer", "minimum": minimum, "maximum": MAX_DIM}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 2, "maxItems": 2}]}


def target_schema() -> dict[str, Any]:
    """``target``: a linear layer (``in_features`` x ``out_features``) or a ``conv2d`` layer (format version 2)."""
    linear = {
        "type": "object",
        "required": ["kind", "in_features", "out_features"],
        "properties": {
            "kind": {"const": "linear"},
            "in_features": {"type": "integer", "minimum": 1, "maximum": MAX_FEATURES},
            "out_features": {"type": "integer", "minimum": 1, "maximum": MAX_FEATURES},
        },
        "additionalProperties": False,
    }
    conv = {
        "type": "object",
        "description": "torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups=1); "
                       "open legs: in (channel factors), out (channel factors), kernel (their dims multiply to "
                       "kh * kw, row-major)",
        "required": ["kind", "in_channels", "out_channels", "kernel_size"],
        "properties": {
            "kind": {"const": "conv2d"},
            "in_channels": {"type": "integer", "minimum": 1, "maximum": MAX_DIM},
            "out_channels": {"type": "integer", "minimum": 1, "maximum": MAX_DIM},
            "kernel_size": _pair(1),
            "stride": _pair(1),
            "padding": _pair(0),
            "dilation": _pair(1),
            "groups": {"const": 1},
        },
        "additionalProperties": False,
    }
    return {"oneOf": [linear, conv]}
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
        "image": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_DIM}, "minItems": 2,
                  "maxItems": 2, "description": "conv2d designs: the input size [H, W] the cost report uses by "
                                                "default"},
        "tucker": {"enum": ["tucker-2"], "description": "conv2d designs: the tucker template's variant (channel "
                                                       "factors and a core over the kernel)"},
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
    open_roles = list(OPEN_ROLES)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "tnstudio-design.schema.json",
        "title": "TN Studio design",
        "description": DESCRIPTION,
        "type": "object",
        "required": ["format", "version", "target", "indices", "tensors"],
        "properties": {
            "format": {"const": FORMAT},
            "version": {"enum": list(VERSIONS)},
            "name": {"type": "string", "maxLength": MAX_NAME_LENGTH},
            "target": target_schema(),
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
        "if": {"properties": {"target": {"properties": {"kind": {"const": "conv2d"}}}}},
        "then": {"properties": {"version": {"const": CONV_VERSION}}},
        "additionalProperties": False,
    }


def schema_json() -> str:
    """The schema as the committed file holds it (2-space indent, trailing newline)."""
    return json.dumps(design_schema(), indent=2) + "\n"


if __name__ == "__main__":
    print(schema_json(), end="")
