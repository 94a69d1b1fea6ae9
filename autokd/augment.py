"""Augmentation whose every view is described by a few integers, so the teacher's view can be replayed.

A view of an image is a crop of the zero-padded image at offset (dy, dx) followed by an optional
horizontal flip. The teacher-output cache stores, per sample, a fixed number of such views with their
parameters; the student then trains on exactly the view whose teacher output was cached (FKD, Shen &
Xing, ECCV 2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CropFlip:
    """Random crop with ``padding`` pixels of zero padding, and a horizontal flip with probability 1/2."""

    padding: int = 2
    hflip: bool = True

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Parameters of ``n`` random views as an (n, 3) int16 tensor of (dy, dx, flip)."""
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = (
            torch.randint(0, 2, (n, 1), generator=generator)
            if self.hflip
            else torch.zeros(n, 1, dtype=torch.long)
        )
        return torch.cat([offsets, flips], dim=1).to(torch.int16)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The views of ``images`` (N, C, H, W) described by ``params`` (N, 3), vectorised over the batch."""
        params = params.long()
        n, _, h, w = images.shape
        p = self.padding
        padded = F.pad(images, (p, p, p, p)) if p else images
        rows = params[:, 0, None] + torch.arange(h)  # (N, H)
        cols = params[:, 1, None] + torch.arange(w)  # (N, W)
        batch = torch.arange(n)[:, None, None]
        views = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        flip = params[:, 2].bool()
        if flip.any():
            views = torch.where(flip[:, None, None, None], views.flip(-1), views)
        return views.contiguous()


@dataclass(frozen=True)
class WithErasing:
    """``views`` followed, per image, by torchvision's RandomErasing with probability ``probability``.

    For training without a teacher-output cache only (the teacher itself): the erased rectangle is
    drawn from torch's global generator, so a view is no longer described by its integers alone.
    """

    views: CropFlip
    probability: float

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return self.views.sample(n, generator)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        erase = v2.RandomErasing(p=self.probability, value=0)  # 0: the value crops pad with
        views = self.views.apply(images, params)
        return torch.stack([erase(view) for view in views])  # one rectangle per image, not per batch
