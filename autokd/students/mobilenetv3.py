"""MobileNetV3-Large through timm's own generator, whose channel and depth multipliers it scales.

``mobilenetv3_large_100`` fixes the channel multiplier at 1.0, so the family calls the generator that
all MobileNetV3-Large variants share.
"""

from __future__ import annotations

from timm.models.mobilenetv3 import _gen_mobilenet_v3
from torch import nn

from autokd.students import register_family, stride_one_stem


@register_family("mobilenetv3", stems=("imagenet", "small"))
def mobilenetv3(
    width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """MobileNetV3-Large with ``channel_multiplier=width`` and ``depth_multiplier=depth``."""
    model = _gen_mobilenet_v3(
        "mobilenetv3_large_100",
        channel_multiplier=width,
        depth_multiplier=depth,
        num_classes=num_classes,
        in_chans=in_chans,
    )
    return stride_one_stem(model) if stem == "small" else model
