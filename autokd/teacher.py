"""The teacher: trained once per content hash (or loaded from a checkpoint) and its outputs cached.

Everything lives under ``<runs>/_teachers/<key>/``, where ``key`` hashes the teacher section and the
data it sees, so any later study with the same teacher and data reuses it:

- ``teacher.pt``: the state dict (loaded with ``torch.load(weights_only=True)``),
- ``metrics.json``: accuracy on val and test, parameter count, FP32 weight bytes, training time,
- ``outputs-<cache key>/``: the teacher-output cache (see :mod:`autokd.teacher_cache`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from tqdm import tqdm

from autokd.augment import CropFlip, WithErasing
from autokd.config import Study
from autokd.data import DataSplits
from autokd.quantize import fp32_weight_bytes
from autokd.storage import file_sha256, write_atomically
from autokd.students import count_parameters
from autokd.teacher_cache import OUTPUTS_PREFIX
from autokd.train import TrainSettings, evaluate, train

TEACHERS_DIR = "_teachers"


class TeacherFileError(Exception):
    """A stored teacher file (weights, metrics or a checkpoint) cannot be used; one line says which."""


@dataclass
class Teacher:
    """A ready teacher: the FP32 model and its metrics."""

    key: str
    directory: Path
    model: nn.Module
    test_accuracy: float
    val_accuracy: float
    parameters: int
    weight_bytes: int
    model_name: str
    weights_sha256: str = ""

    @property
    def identity(self) -> str:
        """The teacher's settings and its exact weights: what its cached outputs are bound to."""
        return f"{self.key}:{self.weights_sha256}"


