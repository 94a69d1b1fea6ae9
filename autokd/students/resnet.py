"""ResNet (basic blocks, ResNet-18 reference): width scales the stages' ``channels``, depth their ``layers``.

timm's default 7×7 stem stays 64 channels wide whatever ``stem_width`` says (only its deep stems read
it), so the mapping leaves the stem alone.
"""

from __future__ import annotations

import timm
from torch import nn

from autokd.students import register_family, scale_channels, scale_depth

REFERENCE_LAYERS = (2, 2, 2, 2)
REFERENCE_CHANNELS = (64, 128, 256, 512)


def resnet_arguments(width: float, depth: float) -> dict:
    """timm ResNet constructor overrides for a width/depth multiple of ResNet-18."""
    return {
        "layers": tuple(scale_depth(n, depth) for n in REFERENCE_LAYERS),
        "channels": tuple(scale_channels(c, width) for c in REFERENCE_CHANNELS),
    }


@register_family("resnet")
def resnet(width: float, depth: float, *, num_classes: int, in_chans: int) -> nn.Module:
    """ResNet-18 scaled by width and depth."""
    return timm.create_model(
        "resnet18",
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        **resnet_arguments(width, depth),
    )
