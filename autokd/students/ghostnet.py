"""GhostNet (GhostNet-1.0 reference) without squeeze-excite: width is timm's ``width`` multiplier,
depth keeps that share of the blocks of each multi-block stage (at least one per stage).

Squeeze-excite blocks (hard-sigmoid gates) are left out: they are what INT8 handles worst, and the
family is meant for INT8 deployment.
"""

from __future__ import annotations

import math

from timm.models import GhostNet
from torch import nn

from autokd.students import register_family, stride_one_stem

# kernel, expansion channels, output channels, squeeze-excite ratio (0: none), stride; per stage.
REFERENCE_STAGES = (
    ((3, 16, 16, 0, 1),),
    ((3, 48, 24, 0, 2),),
    ((3, 72, 24, 0, 1),),
    ((5, 72, 40, 0, 2),),
    ((5, 120, 40, 0, 1),),
    ((3, 240, 80, 0, 2),),
    ((3, 200, 80, 0, 1), (3, 184, 80, 0, 1), (3, 184, 80, 0, 1), (3, 480, 112, 0, 1), (3, 672, 112, 0, 1)),
    ((5, 672, 160, 0, 2),),
    ((5, 960, 160, 0, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0, 1), (5, 960, 160, 0, 1)),
)


def ghostnet_stages(depth: float) -> list[list[list[float]]]:
    """GhostNet's stage table with ``depth`` of each multi-block stage's blocks kept (first ones)."""
    return [
        [list(block) for block in stage[: max(1, math.ceil(len(stage) * depth))]]
        for stage in REFERENCE_STAGES
    ]


# INT8 on ONNX Runtime measured at 0.984 agreement (benchmarks/quantization.py, docs/quantization.md).
@register_family("ghostnet", stems=("imagenet", "small"), int8_backends=("onnxruntime",))
def ghostnet(
    width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """GhostNet-1.0 without squeeze-excite, scaled by width and depth."""
    model = GhostNet(ghostnet_stages(depth), num_classes=num_classes, width=width, in_chans=in_chans)
    return stride_one_stem(model) if stem == "small" else model
