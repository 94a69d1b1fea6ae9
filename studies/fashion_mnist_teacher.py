"""The reference study's teacher: timm's ResNet-18 at half width with a full-resolution stem.

timm's ResNet-18 built for 224-pixel images shrinks a 28-pixel image to 7x7 before its first stage.
Its small-image variants swap the 7x7 stride-2 stem and max-pool for one 3x3 convolution: with
stride 2 (the small stem autokd's ResNet students use) the stages see 14x14 to 2x2; with stride 1
(the usual CIFAR ResNet) 28x28 to 4x4, about three times the compute. At half width (2.8M
parameters) the stride-2 teacher stopped at 0.9436 test top-1 after 30 epochs with random erasing;
the stride-1 one trained in bfloat16 (``training.cpu_bf16``) costs about as much per epoch as the
stride-2 one did in FP32.
"""

from torch import nn

from autokd.students import build_student


def resnet18_half_small_stem(num_classes: int, in_chans: int) -> nn.Module:
    """ResNet-18 (basic blocks 2-2-2-2) at half width, 3x3 stride-2 stem, randomly initialised."""
    return build_student("resnet", 0.5, 1.0, num_classes=num_classes, in_chans=in_chans, stem="small")


def resnet18_half_full_resolution(num_classes: int, in_chans: int) -> nn.Module:
    """ResNet-18 at half width with a 3x3 stride-1 stem and no max-pool: its first stage sees the
    whole image, as in the CIFAR ResNets; randomly initialised."""
    model = resnet18_half_small_stem(num_classes, in_chans)
    model.conv1.stride = (1, 1)
    for info in model.feature_info:  # every stage one stride-2 step closer to the input again
        info["reduction"] = max(1, info["reduction"] // 2)
    return model
