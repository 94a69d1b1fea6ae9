"""EfficientNet-Lite (Lite0 reference): EfficientNet without squeeze-excite, with ReLU6, for INT8.

timm scales Lite0 to Lite4 with the channel and depth multipliers of its EfficientNet-Lite generator
(fixed stem and head, as in the Lite models); the family calls that generator with ``width`` and
``depth`` as those multipliers. ``timm.create_model("efficientnet_lite0", ...)`` fixes them at 1.0.
"""

from __future__ import annotations

from timm.models.efficientnet import _gen_efficientnet_lite
from torch import nn

from autokd.students import register_family, stride_one_stem


# INT8 on ONNX Runtime measured at 0.981 agreement on a Fashion-MNIST student trained 8 epochs on the
# full training set with the small stem (benchmarks/quantization.py, docs/quantization.md); 4 epochs on
# 10,800 images is not enough, and the ImageNet stem was not measured fully trained.
@register_family(
    "efficientnet_lite", stems=("imagenet", "small"), int8_backends=("onnxruntime",), int8_stems=("small",)
)
def efficientnet_lite(
    width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """EfficientNet-Lite0 with ``channel_multiplier=width`` and ``depth_multiplier=depth``."""
    model = _gen_efficientnet_lite(
        "efficientnet_lite0",
        channel_multiplier=width,
        depth_multiplier=depth,
        num_classes=num_classes,
        in_chans=in_chans,
    )
    return stride_one_stem(model) if stem == "small" else model
