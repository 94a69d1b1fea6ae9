"""Images that stay on disk: read batch by batch through a ``DataLoader`` with worker processes.

Data too large for memory (see :func:`autokd.data.sources.stream_or_load`) are held as
:class:`StreamedImages`: a torch ``Dataset``, the indices of one split into it, and the torchvision
``transforms.v2`` pipeline that turns an item into a normalised (C, H, W) tensor. It answers the few
things the rest of autokd asks of an image tensor (``len``, ``shape``, ``x[a:b]``, ``x[indices]``),
and :func:`batches` reads it in the order training asks for, with ``workers`` processes decoding
ahead of the model. Labels are always in memory (a few bytes an image).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

STATISTICS_BATCH = 256


class _Items(Dataset):
    """The transformed images of a :class:`StreamedImages`, by position (what DataLoader workers read)."""

    def __init__(self, images: StreamedImages) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int) -> torch.Tensor:
        return self.images.item(position)


class StreamedImages:
    """The images of ``dataset`` at ``indices``, each through ``transform``, read when asked for."""

    ndim = 4
    dtype = torch.float32

    def __init__(
        self,
        dataset: Dataset,
        transform,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        workers: int = 0,
        item_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.dataset, self.transform, self.workers = dataset, transform, workers
        n = len(dataset)  # type: ignore[arg-type]
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        self.item_shape = item_shape or (tuple(self.item(0).shape) if len(self.indices) else ())

    def item(self, position: int) -> torch.Tensor:
        image = self.dataset[int(self.indices[position])][0]
        return self.transform(image)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.item_shape))

    def subset(self, positions) -> StreamedImages:
        """The images at ``positions`` (of this split), still on disk."""
        return StreamedImages(
            self.dataset,
            self.transform,
            self.indices[np.asarray(positions, dtype=np.int64)],
            workers=self.workers,
            item_shape=self.item_shape,
        )

    def then(self, step) -> StreamedImages:
        """These images with one more transform ``step`` after the others (e.g. ``v2.Normalize``)."""
        from torchvision.transforms import v2

        return StreamedImages(
            self.dataset,
            v2.Compose([self.transform, step]),
            self.indices,
            workers=self.workers,
            item_shape=self.item_shape,
        )

    def __getitem__(self, key) -> torch.Tensor:
        """``x[i]`` one image; ``x[a:b]`` or ``x[positions]`` a stacked batch, read in this process."""
        if isinstance(key, int | np.integer):
            return self.item(int(key))
        if isinstance(key, slice):
            positions = range(*key.indices(len(self)))
        else:
            positions = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key).reshape(-1)
        if len(positions) == 0:
            return torch.empty((0, *self.item_shape))
        return torch.stack([self.item(int(p)) for p in positions])

    def loader(self, chunks: Sequence[Sequence[int]]) -> DataLoader:
        """A DataLoader yielding one stacked batch per chunk of positions, in the chunks' order."""
        return DataLoader(
            _Items(self),
            batch_sampler=[[int(p) for p in chunk] for chunk in chunks],
            num_workers=self.workers,
            persistent_workers=False,
            prefetch_factor=4 if self.workers else None,
        )


def batches(
    images: torch.Tensor | StreamedImages, batch_size: int, order: torch.Tensor | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(positions, images) batch by batch: ``order`` split into ``batch_size`` chunks, or the split in
    its own order. In-memory tensors are sliced; :class:`StreamedImages` are read by their workers."""
    n = len(images)
    if order is None:
        if not isinstance(images, StreamedImages):
            for start in range(0, n, batch_size):
                yield torch.arange(start, min(n, start + batch_size)), images[start : start + batch_size]
            return
        order = torch.arange(n)
    yield from chunked(images, list(order.split(batch_size)))


def chunked(
    images: torch.Tensor | StreamedImages, chunks: Sequence[torch.Tensor]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(chunk, images[chunk]) for each chunk of positions, in order."""
    if isinstance(images, StreamedImages):
        if chunks:
            yield from zip(chunks, images.loader(chunks), strict=True)
        return
    for chunk in chunks:
        yield chunk, images[chunk]


def channel_statistics(images: StreamedImages) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of every image, in one streamed pass (float64 sums)."""
    total = total_sq = None
    pixels = 0
    for _, x in batches(images, STATISTICS_BATCH):
        x = x.double()
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        pixels += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / pixels
    std = (total_sq / pixels - mean * mean).clamp_min(0).sqrt()
    mean_a, std_a = mean.numpy().astype(np.float32), std.numpy().astype(np.float32)
    return mean_a, np.where(std_a > 0, std_a, 1.0).astype(np.float32)
