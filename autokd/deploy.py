"""A trial's INT8 student as a deployable artifact with a model card; loading and running it again.

``export_trial`` rebuilds the student from what the study stored (the trial's config and its FP32
weights in ``trials/<number>/student.pt``), quantizes it with the same backend and the same calibration
batches as the trial did, writes the artifact (``model.onnx`` for ONNX Runtime, ``model.pt2`` for the
torch-native backend) and ``model_card.json``, then loads the written artifact back, runs it on the
test split and records its accuracy next to the one the study recorded.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import pickle
import platform
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from autokd.config import parse_study
from autokd.measure import cpu_model
from autokd.quantize import (
    BACKENDS,
    DeployedModel,
    QuantizationError,
    artifact_formats,
    backend_for_format,
    backend_for_suffix,
    calibration_batches,
    top1,
)
from autokd.record import StudyRecord, load_records, run_epochs
from autokd.registry import load_extension_files
from autokd.resources import load_study_data
from autokd.storage import confirmation_dir, trial_dir
from autokd.students import count_parameters
from autokd.trial import STUDENT_WEIGHTS, TrialConfig, new_student

MODEL_CARD = "model_card.json"
EXPORTS_DIR = "exports"
RECORDED_METRICS = (
    "retention",
    "retention_fp32",
    "compression",
    "parameter_ratio",
    "weight_bytes",
    "artifact_bytes",
    "int8_accuracy",
    "fp32_accuracy",
    "int8_fp32_agreement",
    "latency_ms",
    "latency_iqr_ms",
    "latency_fp32_ms",
    "int8_speedup_vs_fp32",
    "latency",
    "latency_fp32",
)


class ExportError(RuntimeError):
    """The trial cannot be exported or the artifact cannot be loaded; the message says why."""


@dataclass(frozen=True)
class Export:
    """What an export wrote: its folder, the artifact, the model card, and the artifact's test accuracy."""

    directory: Path
    artifact: Path
    card: dict
    accuracy: float


