"""Student families: each maps a width and a depth multiplier to its timm constructor's real arguments.

A family is a function ``(width, depth, *, num_classes, in_chans) -> nn.Module`` registered with
:func:`register_family`. Widths and depths are multipliers of the family's reference variant, so
``width=0.5`` halves every stage's channels and ``depth=0.5`` halves every stage's block count.

Input stems: ``"imagenet"`` is the timm model's own, built for 224-pixel images; ``"small"`` is one
sized for images of at most :data:`SMALL_IMAGE_MAX` pixels. Only families registered with
``small_stem=True`` have one (ResNet, see :mod:`autokd.students.resnet`); their builders take a
``stem`` keyword. A study's ``search_space.stem`` (``auto`` by default) picks it (:func:`stem_for`).
"""

from __future__ import annotations

from collections.abc import Callable

from timm.layers import make_divisible
from torch import nn

from autokd.registry import Registry

FamilyBuilder = Callable[..., nn.Module]
FAMILIES: Registry[FamilyBuilder] = Registry("student family")
STEMS = ("imagenet", "small")
SMALL_IMAGE_MAX = 64
SMALL_STEM_FAMILIES: set[str] = set()
STEM_CHOICES = ("auto", *STEMS)  # what a study (and the benchmarks' --stem) may ask for


def stem_for(family: str, image_size: int, choice: str = "auto") -> str:
    """The stem a study's ``stem`` choice gives ``family`` on images of ``image_size`` pixels.

    ``auto`` means the small-image stem up to :data:`SMALL_IMAGE_MAX` pixels; a family without one
    always gets its own (``imagenet``).
    """
    if choice not in STEM_CHOICES:
        raise ValueError(f"stem: '{choice}' is not one of {', '.join(STEM_CHOICES)}")
    if family not in SMALL_STEM_FAMILIES:
        return "imagenet"
    if choice == "auto":
        return "small" if image_size <= SMALL_IMAGE_MAX else "imagenet"
    return choice


def register_family(name: str, *, small_stem: bool = False) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Register ``fn(width, depth, *, num_classes, in_chans) -> nn.Module`` as a student family.

    With ``small_stem`` the builder also takes ``stem`` (``"imagenet"`` or ``"small"``).
    """
    if small_stem:
        SMALL_STEM_FAMILIES.add(name)
    return FAMILIES.register(name)


def build_student(
    family: str, width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """Build a randomly initialised student of ``family`` scaled by ``width`` and ``depth``."""
    if stem not in STEMS:
        raise ValueError(f"stem: '{stem}' is not one of {', '.join(STEMS)}")
    builder = FAMILIES.get(family)
    if family not in SMALL_STEM_FAMILIES:
        if stem != "imagenet":
            with_one = ", ".join(sorted(SMALL_STEM_FAMILIES))
            raise ValueError(f"stem: family '{family}' has no '{stem}' stem (families with one: {with_one})")
        return builder(width, depth, num_classes=num_classes, in_chans=in_chans)
    return builder(width, depth, num_classes=num_classes, in_chans=in_chans, stem=stem)


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
