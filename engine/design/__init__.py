"""Layer 1, designs: the JSON format and its validation, templates, factorisations, pure edit operations and the
design library. Imports nothing from the other layers (and never torch)."""
from engine.design.model import ConvTarget, Design, DesignError, Index, Tensor, load_design, save_design
from engine.design.templates import TEMPLATE_KINDS, make_template
from engine.design.conv import make_conv_template  # noqa: E402  (templates first: conv builds on them)

__all__ = ["ConvTarget", "Design", "DesignError", "Index", "Tensor", "TEMPLATE_KINDS", "load_design", "make_template",
           "make_conv_template", "save_design"]
