"""Teacher outputs computed once per study and shared by every trial (and every worker process).

The cache lives beside the teacher, in ``<runs>/_teachers/<teacher key>/outputs-<cache key>/``:

- ``views.npy``: (V, N, 3) int16 view parameters (dy, dx, flip) per sample; V = 1 without augmentation,
- ``logits.npy``: (V, N, classes) float32 teacher logits for those views,
- ``stage<i>.npy``: (V, N, C, H, W) float16 teacher features of timm stage ``i``, for the stages the
  study's plugins ask for, while they fit under the disk cap (the others are computed on the fly),
- ``meta.json``: what is in it and the SHA-256 of every array, written last so a half-written cache is
  never read.

All arrays are memory-mapped read-only by trials, so several processes read one copy. The cache key
hashes the teacher's identity (its settings *and* the checksum of its weights, so a retrained teacher
never reads another teacher's outputs), the preprocessing (augmentation and number of views) and the
cached stages. Every array is checked against its checksum when the cache is opened; a cache that
fails the check (a zeroed or truncated file) is computed again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from autokd.augment import CropFlip
from autokd.data.stream import StreamedImages, batches
from autokd.devices import device_of
from autokd.features import forward_with_features
from autokd.storage import file_sha256


@dataclass
class TeacherOutputs:
    """Teacher logits and features for a batch of training samples, from the cache or computed live."""

    model: nn.Module
    views: torch.Tensor | None  # (V, N, 3) view parameters; None when there is no augmentation
    augmentation: CropFlip | None
    logits: np.ndarray | None  # (V, N, classes) memory map; None when the cache is off
    features: dict[int, np.ndarray]  # timm stage index → (V, N, C, H, W) memory map
    live_stages: tuple[int, ...]  # stages the cache could not hold (over the disk cap)
    directory: Path | None = None

    @property
    def num_views(self) -> int:
        return 1 if self.views is None else int(self.views.shape[0])

    def view(self, x: torch.Tensor, idx: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """The images the student (and teacher) see for the batch ``x`` (samples ``idx``) in views ``view``."""
        if self.augmentation is None or self.views is None:
            return x
        return self.augmentation.apply(x, self.views[view, idx])

    @torch.no_grad()
    def lookup(
        self, x: torch.Tensor, idx: torch.Tensor, view: torch.Tensor, stages: Sequence[int]
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Teacher logits and the requested stages' features for the batch ``x`` (= samples ``idx``)."""
        missing = [s for s in stages if s not in self.features]
        live_logits, live_features = None, {}
        if self.logits is None or missing:
            self.model.eval()
            live_logits, feats = forward_with_features(self.model, x, sorted(missing))
            live_features = dict(zip(sorted(missing), feats, strict=True))
        i, v = idx.cpu().numpy(), view.cpu().numpy()
        logits = torch.from_numpy(self.logits[v, i]) if self.logits is not None else live_logits
        features = {s: torch.from_numpy(self.features[s][v, i]).float() for s in stages if s in self.features}
        features.update(live_features)
        return logits, features


class CacheSpaceError(OSError):
    """The teacher-output cache does not fit on the disk (said before anything is written)."""

    def __str__(self) -> str:
        return str(self.strerror)


OUTPUTS_PREFIX = "outputs-"  # a cache's folder name in its teacher's folder, before the cache key


