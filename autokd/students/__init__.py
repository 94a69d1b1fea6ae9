"""Student families: each maps a width and a depth multiplier to its timm constructor's real arguments.

A family is a :class:`StudentFamily`: a builder ``(width, depth, *, num_classes, in_chans[, stem])
-> nn.Module`` registered with :func:`register_family` in its own file in this package (adding a file
is all it takes: every module here is imported the first time the registry is used). Widths and
depths are multipliers of the family's reference variant, so ``width=0.5`` halves every stage's
channels and ``depth=0.5`` halves every stage's block count.

Input stems are family metadata: ``"imagenet"`` is the timm model's own, built for 224-pixel images;
``"small"`` is one sized for images of at most :data:`SMALL_IMAGE_MAX` pixels, which only families
registered with ``stems=("imagenet", "small", ...)`` have (ResNet; the mobile families through a
stride-1 stem, :func:`stride_one_stem`); ``"full"`` (ResNet) leaves the image at full resolution
for the first stage, as the CIFAR ResNets do, at about three times the compute of ``"small"``. A
study's ``search_space.stem`` (``auto`` by default) picks one per family
(:meth:`StudentFamily.stem_for`); a family without the stem asked for gets the nearest it has.

``timm:NAME`` in a study's ``families`` is a fixed student: timm's model NAME built as is (no width
or depth) and searched jointly with the distillation settings (:func:`get_family`).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import timm
from timm.layers import make_divisible
from torch import nn

from autokd.registry import Registry

FamilyBuilder = Callable[..., nn.Module]
SMALL_IMAGE_MAX = 64
STEMS = ("imagenet", "small", "full")
# What a family without the stem asked for gets instead: the nearest in resolution that it has.
_NEAREST = {"full": ("full", "small", "imagenet"), "small": ("small", "imagenet"), "imagenet": ("imagenet",)}
STEM_CHOICES = ("auto", *STEMS)  # what a study (and the benchmarks' --stem) may ask for


@dataclass(frozen=True)
class StudentFamily:
    """A registered family: its builder and what it offers.

    ``stems``: the input stems it can be built with; ``int8_backends``: quantization backends this
    family was measured to pass the INT8 agreement bar on, beyond those a backend itself lists.
    """

    name: str
    builder: FamilyBuilder
    stems: tuple[str, ...] = ("imagenet",)
    int8_backends: tuple[str, ...] = ()
    int8_stems: tuple[str, ...] = ()  # the stems ``int8_backends`` were measured with; () = all of them
    fixed: bool = False  # a named model trained as is: width and depth do not apply

    @property
    def has_small_stem(self) -> bool:
        return "small" in self.stems

    def stem_for(self, image_size: int, choice: str = "auto") -> str:
        """The stem a study's ``stem`` choice gives this family on images of ``image_size`` pixels.

        ``auto`` means the small-image stem up to :data:`SMALL_IMAGE_MAX` pixels and the family's own
        above; a family without the stem asked for gets the nearest it has (``full`` → ``small`` →
        ``imagenet``), so a family without a small-image stem always gets its own.
        """
        if choice not in STEM_CHOICES:
            raise ValueError(f"stem: '{choice}' is not one of {', '.join(STEM_CHOICES)}")
        if choice == "auto":
            choice = "small" if image_size <= SMALL_IMAGE_MAX else "imagenet"
        # an extension family may lack even timm's own stem: then its first
        return next((stem for stem in _NEAREST[choice] if stem in self.stems), self.stems[0])

    def build(self, width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"):
        """A randomly initialised student of this family scaled by ``width`` and ``depth``."""
        if stem not in STEMS:
            raise ValueError(f"stem: '{stem}' is not one of {', '.join(STEMS)}")
        if stem not in self.stems:
            with_it = ", ".join(name for name, family in FAMILIES.items() if stem in family.stems)
            raise ValueError(
                f"stem: family '{self.name}' has no '{stem}' stem (families with one: {with_it})"
            )
        if len(self.stems) == 1:
            return self.builder(width, depth, num_classes=num_classes, in_chans=in_chans)
        return self.builder(width, depth, num_classes=num_classes, in_chans=in_chans, stem=stem)


FAMILIES: Registry[StudentFamily] = Registry("student family", builtins="autokd.students")


def register_family(
    name: str,
    *,
    stems: tuple[str, ...] = ("imagenet",),
    int8_backends: tuple[str, ...] = (),
    int8_stems: tuple[str, ...] = (),
) -> Callable[[FamilyBuilder], FamilyBuilder]:
    """Register ``fn(width, depth, *, num_classes, in_chans) -> nn.Module`` as the family ``name``.

    With more than one stem the builder also takes ``stem`` (one of ``stems``). ``int8_backends``: the
    backends the family was measured to pass the INT8 agreement bar on; ``int8_stems``: with which of
    its stems, where not all.
    """

    def decorator(builder: FamilyBuilder) -> FamilyBuilder:
        unknown = set(stems) - set(STEMS)
        if unknown or not stems:
            raise ValueError(f"family '{name}': stems must be among {', '.join(STEMS)}, got {stems}")
        FAMILIES.register(
            name, StudentFamily(name, builder, tuple(stems), tuple(int8_backends), tuple(int8_stems))
        )
        return builder

    return decorator


TIMM_PREFIX = "timm:"


class UnknownTimmModelError(ValueError):
    """A ``timm:NAME`` student names no timm model."""


def is_fixed_name(name: str) -> bool:
    """Whether ``name`` is a fixed student by timm name (``timm:NAME``) rather than a family."""
    return name.startswith(TIMM_PREFIX)


@functools.cache
def _timm_student(name: str) -> StudentFamily:
    model = name[len(TIMM_PREFIX) :]
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=3)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise UnknownTimmModelError(f"'{model}' is not a timm model{hint}")

    def builder(width: float, depth: float, *, num_classes: int, in_chans: int) -> nn.Module:
        return timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    return StudentFamily(name, builder, fixed=True)


def get_family(name: str) -> StudentFamily:
    """The registered family ``name``, or a fixed student for ``timm:NAME`` (any timm model, as is)."""
    return _timm_student(name) if is_fixed_name(name) else FAMILIES.get(name)


def stem_for(family: str, image_size: int, choice: str = "auto") -> str:
    """The stem ``family`` gets on images of ``image_size`` pixels for a study's ``stem`` choice."""
    return get_family(family).stem_for(image_size, choice)


