"""ComfyUI's core regional conditioning nodes, with its names and inputs (comfyanonymous/ComfyUI
`nodes.py`): ConditioningCombine, ConditioningSetMask, ConditioningSetArea, ConditioningSetAreaPercentage.
A sampler draws the combined conditionings with regional attention (`serve/comfy/regions.py`); what
that cannot do (set_cond_area "mask bounds", strength above 1) is an error on the node."""
from __future__ import annotations

from dataclasses import replace

from loraflow.serve.comfy.node_base import COMBO, FLOAT, INT, LINK, MAX_RESOLUTION, Node
from loraflow.serve.comfy.regions import checked_area
from loraflow.serve.comfy.values import CombinedConditioning, CondArea, cond_entries, map_conditioning


class ConditioningCombine(Node):
    """Both conditionings, each drawn where its mask or area says (one without is the base prompt)."""

    CATEGORY = "conditioning"
    INPUTS = {"conditioning_1": LINK("CONDITIONING"), "conditioning_2": LINK("CONDITIONING")}
    OUTPUTS = ("CONDITIONING",)

    def run(self, ctx, node_id, conditioning_1, conditioning_2):
        return (CombinedConditioning(cond_entries(conditioning_1) + cond_entries(conditioning_2)),)


def _with_area(conditioning, area: CondArea):
    return map_conditioning(conditioning, lambda c: replace(c, area=area))  # ComfyUI sets it on every entry


class ConditioningSetMask(Node):
    """The conditioning draws only where the mask is (1 = there), taking `strength` of each spot."""

    CATEGORY = "conditioning"
    INPUTS = {"conditioning": LINK("CONDITIONING"), "mask": LINK("MASK"), "strength": FLOAT(1.0, 0.0, 10.0),
              "set_cond_area": COMBO(("default", "mask bounds"))}
    OUTPUTS = ("CONDITIONING",)

    def run(self, ctx, node_id, conditioning, mask, strength, set_cond_area):
        checked_area("ConditioningSetMask", strength, set_cond_area)
        return (_with_area(conditioning, CondArea(mask=mask, strength=strength)),)


class ConditioningSetArea(Node):
    """The conditioning draws only in a box of the picture, in pixels."""

    CATEGORY = "conditioning"
    INPUTS = {"conditioning": LINK("CONDITIONING"), "width": INT(64, 64, MAX_RESOLUTION, 8),
              "height": INT(64, 64, MAX_RESOLUTION, 8), "x": INT(0, 0, MAX_RESOLUTION, 8),
              "y": INT(0, 0, MAX_RESOLUTION, 8), "strength": FLOAT(1.0, 0.0, 10.0)}
    OUTPUTS = ("CONDITIONING",)

    def run(self, ctx, node_id, conditioning, width, height, x, y, strength):
        checked_area("ConditioningSetArea", strength)
        return (_with_area(conditioning, CondArea(box=(x, y, width, height), fractions=False, strength=strength)),)


class ConditioningSetAreaPercentage(Node):
    """The conditioning draws only in a box of the picture, in fractions of its width and height."""

    CATEGORY = "conditioning"
    INPUTS = {"conditioning": LINK("CONDITIONING"), "width": FLOAT(1.0, 0.0, 1.0), "height": FLOAT(1.0, 0.0, 1.0),
              "x": FLOAT(0.0, 0.0, 1.0), "y": FLOAT(0.0, 0.0, 1.0), "strength": FLOAT(1.0, 0.0, 10.0)}
    OUTPUTS = ("CONDITIONING",)

    def run(self, ctx, node_id, conditioning, width, height, x, y, strength):
        checked_area("ConditioningSetAreaPercentage", strength)
        return (_with_area(conditioning, CondArea(box=(x, y, width, height), strength=strength)),)


REGION_NODES = (ConditioningCombine, ConditioningSetMask, ConditioningSetArea, ConditioningSetAreaPercentage)