def _records(run_dir: Path) -> StudyRecord:
    try:
        return load_records(run_dir)
    except (FileNotFoundError, LookupError) as exc:
        raise ExportError(str(exc)) from None


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("autokd", "torch", "torchao", "onnxruntime", "onnx", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


_OTHER_TRIAL = "export another completed trial (the report lists them), or search again to train a new one"


def _student_weights(weights: Path, number: int) -> dict:
    """The FP32 state dict a trial saved, or a one-line error when the file is damaged."""
    try:
        return torch.load(weights, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ExportError(
            f"{weights}: trial {number}'s student weights are unreadable ({type(exc).__name__}); {_OTHER_TRIAL}"
        ) from None


def _confirmation_run(records, number: int, setting: str, epochs: int | None, seed: int | None) -> dict:
    """The one stored ``autokd confirm`` run of trial ``number`` with ``setting`` that ``epochs`` and
    ``seed`` pick; an :class:`ExportError` naming the stored runs when none or several match."""
    from autokd.confirmation import SETTINGS, setting_runs

    if setting not in SETTINGS:
        raise ExportError(f"--setting {setting}: allowed: {', '.join(SETTINGS)}")
    search_epochs = TrialConfig.from_dict(records.trial(number).config).epochs
    runs = [
        r
        for r in setting_runs(records, number, setting)
        if (epochs is None or run_epochs(r, search_epochs) == epochs) and (seed is None or r["seed"] == seed)
    ]
    if len(runs) == 1:
        return runs[0]
    stored = ", ".join(
        f"--epochs {run_epochs(r, search_epochs)} --seed {r['seed']}"
        for r in setting_runs(records, number, setting)
    )
    if not runs:
        raise ExportError(
            f"trial {number} has no '{setting}' confirmation run"
            + (f" at {epochs} epochs" if epochs is not None else "")
            + (f" with seed {seed}" if seed is not None else "")
            + (f"; stored: {stored}" if stored else "; run autokd confirm first")
        )
    raise ExportError(f"trial {number} has {len(runs)} '{setting}' confirmation runs: choose one of {stored}")


def export_trial(
    run_dir: Path,
    number: int,
    *,
    artifact_format: str | None = None,
    out: Path | None = None,
    setting: str | None = None,
    epochs: int | None = None,
    seed: int | None = None,
) -> Export:
    """Export completed trial ``number`` of the study in ``run_dir`` (see the module docstring); with
    ``setting`` (``searched`` or a baseline's name), the ``autokd confirm`` run of that setting that
    ``epochs`` and ``seed`` pick (needed where it has several) instead of the search's own run."""
    run_dir = Path(run_dir)
    records = _records(run_dir)
    try:
        record = records.trial(number)
    except KeyError:
        raise ExportError(
            f"study '{records.name}' has no trial {number} (it has 0-{len(records.trials) - 1})"
        ) from None
    if not record.completed or record.config is None:
        raise ExportError(f"trial {number} is {record.state}, not COMPLETE: there is nothing to export")
    config = TrialConfig.from_dict(record.config)
    confirmation = None
    if setting is None:
        if epochs is not None or seed is not None:
            raise ExportError("--epochs and --seed choose an autokd confirm run: give --setting too")
        weights = trial_dir(run_dir, number) / STUDENT_WEIGHTS
        what = f"trial {number}"
    else:
        from autokd.confirmation import setting_config

        confirmation = _confirmation_run(records, number, setting, epochs, seed)
        config = setting_config(
            config, setting, run_epochs(confirmation, config.epochs), confirmation["seed"]
        )
        weights = confirmation_dir(run_dir, number, setting, config.epochs, config.seed) / STUDENT_WEIGHTS
        what = f"trial {number}'s '{setting}' run at {config.epochs} epochs, seed {config.seed},"
    if not weights.exists():
        raise ExportError(f"{what} kept no student weights ({weights} not found)")
    state = _student_weights(weights, number)  # before any data is loaded: a damaged file fails at once
    load_extension_files(records.extensions)  # a family, dataset or backend may come from them
    study = parse_study(records.settings, f"{run_dir} (stored study)")
    backend = BACKENDS.get(config.quantization_backend)
    if artifact_format is not None:
        if artifact_format not in artifact_formats():
            raise ExportError(
                f"--format {artifact_format}: allowed: {', '.join(artifact_formats())} (the registered backends' formats)"
            )
        backend = backend_for_format(artifact_format)
    if backend.artifact_format is None:
        raise ExportError(f"backend '{backend.name}' has no artifact format")

    data = load_study_data(study)
    student = new_student(config, data)
    try:
        student.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # keys or shapes of another model
        raise ExportError(
            f"{weights}: not the weights of trial {number}'s student ({type(exc).__name__}); {_OTHER_TRIAL}"
        ) from None
    student.eval()
    calibration = calibration_batches(data.train_x, config.batch_size, config.calibration_batches)
    int8 = backend.quantize(student, calibration)

    name = f"trial-{number}" if setting is None else f"trial-{number}-{weights.parent.name}"
    directory = Path(out) if out is not None else run_dir / EXPORTS_DIR / name
    artifact = int8.save(directory / "model")
    deployed = load(artifact, trust=True)  # the file this process has just written
    accuracy = top1(deployed, data.test_x, data.test_y)
    attrs = record.attrs
    card = {
        "artifact": artifact.name,
        "format": backend.artifact_format,
        "backend": backend.name,
        "runtime": deployed.runtime,
        "runtime_version": deployed.runtime_version,
        "same_backend_as_study": backend.name == config.quantization_backend,
        "input": {
            "shape": ["batch", data.in_chans, data.image_size, data.image_size],
            "dtype": "float32",
            "preprocessing": "pixels scaled to [0, 1], resized to the input's height and width, then "
            "(x - mean) / std per channel",
            "mean": list(data.mean),
            "std": list(data.std),
        },
        "output": {"logits": data.num_classes, "classes": list(data.classes)},
        "study": records.name,
        "trial": number,
        "student": {
            "family": config.family,
            "stem": config.stem,
            "width": config.width,
            "depth": config.depth,
            "parameters": count_parameters(student),
            "weight_bytes_int8": int8.weight_bytes(),
            "artifact_bytes": artifact.stat().st_size,
        },
        "settings": attrs.get("config", {}) if confirmation is None else dataclasses.asdict(config),
        "confirmation": None
        if confirmation is None
        else {"setting": setting, "epochs": config.epochs, "seed": config.seed},
        "teacher": dict(records.teacher),
        "data": {
            **study.data.model_dump(),
            "seed": study.seed,
            "splits": records.data,
        },
        "metrics": {
            "test_accuracy_of_artifact": accuracy,
            "recorded_by_study": {key: attrs.get(key) for key in RECORDED_METRICS if key in attrs}
            if confirmation is None
            else {key: confirmation[key] for key in RECORDED_METRICS if key in confirmation},
        },
        "extensions": records.extensions,  # trusted code the data or student may need (see docs/methods.md)
        "versions": _versions(),
        "cpu": cpu_model(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (directory / MODEL_CARD).write_text(json.dumps(card, indent=2))
    return Export(directory=directory, artifact=artifact, card=card, accuracy=accuracy)


# Artifact formats whose loader unpickles (runs code from the file): loaded only when trusted.
CODE_RUNNING_SUFFIXES = (".pt2",)


def _read_card(card_path: Path) -> dict:
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(
            f"{card_path} is unreadable ({type(exc).__name__}); export the trial again"
        ) from None
    if not isinstance(card, dict) or not isinstance(card.get("artifact"), str):
        raise ExportError(f"{card_path} names no artifact; export the trial again")
    return card


def _artifact_in(folder: Path, name: str) -> Path:
    """The artifact a model card names, which must be a plain file inside the export folder."""
    path = folder / name
    inside = path.resolve().parent == folder.resolve() and not path.is_symlink()
    if Path(name).name != name or name in ("", ".", "..") or not inside:
        raise ExportError(
            f"{folder / MODEL_CARD}: artifact {name!r} is not a file inside the export folder; refusing to load it"
        )
    return path


def load(path: str | Path, *, trust: bool = False) -> DeployedModel:
    """An exported INT8 student, ready to run: ``load(path)(images) -> logits``.

    ``path`` is an export folder (holding ``model_card.json``) or the artifact file itself
    (``.onnx`` runs on ONNX Runtime, ``.pt2`` on torch with inductor). Loading a ``.pt2`` file
    unpickles it, which can run code written into it: it is refused unless ``trust=True`` (the
    command line's ``--trust-pt2``), for files you exported yourself. ONNX files hold no code.
    """
    path = Path(path)
    card: dict = {}
    if path.is_dir():
        card_path = path / MODEL_CARD
        if not card_path.exists():
            raise ExportError(f"{path} is not an export folder ({MODEL_CARD} not found)")
        card = _read_card(card_path)
        path = _artifact_in(path, card["artifact"])
    if not path.exists():
        raise ExportError(f"{path} not found")
    if path.suffix in CODE_RUNNING_SUFFIXES and not trust:
        raise ExportError(
            f"{path}: loading a {path.suffix} file runs code stored in it; load it only if you made it, with "
            "autokd.load(path, trust=True) or `autokd predict --trust-pt2`"
        )
    try:
        backend = backend_for_suffix(path.suffix)
    except QuantizationError as exc:
        raise ExportError(f"{path}: {exc}") from None
    try:
        return backend.load(path)
    except QuantizationError as exc:  # a truncated or garbled artifact
        trial = card.get("trial")
        command = f"autokd export RUN_DIR --trial {trial if isinstance(trial, int) else 'N'}"
        of_study = f" of study {card['study']!r}" if isinstance(card.get("study"), str) else ""
        raise ExportError(
            f"{path}: {exc}; the file is damaged: export the trial{of_study} again with `{command}`"
        ) from None


def evaluate_export(directory: str | Path, split: str = "test", *, trust: bool = False) -> tuple[float, dict]:
    """Top-1 accuracy of an exported student on its study's ``split`` (``test`` or ``val``), with its card."""
    directory = Path(directory)
    card_path = directory / MODEL_CARD
    if not card_path.exists():
        raise ExportError(f"{directory} is not an export folder ({MODEL_CARD} not found)")
    card = _read_card(card_path)
    load_extension_files(card.get("extensions", []))
    model = load(directory, trust=trust)  # before the data: a damaged artifact fails at once
    data_settings = {k: v for k, v in card["data"].items() if k not in ("seed", "splits")}
    study = parse_study({"name": card["study"], "seed": card["data"]["seed"], "data": data_settings})
    data = load_study_data(study)
    images, labels = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    return top1(model, images, labels), card


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def image_files(paths) -> list[Path]:
    """Image files among ``paths``: files as given, folders searched recursively (sorted)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not inside:
                raise ExportError(f"{path}: no image files in this folder ({', '.join(IMAGE_SUFFIXES)})")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise ExportError(f"{path}: no such file or folder")
    return found


def preprocess(images, card: dict) -> torch.Tensor:
    """What the exported student takes, from ``images`` as a user has them, by the card's ``input``.

    ``images`` are image file paths, or an array/tensor of pixels in [0, 1] (floats) or 0-255 (uint8)
    shaped (N, C, H, W) or (N, H, W); each is converted to the input's channels and size and
    normalised by the card's per-channel mean and std.
    """
    import numpy as np
    from torchvision.transforms import v2

    from autokd.data.sources import image_transform

    spec = card["input"]
    _, channels, height, _ = spec["shape"]
    if "mean" not in spec:
        raise ExportError(
            "the model card states no mean and std (exported by an older autokd): export the trial again"
        )
    normalise = v2.Normalize(spec["mean"], spec["std"])
    if isinstance(images, np.ndarray | torch.Tensor):
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4:
            raise ExportError(f"images of shape {tuple(x.shape)}: give (N, C, H, W) or (N, H, W) pixels")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] != channels:
            x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, channels, -1, -1)
        x = v2.Resize((height, height), antialias=True)(x)
        return normalise(x).contiguous()
    from PIL import Image, UnidentifiedImageError

    transform = image_transform(height, channels)
    batch = []
    for path in images:
        try:
            with Image.open(path) as image:
                batch.append(transform(image.convert("RGB") if image.mode not in ("L", "RGB") else image))
        except (UnidentifiedImageError, OSError) as exc:
            raise ExportError(f"{path}: not an image autokd can read ({type(exc).__name__})") from None
    return normalise(torch.stack(batch)).contiguous()


def predict_images(directory: str | Path, images, *, trust: bool = False) -> list[dict]:
    """Class predictions of an exported student for ``images`` (paths, folders, or pixel arrays):
    one dict per image with ``index``, ``class`` (its name where the card has class names) and
    ``probability``, plus ``path`` for files."""
    directory = Path(directory)
    card_path = directory / MODEL_CARD
    if not card_path.exists():
        raise ExportError(f"{directory} is not an export folder ({MODEL_CARD} not found)")
    card = _read_card(card_path)
    model = load(directory, trust=trust)
    paths = image_files(images) if isinstance(images, list | tuple) else None
    x = preprocess(paths if paths is not None else images, card)
    probabilities = torch.softmax(torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]), dim=1)
    classes = card["output"].get("classes") or []
    rows = []
    for i, (p, index) in enumerate(zip(*probabilities.max(dim=1), strict=True)):
        row = {
            "index": int(index),
            "class": classes[int(index)] if classes else str(int(index)),
            "probability": float(p),
        }
        if paths is not None:
            row = {"path": str(paths[i]), **row}
        rows.append(row)
    return rows
