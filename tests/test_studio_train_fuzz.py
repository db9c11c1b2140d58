"""The Train tab's form as an input surface: random text typed into its number fields and hidden sizes, random
choices of data set, model and layer, against designs of several shapes. The fields keep a valid value (a refused
entry says why under the field), the plan says what the engine says about the form's config (the model it builds,
or the reason it cannot), and Launch is enabled exactly when the plan is good; nothing raises."""
from __future__ import annotations

import html
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.state import StudioState
from studio.train_view import TrainView, model_plan

NUMBERS = st.one_of(st.sampled_from(["", "0", "1", "3", "64", "-2", "1e3", "3.5", "1e-3", "nan", "inf", "-inf",
                                     "0x10", "1_000", " 7 ", "٣", "99999999999999999999", "1e309", "abc"]),
                    st.text(max_size=8))
HIDDEN = st.one_of(st.sampled_from(["", "128", "128,64", "256, 256", "0", "-1", "a,b", "64,,32", "1e3",
                                    "99999999999", "8," * 40]),
                   st.text(alphabet="0123456789, -x", max_size=12))


def test_random_form_input_keeps_fields_valid_and_the_plan_true(tmp_path):
    outcomes: set[bool] = set()

    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        state = StudioState(home=str(tmp_path), refine_s=0, autosave=False)
        state.generate("mpo", 64, 32, 4)
        view = TrainView(state, runs_root=tmp_path / "runs")  # a fresh form per example: a failure replays exactly
        try:
            for _ in range(4):
                outcomes.add(step(view, state, data))
        finally:
            state.close()

    run()
    assert outcomes == {True, False}  # both verdicts were reached


def step(view: TrainView, state: StudioState, data) -> bool:
    """Change one thing on the form, check it; whether the plan is good."""
    what = data.draw(st.sampled_from(["epochs", "batch", "lr", "hidden", "model", "dataset", "layer", "compile",
                                      "design"]), label="field")
    if what in ("epochs", "batch", "lr"):
        field = {"epochs": view.epochs, "batch": view.batch_size, "lr": view.lr}[what]
        field.input.value = data.draw(NUMBERS, label="text")
    elif what == "hidden":
        view.hidden.value = data.draw(HIDDEN, label="hidden")
    elif what == "model":
        view.model.value = data.draw(st.sampled_from(list(view.model.options.values())), label="model")
    elif what == "dataset":
        view.dataset.value = data.draw(st.sampled_from(list(view.dataset.options.values())), label="dataset")
    elif what == "layer":
        view.layer.value = data.draw(st.sampled_from(list(view.layer.options)), label="layer")
    elif what == "compile":
        view.compiled.value = data.draw(st.booleans(), label="compile")
    else:
        size = data.draw(st.sampled_from([(64, 32), (256, 256), (64, 10), (40, 64), (784, 32)]), label="size")
        state.generate("ttn", *size, 2)
    view.update_plan()
    # every field holds a usable value, whatever was typed
    assert isinstance(view.epochs.value, int) and view.epochs.value >= 1
    assert isinstance(view.batch_size.value, int) and view.batch_size.value >= 1
    assert math.isfinite(view.lr.value) and view.lr.value > 0
    # the plan is the engine's verdict on the form's config
    try:
        expected = model_plan(view.config(), state.valid_design)
    except ValueError:
        expected = None
    plan = view.plan.object
    if expected is None:
        assert "tn-error" in plan and view.launch_button.disabled, plan
    else:
        assert "tn-plan" in plan and not view.launch_button.disabled, plan
        assert html.escape(expected) in plan
    return expected is not None
