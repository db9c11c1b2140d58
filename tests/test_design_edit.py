"""Pure design edits (engine.design.edit): each returns a new design, never changes its input, and refuses what
cannot be done with a reason; random edit sequences keep the design's bookkeeping consistent."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.design import edit
from engine.design.edit import EditError
from engine.design.model import Design
from engine.design.templates import TEMPLATE_KINDS, make_template


def _snapshot(d: Design) -> str:
    return d.to_json()


def test_edits_return_new_designs_and_leave_the_input_alone():
    d = make_template("mpo", 12, 6, 2, in_factors=[3, 4], out_factors=[3, 2])
    before = _snapshot(d)
    d2, tid = edit.add_tensor(d)
    d3, bond = edit.connect(d2, "G0", tid, 5)
    d4, leg = edit.add_open_leg(d3, tid, "out", 2)
    d5 = edit.set_dim(d4, "r0", "7")
    d6 = edit.set_tensor(d5, "G0", activation="relu")
    d7 = edit.delete(d6, tensors=[tid])
    assert _snapshot(d) == before
    assert tid not in {t.id for t in d.tensors} and tid in {t.id for t in d2.tensors}
    assert d3.indices[bond].dim == 5 and set(d3.users()[bond]) == {"G0", tid}
    assert d4.indices[leg].role == "out" and d4.indices[leg].axis == 2
    assert d5.indices["r0"].dim == 7 and d6.tensor("G0").activation == "relu"
    # the delete cascade removed the tensor's own open leg and its bond, and the design is valid again
    assert leg not in d7.indices and bond not in d7.indices and d7.problems() == []


def test_refused_edits_name_the_reason():
    d = make_template("ttn", 16, 16, 2)
    with pytest.raises(EditError, match="two different tensors"):
        edit.connect(d, "L0", "L0", 2)
    with pytest.raises(EditError, match="whole number"):
        edit.set_dim(d, "s0", "abc")
    with pytest.raises(EditError, match="whole number"):
        edit.set_dim(d, "s0", 2.5)
    with pytest.raises(EditError, match="no index"):
        edit.set_dim(d, "nope", 3)
    with pytest.raises(EditError, match="already joins"):
        edit.attach(d, "L1", "s0")
    with pytest.raises(EditError, match="role must be in or out"):
        edit.add_open_leg(d, "top", "bond", 2)
    with pytest.raises(EditError, match="give 2 factors"):
        edit.set_factors(d, "in", [2, 2, 4])
    with pytest.raises(EditError, match="cannot be empty"):
        edit.rename(d, "   ")


def test_delete_renumbers_open_leg_axes_and_keeps_order_and_root_consistent():
    d = make_template("ttn", 64, 64, 2, activation="relu")
    out = edit.delete(d, tensors=["L1"])
    assert [out.indices[k].axis for k in out.in_legs] == list(range(len(out.in_legs)))
    assert [out.indices[k].axis for k in out.out_legs] == list(range(len(out.out_legs)))
    assert "L1" not in out.order and out.root == d.root
    out2 = edit.delete(d, tensors=[d.root])
    assert out2.root is None


def test_hyperedge_stays_while_used_and_goes_with_its_last_user():
    d = make_template("cp", 16, 16, 3)
    users = d.users()["R"]
    out = edit.delete(d, tensors=users[:-1])
    assert "R" in out.indices
    assert "R" not in edit.delete(d, tensors=users).indices


def test_set_factors_and_fit_features_set_the_layer_size():
    d = make_template("mpo", 12, 6, 2, in_factors=[3, 4], out_factors=[3, 2])
    d2 = edit.set_factors(d, "in", [7, 7])
    assert d2.in_features == 49 and d2.problems() == []
    d3, _ = edit.add_open_leg(d2, "G1", "in", 3)
    assert d3.problems()  # 7 x 7 x 3 != 49 until the size is fitted
    assert edit.fit_features(d3).in_features == 147 and edit.fit_features(d3).problems() == []


def test_merge_designs_keeps_both_valid_parts_with_renamed_clashes():
    a = make_template("mpo", 12, 6, 2, in_factors=[3, 4], out_factors=[3, 2])
    b = make_template("mpo", 12, 6, 3, in_factors=[3, 4], out_factors=[3, 2])
    m = edit.merge_designs(a, b)
    assert len(m.tensors) == 4 and len({t.id for t in m.tensors}) == 4
    assert [m.indices[k].axis for k in m.in_legs] == [0, 1, 2, 3]
    assert math.prod(m.indices[k].dim for k in m.in_legs) == 144


def test_with_bond_and_typical_bond():
    d = make_template("mera", 256, 256, 3)
    assert edit.typical_bond(d) == 3
    d5 = edit.with_bond(d, 5)
    assert edit.typical_bond(d5) == 5 and d5.in_legs == d.in_legs
    assert all(d5.indices[k].dim == d.indices[k].dim for k in d.open_legs)


OPS = st.lists(st.tuples(st.sampled_from(["add", "connect", "leg", "delete", "dim", "act", "fit"]),
                         st.integers(0, 50), st.integers(0, 50), st.integers(1, 6)), max_size=25)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(TEMPLATE_KINDS), ops=OPS)
def test_random_edit_sequences_keep_the_bookkeeping_consistent(kind, ops):
    d = make_template(kind, 16, 16, 2)
    for op, a, b, n in ops:
        ids = [t.id for t in d.tensors]
        names = list(d.indices)
        try:
            if op == "add":
                d, _ = edit.add_tensor(d)
            elif op == "connect" and ids:
                d, _ = edit.connect(d, ids[a % len(ids)], ids[b % len(ids)], n)
            elif op == "leg" and ids:
                d, _ = edit.add_open_leg(d, ids[a % len(ids)], ("in", "out")[b % 2], n)
            elif op == "delete" and ids:
                d = edit.delete(d, tensors=[ids[a % len(ids)]])
            elif op == "dim" and names:
                d = edit.set_dim(d, names[a % len(names)], n)
            elif op == "act" and ids:
                d = edit.set_tensor(d, ids[a % len(ids)], activation=("relu", None)[b % 2])
            elif op == "fit":
                d = edit.fit_features(d)
        except EditError:
            continue
        # invariants the studio relies on: every index used is declared, axes are 0..n-1, ids unique,
        # order and root name existing tensors, and the JSON round-trips
        ids = [t.id for t in d.tensors]
        assert len(set(ids)) == len(ids)
        assert all(i in d.indices for t in d.tensors for i in t.indices)
        for legs in (d.in_legs, d.out_legs):
            assert [d.indices[k].axis for k in legs] == list(range(len(legs)))
        assert d.order is None or sorted(d.order) == sorted(ids)
        assert d.root is None or d.root in ids
        assert Design.from_json(d.to_json(), validate=False).to_json() == d.to_json()
