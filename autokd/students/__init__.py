"""Student families: each maps a width and a depth multiplier to its timm constructor's real arguments.

A family is a function ``(width, depth, num_classes, in_chans) -> nn.Module`` registered with
:func:`register_family`. Widths and depths are multipliers of the family's reference variant, so
``width=0.5`` halves every stage's channels and ``depth=0.5`` halves every stage's block count.
"""

from __future__ import annotations

from collections.abc import Callable

from timm.layers import make_divisible
from torch import nn

from autokd.registry import Registry

FamilyBuilder = Callable[..., nn.Module]
FAMILIES: Registry[FamilyBuilder] = Registry("student family")


def register_family(name: str) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Register ``fn(width, depth, *, num_classes, in_chans) -> nn.Module`` as a student family."""
    return FAMILIES.register(name)


def build_student(family: str, width: float, depth: float, *, num_classes: int, in_chans: int) -> nn.Module:
    """Build a randomly initialised student of ``family`` scaled by ``width`` and ``depth``."""
    return FAMILIES.get(family)(width, depth, num_classes=num_classes, in_chans=in_chans)


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` the way timm rounds channels."""
    return make_divisible(channels * width, divisor)


def scale_depth(blocks: int, depth: float) -> int:
    """Scale a block count, keeping at least one block per stage."""
    return max(1, int(round(blocks * depth)))


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())


from autokd.students import convnext, mobilenetv3, resnet  # noqa: E402,F401