def build_student(
    family: str, width: float, depth: float, *, num_classes: int, in_chans: int, stem: str = "imagenet"
) -> nn.Module:
    """Build a randomly initialised student of ``family`` scaled by ``width`` and ``depth`` (a fixed
    ``timm:NAME`` student ignores both)."""
    return get_family(family).build(width, depth, num_classes=num_classes, in_chans=in_chans, stem=stem)


def scale_channels(channels: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of ``divisor`` the way timm rounds channels."""
    return make_divisible(channels * width, divisor)


def scale_depth(blocks: int, depth: float) -> int:
    """Scale a block count, keeping at least one block per stage."""
    return max(1, int(round(blocks * depth)))


def stride_one_stem(model: nn.Module, stem: str = "conv_stem") -> nn.Module:
    """The small-image stem of the mobile families: their stem convolution at stride 1 instead of 2.

    timm's EfficientNet, MobileNetV3 and GhostNet halve a 224-pixel image 5 times; a 32-pixel image
    would reach their last stages at 1×1. With the stem at stride 1 every stage sees twice the
    resolution (4× the compute), as ResNet's small stem does. ``feature_info`` reductions follow.
    """
    getattr(model, stem).stride = (1, 1)
    for info in model.feature_info:
        info["reduction"] = max(1, info["reduction"] // 2)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in model.parameters())
