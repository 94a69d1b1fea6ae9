"""Vision Transformer students (reference: 12 blocks, 384 wide in 12 heads of 32) for small images:
width scales the embedding (the number of 32-wide heads with it; 0.5 is DeiT-Tiny's 192), depth the
number of blocks.

Patches are 4x4 pixels, so a 32-pixel image is 64 tokens; other image sizes are interpolated by timm
(``dynamic_img_size``). Tokens are averaged for the classifier (no class token).
"""

from __future__ import annotations

from timm.models import VisionTransformer
from torch import nn

from autokd.students import register_family, scale_depth

REFERENCE_DEPTH = 12
REFERENCE_HEADS = 12
HEAD_WIDTH = 32
PATCH = 4


def vit_arguments(width: float, depth: float) -> dict:
    """timm VisionTransformer arguments for a width/depth multiple of the reference."""
    heads = max(1, round(REFERENCE_HEADS * width))
    return {
        "embed_dim": heads * HEAD_WIDTH,
        "num_heads": heads,
        "depth": scale_depth(REFERENCE_DEPTH, depth),
    }


# INT8 measured at 0.981 agreement on ONNX Runtime and 0.997 on pt2e_x86 (benchmarks/quantization.py,
# docs/quantization.md).
@register_family("vit", int8_backends=("onnxruntime", "pt2e_x86"))
def vit(width: float, depth: float, *, num_classes: int, in_chans: int) -> nn.Module:
    """A ViT for 32-pixel images (4-pixel patches) scaled by width and depth."""
    return VisionTransformer(
        img_size=32,
        patch_size=PATCH,
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool="avg",
        class_token=False,
        dynamic_img_size=True,
        **vit_arguments(width, depth),
    )