@contextlib.contextmanager
def teacher_lock(directory: Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the teacher folder's lock: one process at a time trains, checks or caches this teacher.

    Two searches started together on one teacher therefore never mix two teachers' weights and
    outputs: the second waits, then reuses what the first stored. Holding the lock, stale
    ``.partial`` files of processes that died while writing are removed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"teacher {directory.name}: another autokd process is preparing it; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in directory.glob("*.partial*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


# The teacher's training state after its last finished epoch: an interrupted training resumes from it.
TRAINING_CHECKPOINT = "training-checkpoint.pt"


def augmentation_of(study: Study) -> CropFlip | None:
    """The study's augmentation, or None when it is off."""
    a = study.augmentation
    return CropFlip(padding=a.padding, hflip=a.hflip) if a.enabled else None


def _teacher_augmentation(study: Study) -> CropFlip | WithErasing | None:
    """What the teacher trains on: the study's augmentation, with random erasing where the teacher asks."""
    views = augmentation_of(study)
    p = study.teacher.random_erasing
    if p == 0:
        return views
    return WithErasing(views if views is not None else CropFlip(padding=0, hflip=False), p)


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _hub_unreachable(model_name: str) -> str | None:
    """Why timm's pretrained weights for ``model_name`` cannot be had here, found in a moment (the hub
    client itself retries for most of a minute offline); None when they may be (cached, or online)."""
    import huggingface_hub

    hub_id = getattr(timm.models.get_pretrained_cfg(model_name), "hf_hub_id", None)
    if not hub_id:
        return None  # weights from a plain URL: let timm say what happens
    repo = hub_id.split("/", 2)
    repo_id = "/".join(repo[:2])
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if isinstance(huggingface_hub.try_to_load_from_cache(repo_id, filename), str):
            return None
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return None  # the proxy may reach it when this machine cannot resolve it
    host = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"they are not in the Hugging Face cache and {host} cannot be reached ({exc.strerror})"
    return None


def _from_factory(t, data: DataSplits) -> nn.Module:
    import inspect

    from autokd.registry import load_callable

    factory = load_callable(t.factory, "teacher.factory", TeacherFileError)
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepted = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kwargs = {
        k: v
        for k, v in (("num_classes", data.num_classes), ("in_chans", data.in_chans))
        if takes_all or k in accepted
    }
    model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TeacherFileError(
            f"field 'teacher.factory' = {t.factory!r}: returned {type(model).__name__}, not a torch nn.Module"
        )
    return model


def with_features(study: Study, model: nn.Module, data: DataSplits) -> nn.Module:
    """A factory teacher with ``teacher.feature_nodes`` given timm's feature interface (NodeFeatures)."""
    nodes = study.teacher.feature_nodes
    if not nodes:
        return model
    from autokd.features import NodeFeatures

    try:
        return NodeFeatures(model, nodes, data.train_x[:2])
    except ValueError as exc:
        raise TeacherFileError(f"field 'teacher.feature_nodes': {exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch.fx cannot trace every model
        raise TeacherFileError(
            f"field 'teacher.feature_nodes': torchvision's feature extractor cannot trace the model "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None


def _build(study: Study, data: DataSplits) -> nn.Module:
    t = study.teacher
    if t.factory:
        return _from_factory(t, data)
    if t.pretrained and (why := _hub_unreachable(t.model)):
        raise TeacherFileError(
            f"field 'teacher.pretrained' = true: timm's pretrained weights of '{t.model}' cannot be had: {why}; "
            "run once with internet access (they are cached), or set teacher.checkpoint to a local file, "
            "or pretrained: false"
        )
    try:
        return timm.create_model(
            t.model, pretrained=t.pretrained, num_classes=data.num_classes, in_chans=data.in_chans
        )
    except Exception as exc:
        if not t.pretrained:
            raise
        raise TeacherFileError(
            f"field 'teacher.pretrained' = true: timm could not get the pretrained weights of '{t.model}' "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); they download once "
            "from the Hugging Face Hub into its cache: run once with internet access, or set "
            "teacher.checkpoint to a local file, or pretrained: false"
        ) from None


# Where training frameworks put the weights inside a checkpoint: {"state_dict": ...} (Lightning and
# most scripts), {"model": ...} (timm's and torchvision's training scripts), {"model_state_dict": ...}.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
# Prefixes that wrappers add to every key: DDP/DataParallel, torch.compile, a Lightning module's attribute.
KEY_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a state dict saved with ``torch.save`` (loaded with
    ``weights_only=True``), or a ``.safetensors`` file; a wrapper dict (:data:`WRAPPER_KEYS`) is
    unwrapped. Raises FileNotFoundError, or ValueError for anything that is not weights."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, weights_only=True, map_location="cpu")
    # A wrapper holds no tensors itself: {"state_dict": {...}, "epoch": 3, "optimizer_states": [...]}.
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with the prefixes wrappers add (:data:`KEY_PREFIXES`) removed where the model's keys
    have none, so that its keys are the model's; raise ValueError naming the mismatch otherwise."""
    expected = model.state_dict()
    for prefix in KEY_PREFIXES:
        if set(state) != set(expected) and all(k.startswith(prefix) for k in state):
            state = dict(state)
            torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, prefix)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:

        def first(keys: list[str]) -> str:
            if not keys:
                return "none"
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        raise ValueError(
            f"its keys are not the model's (missing: {first(missing)}; unexpected: {first(unexpected)})"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"{key} has shape {tuple(state[key].shape)} in the file and {tuple(tensor.shape)} in the model"
            )
    return state


def classifier_mismatch(model: nn.Module, state: dict[str, torch.Tensor], num_classes: int) -> str | None:
    """The class-count mismatch between a checkpoint and the data, said plainly, if that is the problem."""
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if not isinstance(classifier, nn.Linear):
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    key = names.get(id(classifier.weight))
    weight = state.get(key) if key else None
    if weight is None:
        weight = next((state[k] for k in state if k.endswith(key)), None) if key else None
    if weight is not None and weight.ndim == 2 and weight.shape[0] != num_classes:
        return f"its classifier has {weight.shape[0]} classes and the data have {num_classes}"
    return None


def _load_weights(
    model: nn.Module, path: Path, what: str, remedy: str, num_classes: int | None = None
) -> None:
    try:
        state = read_state_dict(path)
    except FileNotFoundError:
        raise TeacherFileError(f"{what} {path} does not exist; {remedy}") from None
    except Exception as exc:  # noqa: BLE001 - truncated, garbage or a pickle that is not plain weights
        raise TeacherFileError(
            f"{what} {path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); {remedy}"
        ) from None
    try:
        model.load_state_dict(fit_state_dict(model, state))
    except Exception as exc:  # noqa: BLE001 - a state dict of another architecture
        why = (num_classes is not None and classifier_mismatch(model, state, num_classes)) or str(
            exc
        ).splitlines()[0][:200]
        raise TeacherFileError(f"{what} {path} does not fit the teacher model: {why}; {remedy}") from None


def _checkpoint_remedy(t) -> str:
    if t.factory:
        return f"point teacher.checkpoint at a state dict of the model {t.factory} returns, for this data"
    return f"point teacher.checkpoint at a state dict of timm's '{t.model}' for this data"


def check_checkpoint(study: Study, data: DataSplits) -> None:
    """Refuse a teacher checkpoint that is missing or does not fit the teacher model and the data, in
    one line, before anything is written (the teacher's folder included)."""
    t = study.teacher
    if not t.checkpoint:
        return
    with torch.random.fork_rng(devices=[]):
        model = _build(study, data)
    _load_weights(model, Path(t.checkpoint), "teacher.checkpoint", _checkpoint_remedy(t), data.num_classes)


def _read_metrics(path: Path, remedy: str) -> dict:
    try:
        metrics = json.loads(path.read_text())
        float(metrics["test_accuracy"]), float(metrics["val_accuracy"])
        int(metrics["parameters"]), int(metrics["weight_bytes"])
        return metrics
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise TeacherFileError(
            f"teacher metrics {path} are corrupt ({type(exc).__name__}); {remedy}"
        ) from None


def teacher_directory(study: Study, runs_root: Path, log: Callable[[str], None] = print) -> Path:
    """The study's teacher folder, ``<runs>/_teachers/<key>``.

    A folder stored under the key autokd 0.3 gave the teacher (one that held the absolute path of its
    factory file or checkpoint) is moved there first, so the teacher is not trained again; its
    output caches, keyed by the old key, can never be read again and are deleted.
    """
    directory = runs_root / TEACHERS_DIR / study.teacher_key()
    legacy = study.legacy_teacher_key()
    old = runs_root / TEACHERS_DIR / legacy if legacy else None
    if old is not None and old.is_dir() and not directory.exists():
        with contextlib.suppress(FileNotFoundError):  # another worker moved it first
            old.rename(directory)
        for stale in directory.glob(f"{OUTPUTS_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        metrics = directory / "metrics.json"
        if metrics.is_file():  # the key it records, for whoever reads it
            write_atomically(
                json.dumps({**json.loads(metrics.read_text()), "key": directory.name}, indent=2), metrics
            )
        log(f"teacher {study.teacher.name}: moved {old} to {directory} (its key no longer holds file paths)")
    return directory


def is_study_teacher(stored_key: str | None, study: Study, key: str) -> bool:
    """Whether ``stored_key``, the teacher key a run recorded, names the teacher ``key`` of ``study``
    (under its current key, or the one autokd 0.3 gave it)."""
    return stored_key is not None and stored_key in (key, study.legacy_teacher_key())


def prepare_teacher(
    study: Study, data: DataSplits, runs_root: Path, log: Callable[[str], None] = print, device: str = "cpu"
) -> Teacher:
    """Return the study's teacher, training it (or loading its checkpoint) only when not cached yet.

    Call it holding :func:`teacher_lock` on the teacher's folder when other processes may start on the
    same teacher. Training is seeded with the study's seed, so the same settings give the same teacher.
    """
    key = study.teacher_key()
    directory = teacher_directory(study, runs_root, log)
    weights, metrics_path = directory / "teacher.pt", directory / "metrics.json"
    remedy = f"delete the folder {directory} to train (or load) the teacher again"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(study.seed)  # the teacher's initial weights (and dropout) are the study's
        model = _build(study, data)
        if weights.exists() and metrics_path.exists():
            metrics = _read_metrics(metrics_path, remedy)
            digest = file_sha256(weights)
            # metrics.json of teachers stored before checksums: the file as it is now
            if metrics.setdefault("weights_sha256", digest) != digest:
                raise TeacherFileError(
                    f"teacher weights {weights} do not match the checksum stored in {metrics_path.name} "
                    f"(changed or corrupted); {remedy}"
                )
            _load_weights(model, weights, "teacher weights", remedy)
            log(
                f"teacher {study.teacher.name} {key}: reused from {directory} (test top-1 {metrics['test_accuracy']:.4f})"
            )
        else:
            directory.mkdir(parents=True, exist_ok=True)
            metrics = _train_or_load(study, data, model, key, log, device, directory)
            write_atomically(model.state_dict(), weights)
            metrics["weights_sha256"] = file_sha256(weights)
            write_atomically(json.dumps(metrics, indent=2), metrics_path)
            (directory / TRAINING_CHECKPOINT).unlink(missing_ok=True)  # the weights are stored now
            log(f"teacher ready: test top-1 {metrics['test_accuracy']:.4f} ({metrics['seconds']:.0f} s)")
    model = with_features(study, model.to(device), data).eval()
    return Teacher(
        key=key,
        directory=directory,
        model=model,
        test_accuracy=metrics["test_accuracy"],
        val_accuracy=metrics["val_accuracy"],
        parameters=metrics["parameters"],
        weight_bytes=metrics["weight_bytes"],
        model_name=study.teacher.name,
        weights_sha256=metrics["weights_sha256"],
    )


def _train_or_load(
    study: Study,
    data: DataSplits,
    model: nn.Module,
    key: str,
    log: Callable[[str], None],
    device: str = "cpu",
    directory: Path | None = None,
) -> dict:
    start = time.perf_counter()
    t = study.teacher
    if t.checkpoint:
        _load_weights(
            model, Path(t.checkpoint), "teacher.checkpoint", _checkpoint_remedy(t), data.num_classes
        )
        log(f"teacher {t.name}: loaded {t.checkpoint}")
    else:
        checkpoint = directory / TRAINING_CHECKPOINT if directory is not None else None
        if checkpoint is not None and checkpoint.exists():
            done = torch.load(checkpoint, weights_only=False)["epoch"]
            log(f"teacher {t.name}: resuming its training after epoch {done}/{t.epochs} ({checkpoint})")
        else:
            log(
                f"teacher {t.name}: training {t.epochs} epochs on {len(data.train_x)} images (once; cached as {key})"
            )
        bar = tqdm(total=t.epochs, desc=f"teacher {t.name}", unit="epoch", leave=False, disable=None)

        def report(epoch: int, m: nn.Module) -> None:
            accuracy = evaluate(m, data.val_x, data.val_y)
            bar.update(1)
            bar.set_postfix(val_top1=f"{accuracy:.4f}")
            log(f"  teacher epoch {epoch}/{t.epochs}: val top-1 {accuracy:.4f}")
            m.train()

        train(
            model,
            data.train_x,
            data.train_y,
            TrainSettings(
                epochs=t.epochs,
                batch_size=t.batch_size,
                lr=t.lr,
                weight_decay=t.weight_decay,
                seed=study.seed,
                device=device,
                amp=study.training.amp,
                cpu_bf16=study.training.cpu_bf16,
            ),
            augmentation=_teacher_augmentation(study),
            on_epoch=report,
            checkpoint=checkpoint,
        )
        bar.close()
    return {
        "model": t.name,
        "key": key,
        "val_accuracy": evaluate(model, data.val_x, data.val_y),
        "test_accuracy": evaluate(model, data.test_x, data.test_y),
        "parameters": count_parameters(model),
        "weight_bytes": fp32_weight_bytes(model),
        "seconds": time.perf_counter() - start,
        "source": t.checkpoint or "trained",
        "teacher_section": t.model_dump(),
    }
