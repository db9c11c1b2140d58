"""Layer 1, designs: the JSON format and its validation, templates, factorisations, pure edit operations and the
design library. Imports nothing from the other layers (and never torch)."""
from engine.design.model import Design, DesignError, Index, Tensor, load_design, save_design
from engine.design.templates import TEMPLATE_KINDS, make_template

__all__ = ["Design", "DesignError", "Index", "Tensor", "TEMPLATE_KINDS", "load_design", "make_template",
           "save_design"]
