"""MobileNetV3-Small "minimal": no squeeze-excite, no hard-swish, 3x3 kernels only (timm's minimal
variant of the generator, the one the ``*_minimal_100`` models use), which INT8 keeps close to FP32.
"""

from __future__ import annotations

from timm.models.mobilenetv3 import _gen_mobilenet_v3
from torch import nn

from autokd.students import register_family, stride_one_stem


# INT8 on ONNX Runtime measured at 0.984 agreement on a Fashion-MNIST student trained 8 epochs on the
# full training set with the small stem (benchmarks/quantization.py, docs/quantization.md); 4 epochs on
# 10,800 images is not enough, and the ImageNet stem was not measured fully trained.
@register_family(
    "mobilenetv3_minimal", stems=("imagenet", "small"), int8_backends=("onnxruntime",), int8_stems=("small",)
)
def mobilenetv3_minimal(
    width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """MobileNetV3-Small-minimal with ``channel_multiplier=width`` and ``depth_multiplier=depth``."""
    model = _gen_mobilenet_v3(
        "tf_mobilenetv3_small_minimal_100",  # its stage table; padding stays PyTorch-style
        channel_multiplier=width,
        depth_multiplier=depth,
        num_classes=num_classes,
        in_chans=in_chans,
    )
    return stride_one_stem(model) if stem == "small" else model
