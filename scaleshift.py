"""
ScaleShift, ours: a scalar and a vector per location, h̃ = h·(1 + β·α) + β·v.

ActivScalar can only lengthen, shorten, switch off or reverse an activation along its own direction; SteerVec
can move it anywhere. ScaleShift asks the paper's open question of an intervention that may do both at one
location: is scaling enough, or does steering need a turn too? It is also the example of a new method as
one class in a file of its own: defining it registers it (ascale.METHODS), and ascale.methods() imports
this file (ascale.BUILT_IN) whenever a method is looked up by name.
"""

import torch
from torch import nn

from ascale import ActivScalar
from gpt2 import GPTConfig


class ScaleShift(ActivScalar):
    """h̃ = h·(1 + β·α) + β·v: a scalar α and a vector v per location, so that a location may change its
    activation's magnitude and its direction (the paper's open question: is scaling enough, or does
    steering need both?). Selection ranks a location by |α| + ‖v‖/max ‖v‖: both terms without units (a
    share of the activation, a share of the intervention's largest shift). The map draws β·α alone."""
    method, about = "scaleshift", "a scalar and a vector per location, h*(1+a)+v"
    measure = "|alpha| + ||v|| / max ||v||"
    map_label = "β·α, the scale part: the activation is scaled by 1 + β·α (the shift β·v is not drawn)"

    def __init__(self, cfg: GPTConfig, sites, positions: int | None):
        super().__init__(cfg, sites, positions)                     # alpha: (L, T) or (L, T, nh) for head
        self.v = nn.ParameterDict({s: nn.Parameter(torch.zeros(self.n_layer, self.n_pos, *self.site_shape(s)))
                                   for s in self.sites})           # (L, T, D) or (L, T, nh, hs) for head

    def apply(self, site, layer, h, pos=None):
        v = self.v[site][layer].to(h.device)                        # (T, ...), or each row's position's
        return super().apply(site, layer, h, pos) + (self.beta * (v if pos is None else v[pos])).to(h.dtype)

    def effect(self) -> dict[str, torch.Tensor]:
        """|α| + ‖v‖/max ‖v‖ per location (the largest shift counts as much as doubling the activation)."""
        top = max(float(v.detach().norm(dim=-1).max()) for v in self.v.values())
        return {s: self.alpha[s].detach().abs() + self.v[s].detach().norm(dim=-1) / max(top, 1e-12)
                for s in self.sites}
