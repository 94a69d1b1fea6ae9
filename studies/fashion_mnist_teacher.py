"""The reference study's teacher: timm's ResNet-18 at half width with the small-image stem.

timm's ResNet-18 built for 224-pixel images shrinks a 32-pixel image to 8x8 before its first stage;
with a 3x3 stride-2 stem and no max-pool (the small-image stem autokd's ResNet students use) its stages
see 16x16 to 2x2. At full width that costs about 340 s per Fashion-MNIST epoch on two CPU cores; at
half width (2.8M parameters) about 90 s, which lets 20 epochs fit in the study's three hours.
"""

from torch import nn

from autokd.students import build_student


def resnet18_half_small_stem(num_classes: int, in_chans: int) -> nn.Module:
    """ResNet-18 (basic blocks 2-2-2-2) at half width, small-image stem, randomly initialised."""
    return build_student("resnet", 0.5, 1.0, num_classes=num_classes, in_chans=in_chans, stem="small")
