"""ResNet (basic blocks, ResNet-18 reference): width scales the stages' ``channels``, depth their ``layers``.

timm's default 7×7 stem stays 64 channels wide whatever ``stem_width`` says (only its deep stems read
it), so the mapping leaves the stem's width alone.

Three stems (``stem``):

- ``"imagenet"``: timm's own, a 7×7 stride-2 convolution and a stride-2 max-pool. Built for 224-pixel
  images, it shrinks a 32-pixel image to 8×8 before the first stage.
- ``"small"``: a 3×3 stride-2 convolution (still 64 channels) and no max-pool, so the stages see twice
  the resolution (16×16 at 32 pixels), the usual adaptation of ImageNet ResNets to small images.
- ``"full"``: the same convolution at stride 1, so the first stage sees the whole image (32×32), as in
  the CIFAR ResNets: four times the multiply-adds of ``"small"`` for the same parameters.

On small images the small stem is at least as accurate and is what makes INT8 pay off on narrow
students: the ImageNet stem's 7×7 convolution of a one-channel image is their largest layer and the
one INT8 kernels speed up least (docs/quantization.md has the measurements).
"""

from __future__ import annotations

import timm
from torch import nn

from autokd.students import register_family, scale_channels, scale_depth

REFERENCE_LAYERS = (2, 2, 2, 2)
REFERENCE_CHANNELS = (64, 128, 256, 512)
STEM_CHANNELS = 64  # timm's ResNet-18 stem; the first stage's downsample maps it to the scaled width


def resnet_arguments(width: float, depth: float) -> dict:
    """timm ResNet constructor overrides for a width/depth multiple of ResNet-18."""
    return {
        "layers": tuple(scale_depth(n, depth) for n in REFERENCE_LAYERS),
        "channels": tuple(scale_channels(c, width) for c in REFERENCE_CHANNELS),
    }


def use_small_image_stem(model: nn.Module, in_chans: int, stride: int = 2) -> nn.Module:
    """Swap timm's 7×7 stride-2 stem convolution and max-pool for one 3×3 convolution of ``stride``
    (2: the ``small`` stem, 1: the ``full`` one)."""
    model.conv1 = nn.Conv2d(in_chans, STEM_CHANNELS, kernel_size=3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # timm's conv init
    model.maxpool = nn.Identity()
    for info in model.feature_info:  # timm's stem reduces 4x (convolution and max-pool), this one stride x
        info["reduction"] = stride if info["module"] == "act1" else info["reduction"] * stride // 4
    return model


@register_family("resnet", stems=("imagenet", "small", "full"))
def resnet(
    width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """ResNet-18 scaled by width and depth, with the ``stem`` named (see the module docstring)."""
    model = timm.create_model(
        "resnet18",
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_chans,
        **resnet_arguments(width, depth),
    )
    if stem == "imagenet":
        return model
    return use_small_image_stem(model, in_chans, stride=2 if stem == "small" else 1)
