"""The teacher's augmentation: crop and flip, and random erasing on top where the teacher asks for it."""

from __future__ import annotations

import torch

from autokd.augment import CropFlip, WithErasing


def test_random_erasing_blanks_a_different_rectangle_in_each_image():
    images = torch.ones(16, 1, 32, 32)
    erase = WithErasing(CropFlip(padding=0, hflip=False), probability=1.0)
    views = erase.apply(images, erase.sample(16, torch.Generator().manual_seed(0)))
    blanks = [(view == 0).squeeze(0) for view in views]
    assert all(blank.any() for blank in blanks)
    assert len({tuple(blank.nonzero()[0].tolist()) + (int(blank.sum()),) for blank in blanks}) > 1


def test_random_erasing_at_probability_zero_leaves_the_crop_and_flip_views():
    images = torch.randn(8, 1, 32, 32)
    views = CropFlip(padding=2)
    params = views.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(WithErasing(views, probability=0.0).apply(images, params), views.apply(images, params))
