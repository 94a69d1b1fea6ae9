"""MobileNetV4-Conv-Small: ReLU, batch norm and universal inverted bottlenecks, no squeeze-excite and
no hard-swish, the all-convolution MobileNetV4 that INT8 handles like a ResNet.

timm builds it from a stage table with a channel multiplier only (``_gen_mobilenet_v4``); the family
builds timm's public :class:`~timm.models.MobileNetV3` class (which is MobileNetV4's too) from the
same table with ``width`` as the channel multiplier and ``depth`` as the depth multiplier of timm's
own block-string decoder, so both really change the model.
"""

from __future__ import annotations

from functools import partial

from timm.models import MobileNetV3
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from torch import nn

from autokd.students import register_family, stride_one_stem

# timm's mobilenetv4_conv_small stage table (block strings: type, repeats, kernels, stride, expansion,
# channels; "cn" a conv-bn-relu, "uir" a universal inverted residual).
REFERENCE_STAGES = (
    ("cn_r1_k3_s2_e1_c32", "cn_r1_k1_s1_e1_c32"),
    ("cn_r1_k3_s2_e1_c96", "cn_r1_k1_s1_e1_c64"),
    ("uir_r1_a5_k5_s2_e3_c96", "uir_r4_a0_k3_s1_e2_c96", "uir_r1_a3_k0_s1_e4_c96"),
    (
        "uir_r1_a3_k3_s2_e6_c128",
        "uir_r1_a5_k5_s1_e4_c128",
        "uir_r1_a0_k5_s1_e4_c128",
        "uir_r1_a0_k5_s1_e3_c128",
        "uir_r2_a0_k3_s1_e4_c128",
    ),
    ("cn_r1_k1_s1_c960",),
)


@register_family("mobilenetv4", stems=("imagenet", "small"))
def mobilenetv4(
    width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """MobileNetV4-Conv-Small with channels scaled by ``width`` and block repeats by ``depth``."""
    model = MobileNetV3(
        block_args=decode_arch_def([list(stage) for stage in REFERENCE_STAGES], depth_multiplier=depth),
        num_classes=num_classes,
        in_chans=in_chans,
        stem_size=32,
        fix_stem=width < 1.0,  # as timm's generator: the stem keeps its 32 channels below 1.0
        num_features=1280,
        head_bias=False,
        head_norm=True,
        act_layer=nn.ReLU,
        round_chs_fn=partial(round_channels, multiplier=width),
    )
    return stride_one_stem(model) if stem == "small" else model
