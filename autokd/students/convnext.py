"""ConvNeXt (ConvNeXt-Atto reference): width scales ``dims``, depth scales ``depths``."""

from __future__ import annotations

import timm
from torch import nn

from autokd.students import register_family, scale_channels, scale_depth

REFERENCE_DEPTHS = (2, 2, 6, 2)
REFERENCE_DIMS = (40, 80, 160, 320)


def convnext_arguments(width: float, depth: float) -> dict:
    """timm ConvNeXt constructor overrides for a width/depth multiple of ConvNeXt-Atto."""
    return {
        "depths": tuple(scale_depth(n, depth) for n in REFERENCE_DEPTHS),
        "dims": tuple(scale_channels(c, width) for c in REFERENCE_DIMS),
    }


@register_family("convnext")
def convnext(width: float, depth: float, *, num_classes: int, in_chans: int) -> nn.Module:
    """ConvNeXt-Atto scaled by width and depth (needs images of at least 32 pixels: 4 × 2³ downsampling)."""
    return timm.create_model(
        "convnext_atto",
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        **convnext_arguments(width, depth),
    )
