"""The design format: every validation rule gives a clear message; JSON, schema, graph and layout behave."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from engine.design.model import Design, DesignError, load_design, save_design
from engine.design.templates import TEMPLATE_KINDS, make_template

SCHEMA = Path(__file__).resolve().parents[1] / "engine" / "assets" / "design.schema.json"


def mpo_dict() -> dict:
    return make_template("mpo", 12, 6, 2, in_factors=[3, 4], out_factors=[3, 2]).to_dict()


def problems_of(d: dict) -> list[str]:
    with pytest.raises(DesignError) as e:
        Design.from_dict(d)
    return e.value.problems


def test_valid_design_loads():
    d = Design.from_dict(mpo_dict())
    assert d.in_legs == ["i0", "i1"] and d.out_legs == ["o0", "o1"]
    assert d.params == 3 * 3 * 2 + 2 * 4 * 2
    assert d.problems() == []


def test_dims_must_be_positive_integers():
    d = mpo_dict()
    d["indices"]["r0"]["dim"] = 0
    assert any("index 'r0': dim must be an integer >= 1, got 0" in p for p in problems_of(d))
    d["indices"]["r0"]["dim"] = "two"
    assert any("got 'two'" in p for p in problems_of(d))


def test_in_and_out_dims_must_multiply_to_features():
    d = mpo_dict()
    d["indices"]["i1"]["dim"] = 5
    assert any("'in' leg dims 3 x 5 multiply to 15, but in_features is 12" in p for p in problems_of(d))
    d = mpo_dict()
    d["target"]["out_features"] = 7
    assert any("multiply to 6, but out_features is 7" in p for p in problems_of(d))


def test_bond_must_join_exactly_two_tensors():
    d = mpo_dict()
    d["tensors"][0]["indices"].remove("r0")  # r0 now dangles on G1 only
    assert any("bond 'r0' appears only in tensor 'G1'" in p for p in problems_of(d))
    d = make_template("mpo", 24, 8, 2, in_factors=[2, 3, 4], out_factors=[2, 2, 2]).to_dict()
    d["tensors"][2]["indices"].append("r0")  # r0 on three tensors
    assert any("bond 'r0' joins 3 tensors" in p and "hyperedge" in p for p in problems_of(d))
    d["indices"]["r0"]["hyperedge"] = True  # declared: allowed
    Design.from_dict(d)


def test_open_legs_need_a_role_and_axis():
    d = mpo_dict()
    d["indices"]["i0"]["role"] = "input"
    assert any("index 'i0': role must be one of in, out, kernel, bond" in p for p in problems_of(d))
    d = mpo_dict()
    del d["indices"]["o1"]["axis"]
    assert any("open leg 'o1' (role out) needs an integer axis" in p for p in problems_of(d))
    d = mpo_dict()
    d["indices"]["i1"]["axis"] = 3
    assert any("'in' leg axes must be 0..1" in p for p in problems_of(d))


def test_tensor_ids_must_be_unique():
    d = mpo_dict()
    d["tensors"][1]["id"] = d["tensors"][0]["id"]
    assert any("tensor id 'G0' is used twice" in p for p in problems_of(d))


def test_network_must_be_connected():
    d = make_template("mpo", 24, 8, 2, in_factors=[2, 3, 4], out_factors=[2, 2, 2]).to_dict()
    # cut the chain: G2 keeps its own legs, bond r1 becomes a separate pair of open-ended uses
    d["indices"]["cut"] = {"dim": 2, "role": "bond"}
    d["tensors"][1]["indices"] = [i for i in d["tensors"][1]["indices"] if i != "r1"] + ["cut"]
    d["tensors"][0]["indices"].append("cut")
    d["tensors"][2]["indices"] = [i for i in d["tensors"][2]["indices"] if i != "r1"]
    del d["indices"]["r1"]
    probs = problems_of(d)
    assert any("the network is not connected: 2 separate parts" in p for p in probs), probs


def test_activation_names_must_be_known():
    d = mpo_dict()
    d["tensors"][0]["activation"] = "swishy"
    assert any("tensor 'G0': unknown activation 'swishy'" in p for p in problems_of(d))


def test_kind_must_be_known_and_indices_declared():
    d = mpo_dict()
    d["tensors"][0]["kind"] = "blob"
    d["tensors"][1]["indices"].append("ghost")
    probs = problems_of(d)
    assert any("kind must be one of core, isometry" in p for p in probs)
    assert any("uses index 'ghost', which is not declared" in p for p in probs)


def test_unused_index_is_reported():
    d = mpo_dict()
    d["indices"]["spare"] = {"dim": 3, "role": "bond"}
    assert any("index 'spare' is declared but no tensor uses it" in p for p in problems_of(d))


def test_unknown_format_version_is_rejected_clearly():
    d = mpo_dict()
    d["version"] = 3
    assert problems_of(d) == ["unknown design format version 3: this TN Studio reads versions 1 and 2"]
    d["format"] = "something-else"
    assert "not a TN Studio design" in problems_of(d)[0]


def test_not_json_and_missing_file():
    with pytest.raises(DesignError, match="not valid JSON"):
        Design.from_json("{not json")
    with pytest.raises(FileNotFoundError, match="design file not found"):
        load_design("/nonexistent/design.json")


def test_all_problems_listed_at_once():
    d = mpo_dict()
    d["indices"]["r0"]["dim"] = -1
    d["tensors"][0]["activation"] = "nope"
    assert len(problems_of(d)) >= 2


def test_save_and_load(tmp_path):
    d = make_template("mera", 256, 256, 3, activation="tanh")
    p = save_design(d, tmp_path / "sub" / "m.json")
    again = load_design(p)
    assert again.to_dict() == d.to_dict()


def test_order_and_root_are_checked():
    d = make_template("ttn", 256, 256, 2, activation="relu").to_dict()
    d["order"] = d["order"][:-1]
    assert any("'order' must list every tensor id exactly once" in p for p in problems_of(d))
    d = make_template("ttn", 256, 256, 2).to_dict()
    d["root"] = "nowhere"
    assert any("root 'nowhere' is not a tensor id" in p for p in problems_of(d))


def test_order_derived_from_root_puts_leaves_first():
    d = make_template("ttn", 4096, 4096, 2, activation="relu")
    d.order = None
    order = d.evaluation_order()
    assert order[-1] == d.root
    leaves = {t.id for t in d.tensors if t.id.startswith("L")}
    assert set(order[: len(leaves)]) == leaves


def test_graph_and_layout():
    d = make_template("cp", 64, 64, 5)
    g = d.graph()
    n = len(d.tensors)
    assert g.number_of_nodes() == n
    assert g.number_of_edges() == n * (n - 1) // 2  # the rank hyperedge as a clique
    for t in d.tensors:
        t.position = None
    d.layout()
    pts = {t.position for t in d.tensors}
    assert len(pts) == n and all(p is not None for p in pts)


def test_fingerprint_ignores_names_and_positions():
    a = make_template("mpo", 256, 256, 3)
    b = copy.deepcopy(a)
    b.name = "renamed"
    b.tensors[0].position = (999.0, 1.0)
    assert a.fingerprint() == b.fingerprint()
    b.indices["r0"].dim = 4
    assert a.fingerprint() != b.fingerprint()


@pytest.mark.parametrize("kind", TEMPLATE_KINDS)
def test_templates_satisfy_published_schema(kind):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    act = "gelu" if kind in ("ttn", "attn", "mera") else None
    jsonschema.validate(make_template(kind, 1024, 512, 3, activation=act).to_dict(), schema)


def test_schema_rejects_what_loading_rejects():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA.read_text())
    for mutate in (lambda d: d.update(version=3), lambda d: d["indices"]["r0"].update(dim=0),
                   lambda d: d["tensors"][0].update(activation="nope"), lambda d: d["indices"]["i0"].pop("axis")):
        d = mpo_dict()
        mutate(d)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(d, schema)
        with pytest.raises(DesignError):
            Design.from_dict(d)


def test_committed_schema_is_generated_from_the_registries():
    """engine/assets/design.schema.json equals engine.design.schema (regenerate with python -m engine.design.schema),
    and its enums are exactly the registries' names."""
    from engine.design.model import ACTIVATIONS, KINDS, ROLES
    from engine.design.schema import schema_json

    assert SCHEMA.read_text() == schema_json()
    schema = json.loads(SCHEMA.read_text())
    tensor = schema["properties"]["tensors"]["items"]["properties"]
    assert tensor["activation"]["enum"] == [None, *ACTIVATIONS]
    assert tensor["kind"]["enum"] == list(KINDS)
    assert schema["properties"]["indices"]["additionalProperties"]["properties"]["role"]["enum"] == list(ROLES)


@pytest.mark.parametrize("pos", [[10 ** 400, 0], [0, -10 ** 400], [10 ** 10, 0], [float("nan"), 0]])
def test_position_out_of_range_is_a_problem_not_a_crash(pos, tmp_path, capsys, monkeypatch):
    """An integer position too big for a float (10**400) is named like any other bad position: in the model, in
    the design library (the studio's Files tab opens files through it) and by validate, cost and train --dry-run."""
    from engine.cli import main
    from engine.design.library import open_design
    from engine.design.model import is_position

    assert not is_position(pos)
    d = mpo_dict()
    d["tensors"][0]["position"] = pos
    assert problems_of(d) == ["tensor 'G0': position must be [x, y], two finite numbers of at most 1e+09 in size"]
    if pos[0] != pos[0]:
        return  # NaN is not JSON: the file cases below need a number
    p = tmp_path / "big.json"
    p.write_text(json.dumps(d))
    with pytest.raises(DesignError, match="position must be"):
        open_design(p)
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path / "home"))
    for args in (["validate", str(p)], ["cost", str(p)], ["train", str(p), "--dry-run"]):
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "position must be [x, y]" in err and "Traceback" not in err, (args, err)