def cache_key(teacher_key: str, augmentation: CropFlip | None, views: int, stages: Sequence[int]) -> str:
    """Content hash of what the cache holds: the teacher (settings and weights), the preprocessing and
    the cached stages."""
    payload = {
        "teacher": teacher_key,
        "augmentation": augmentation.__dict__ if augmentation else None,
        "views": views,
        "stages": sorted(stages),
        "format": 2,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _stage_bytes(
    model: nn.Module, x: torch.Tensor | StreamedImages, stages: Sequence[int], n: int, views: int
) -> dict[int, int]:
    with torch.no_grad():
        model.eval()
        _, feats = forward_with_features(model, x[:1].to(device_of(model)), sorted(stages))
    return {s: f[0].numel() * 2 * n * views for s, f in zip(sorted(stages), feats, strict=True)}


def build_teacher_outputs(
    model: nn.Module,
    train_x: torch.Tensor | StreamedImages,
    teacher_dir: Path,
    teacher_key: str,
    *,
    enabled: bool = True,
    augmentation: CropFlip | None = None,
    views: int = 1,
    stages: Sequence[int] = (),
    max_bytes: int = 2 * 1024**3,
    seed: int = 0,
    batch_size: int = 512,
    log: Callable[[str], None] = print,
) -> TeacherOutputs:
    """Open the teacher-output cache for this preprocessing, computing it first if it does not exist.

    With ``enabled=False`` nothing is cached: every lookup runs the teacher (for comparisons).
    Stages whose features would push the cache over ``max_bytes`` are left to be computed live.
    """
    n = len(train_x)
    views = views if augmentation is not None else 1
    generator = torch.Generator().manual_seed(seed)
    view_params = (
        torch.stack([augmentation.sample(n, generator) for _ in range(views)])
        if augmentation is not None
        else None
    )
    if not enabled:
        return TeacherOutputs(model, view_params, augmentation, None, {}, tuple(sorted(stages)))

    sizes = _stage_bytes(model, train_x, stages, n, views) if stages else {}
    budget = max_bytes - n * views * 4 * 1024  # leave room for the logits
    cached_stages, live = [], []
    for stage in sorted(stages, key=lambda s: sizes[s]):
        if sizes[stage] <= budget:
            cached_stages.append(stage)
            budget -= sizes[stage]
        else:
            live.append(stage)
    key = cache_key(teacher_key, augmentation, views, cached_stages)
    directory = teacher_dir / f"{OUTPUTS_PREFIX}{key}"
    meta = _valid_meta(directory, log)
    if meta is None:
        _compute(model, train_x, directory, view_params, augmentation, views, cached_stages, batch_size, log)
        meta = _valid_meta(directory, log)
        if meta is None:
            raise RuntimeError(f"teacher cache {directory} failed its checksum right after it was written")
    logits = np.load(directory / "logits.npy", mmap_mode="r")
    features = {s: np.load(directory / f"stage{s}.npy", mmap_mode="r") for s in meta["stages"]}
    stored_views = torch.from_numpy(np.load(directory / "views.npy")) if augmentation is not None else None
    if live:
        log(f"teacher cache: stage(s) {live} exceed the {max_bytes / 1e9:.1f} GB cap and are computed live")
    return TeacherOutputs(model, stored_views, augmentation, logits, features, tuple(sorted(live)), directory)


def _arrays(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.npy"))


def _valid_meta(directory: Path, log: Callable[[str], None]) -> dict | None:
    """The cache's metadata when every array matches its stored checksum; None when it must be built."""
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        sums = meta["sha256"]
        ok = sorted(sums) == [p.name for p in _arrays(directory)] and all(
            file_sha256(directory / name) == digest for name, digest in sums.items()
        )
    except (ValueError, KeyError, TypeError, OSError, UnicodeDecodeError):
        ok = False
    if ok:
        return meta
    log(f"teacher cache {directory} is damaged (a file fails its checksum or is missing); computing it again")
    return None


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk is then an error here, not a SIGBUS later."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise CacheSpaceError(
            errno.ENOSPC,
            f"the teacher-output cache needs {needed / 1e9:.2f} GB in {directory}, which has "
            f"{free / 1e9:.2f} GB free: free some space or lower teacher_cache_max_gb (stages over it are "
            "computed live)",
        )


@contextlib.contextmanager
def _written_whole(directory: Path) -> Iterator[Path]:
    """A ``.partial`` folder to fill, renamed to ``directory`` when the block succeeds and removed when
    it fails (half a cache never takes the disk, nor is ever read)."""
    partial = directory.with_name(directory.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    partial.rename(directory)


@torch.no_grad()
def _compute(
    model: nn.Module,
    train_x: torch.Tensor | StreamedImages,
    directory: Path,
    view_params: torch.Tensor | None,
    augmentation: CropFlip | None,
    views: int,
    stages: Sequence[int],
    batch_size: int,
    log: Callable[[str], None],
) -> None:
    with _written_whole(directory) as partial:
        n = len(train_x)
        model.eval()
        log(
            f"teacher cache: computing outputs for {n} images × {views} view(s), stages {list(stages) or 'none'}"
        )
        logits = None
        features: dict[int, np.ndarray] = {}
        for v in range(views):
            progress = tqdm(
                batches(train_x, batch_size),
                total=-(-n // batch_size),
                desc=f"teacher cache, view {v + 1}/{views}",
                unit="batch",
                leave=False,
                disable=None,  # a bar on a terminal only
            )
            for idx, x in progress:
                start = int(idx[0])
                if augmentation is not None and view_params is not None:
                    x = augmentation.apply(x, view_params[v, idx])
                x = x.to(device_of(model))
                out, feats = forward_with_features(model, x, sorted(stages))
                if logits is None:
                    shapes = {"logits.npy": (np.float32, (views, n, out.shape[1]))}
                    shapes.update(
                        {
                            f"stage{s}.npy": (np.float16, (views, n, *f.shape[1:]))
                            for s, f in zip(sorted(stages), feats, strict=True)
                        }
                    )
                    _check_space(
                        partial,
                        sum(np.dtype(d).itemsize * int(np.prod(shape)) for d, shape in shapes.values()),
                    )
                    arrays = {}
                    for name, (dtype, shape) in shapes.items():
                        arrays[name] = np.lib.format.open_memmap(
                            partial / name, mode="w+", dtype=dtype, shape=shape
                        )
                        _reserve(partial / name)
                    logits = arrays["logits.npy"]
                    features = {s: arrays[f"stage{s}.npy"] for s in sorted(stages)}
                logits[v, start : start + len(idx)] = out.float().cpu().numpy()
                for s, f in zip(sorted(stages), feats, strict=True):
                    features[s][v, start : start + len(idx)] = f.float().cpu().numpy().astype(np.float16)
        for array in [logits, *features.values()]:
            array.flush()
        del logits, features
        if view_params is not None:
            np.save(partial / "views.npy", view_params.numpy())
        sums = {}
        for path in _arrays(partial):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            sums[path.name] = file_sha256(path)
        meta = {"views": views, "stages": sorted(stages), "images": n, "sha256": sums}
        (partial / "meta.json").write_text(json.dumps(meta))
