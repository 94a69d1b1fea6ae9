"""The study file: a YAML document validated by pydantic, with one-line errors a person can act on."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

Range = tuple[float, float]
MAX_MULTIPLIER = 4.0  # width/depth multipliers beyond this build students larger than any teacher here
MAX_STUDY_BYTES = 1_000_000  # a study file is a page of settings, not data
# A study's name names its run and report folders, so it can never climb out of them.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
STUDY_NAME_RULE = "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"


class StudyFileError(ValueError):
    """The study file is missing, not YAML, or not a valid study; the message is one line."""


class _Section(BaseModel):
    # No NaN or infinity anywhere, ranges and method_params included: a non-finite bound would pass
    # every comparison-based check (NaN compares false) and reach the sampler or the objectives.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _check_range(value: Range, *, positive: bool = True) -> Range:
    low, high = value
    if low > high:
        raise ValueError(f"low {low} is above high {high}; write [low, high]")
    if positive and low <= 0:
        raise ValueError(f"values must be > 0, got low {low}")
    return value


# module:function or path/to/file.py:function (data.factory, teacher.factory)
FACTORY_SPEC = re.compile(r"[^:]+:[A-Za-z_][A-Za-z0-9_]*")
IMAGE_FOLDER = "image_folder"
FACTORY = "factory"
TORCHVISION_PREFIX = "torchvision:"


class DataSection(_Section):
    """Which dataset, how much of it, how it is split, resized and normalised.

    ``dataset`` is a built-in (``fashion_mnist``, ``digits``), one an extension registered,
    ``image_folder`` (``train_dir`` and optional ``val_dir``/``test_dir`` in torchvision's ImageFolder
    layout), ``torchvision:NAME`` (a torchvision dataset class such as ``torchvision:CIFAR10`` under
    ``data_dir``), or ``factory`` (``factory: module:function`` or ``path/to/file.py:function``
    returning torch Datasets). Relative paths in a study file are relative to the study file.
    Without a test split, a stratified ``test_fraction`` of the training data is held out.
    ``mean``/``std`` (one value per channel, the teacher's own preprocessing) replace the statistics
    otherwise computed from the training split; ``channels`` converts images to grey (1) or RGB (3).
    ``in_memory`` (``auto``): the images of ``image_folder``, ``torchvision:NAME`` and ``factory`` are
    held in memory when they take at most ``in_memory_max_gb`` as float32 at ``image_size``, and are
    otherwise streamed from disk by ``loader_workers`` DataLoader workers; ``true``/``false`` decide.
    """

    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    download: StrictBool = False
    train_dir: str | None = None
    val_dir: str | None = None
    test_dir: str | None = None
    factory: str | None = None
    train_subsample: Annotated[int, Strict(), Field(gt=0)] | None = None
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.1
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    image_size: Annotated[int, Strict(), Field(ge=8, le=512)] = 32
    channels: Literal[1, 3] | None = None
    mean: Annotated[list[float], Field(min_length=1, max_length=4)] | None = None
    std: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1, max_length=4)] | None = None
    in_memory: Literal["auto"] | StrictBool = "auto"
    in_memory_max_gb: Annotated[float, Field(gt=0)] = 4.0
    loader_workers: Annotated[int, Strict(), Field(ge=0, le=64)] | None = None

    @model_validator(mode="after")
    def _source_fields(self) -> DataSection:
        streamable = self.dataset in (IMAGE_FOLDER, FACTORY) or self.dataset.startswith(TORCHVISION_PREFIX)
        if self.in_memory is False and not streamable:
            raise ValueError(
                f"field 'data.in_memory' = false: dataset {self.dataset!r} is read into memory by its "
                "provider; image_folder, torchvision:NAME and factory can stream from disk"
            )
        folder_fields = [f for f in ("train_dir", "val_dir", "test_dir") if getattr(self, f) is not None]
        if self.dataset == IMAGE_FOLDER and self.train_dir is None:
            raise ValueError(
                "field 'data.train_dir' is required with dataset image_folder: the folder of class "
                "sub-folders (train_dir/<class>/<image>) to train on"
            )
        if self.dataset != IMAGE_FOLDER and folder_fields:
            raise ValueError(
                f"field 'data.{folder_fields[0]}' belongs to dataset image_folder, not {self.dataset!r}"
            )
        if self.dataset == FACTORY and not self.factory:
            raise ValueError(
                "field 'data.factory' is required with dataset factory: 'module:function' or "
                "'path/to/file.py:function' returning the train (and test) Datasets"
            )
        if self.factory is not None and self.dataset != FACTORY:
            raise ValueError(f"field 'data.factory' belongs to dataset factory, not {self.dataset!r}")
        if self.factory is not None and not FACTORY_SPEC.fullmatch(self.factory):
            raise ValueError(
                f"field 'data.factory' = {self.factory!r}: write 'module:function' or 'path/to/file.py:function'"
            )
        if self.dataset.startswith(TORCHVISION_PREFIX) and self.data_dir is None:
            raise ValueError(
                f"field 'data.data_dir' is required with dataset {self.dataset!r}: the root folder torchvision "
                "reads it from (or downloads it to, with download: true)"
            )
        if (self.mean is None) != (self.std is None):
            given = "mean" if self.mean is not None else "std"
            other = "std" if given == "mean" else "mean"
            raise ValueError(f"field 'data.{given}' needs 'data.{other}' too (one value per channel each)")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"field 'data.std' has {len(self.std)} value(s) and 'data.mean' {len(self.mean)}: give one per channel"
            )
        return self

    def resolved(self, base: Path) -> DataSection:
        """This section with its relative paths made absolute against ``base`` (the study file's folder)."""
        update = {}
        for field in ("data_dir", "train_dir", "val_dir", "test_dir"):
            value = getattr(self, field)
            if value is not None and not Path(value).expanduser().is_absolute():
                update[field] = str(base / value)
        if self.factory:
            update["factory"] = resolve_factory(self.factory, base)
        return self.model_copy(update=update)


def resolve_factory(spec: str, base: Path) -> str:
    """A factory spec with a relative ``file.py`` made absolute against ``base``; modules as they are."""
    target, function = spec.rsplit(":", 1)
    if target.endswith(".py") and not Path(target).expanduser().is_absolute():
        return f"{base / target}:{function}"
    return spec


class AugmentationSection(_Section):
    """Random crop (zero padding) and horizontal flip; with the cache on, ``views`` fixed views per image."""

    enabled: StrictBool = False
    views: Annotated[int, Strict(), Field(ge=1, le=64)] = 4
    padding: Annotated[int, Strict(), Field(ge=0, le=16)] = 2
    hflip: StrictBool = True


class TeacherSection(_Section):
    """The teacher: a timm model (or any ``nn.Module`` a ``factory`` returns) trained here with a budget,
    or loaded from a ``checkpoint`` file (a state dict, wrapped or not, or safetensors).

    ``factory``: ``module:function`` or ``path/to/file.py:function`` returning the model; it is called
    with ``num_classes`` and ``in_chans`` where it takes them. ``feature_nodes``: for such a teacher, the
    node names (torchvision's ``get_graph_node_names``) whose outputs feature-based methods read, from
    the first stage to the last; response methods need none.
    """

    model: str = "resnet18"
    factory: str | None = None
    feature_nodes: Annotated[list[str], Field(min_length=1)] | None = None
    checkpoint: str | None = None
    pretrained: StrictBool = False
    epochs: Annotated[int, Strict(), Field(ge=1, le=1000)] = 5
    batch_size: Annotated[int, Strict(), Field(ge=1, le=65536)] = 128
    lr: Annotated[float, Field(gt=0, le=1)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    # Share of the teacher's training images that torchvision's RandomErasing blanks a random
    # rectangle of (Zhong et al., AAAI 2020), on top of the study's crop and flip; 0 turns it off.
    # Only the teacher's own training sees it: the cached views students learn from stay crop and flip.
    random_erasing: Annotated[float, Field(ge=0, le=1)] = 0.0

    @model_validator(mode="after")
    def _factory_fields(self) -> TeacherSection:
        if self.factory is not None and not FACTORY_SPEC.fullmatch(self.factory):
            raise ValueError(
                f"field 'teacher.factory' = {self.factory!r}: write 'module:function' or 'path/to/file.py:function'"
            )
        if self.factory is not None and self.pretrained:
            raise ValueError(
                "field 'teacher.pretrained' = true: applies to timm models; a factory's model loads its own "
                "weights, or give teacher.checkpoint"
            )
        if self.feature_nodes is not None and self.factory is None:
            raise ValueError(
                "field 'teacher.feature_nodes' belongs to a teacher.factory model; timm teachers give their "
                "stages themselves"
            )
        return self

    @property
    def name(self) -> str:
        """What the teacher is called in logs and reports: the timm name, or the factory."""
        return self.factory or self.model


class SearchSpaceSection(_Section):
    """What each trial samples: the student and how it learns from the teacher.

    ``methods`` entries are a method name, ``none`` (task loss only) or names joined by ``+``. The loss
    is ``(1 - share) × task loss + share × Σ weight × method loss`` with the distillation share drawn
    from ``distillation_share`` (a number fixes it; 0.7 is the usual 70/30 guidance) and, for combined
    methods, weights drawn per method and normalised to sum to 1. Each method brings its own
    hyperparameters (temperature for the methods that soften logits); ``method_params`` narrows or
    fixes their ranges, e.g. ``{hinton_kd: {temperature: 4}}``.
    """

    # mobilenetv3 is left out: no INT8 backend quantizes it correctly (see autokd.quantize).
    families: Annotated[list[str], Field(min_length=1)] = ["resnet", "convnext"]
    width: Range = (0.125, 0.5)
    depth: Range = (0.5, 1.0)
    methods: Annotated[list[str], Field(min_length=1)] = ["hinton_kd"]
    distillation_share: Range = (0.7, 0.7)
    method_params: dict[str, dict[str, Range]] = {}
    # Input stem of families that have several: "auto" takes the small-image stem for images of at most
    # 64 pixels and the timm model's own (ImageNet) stem above that; "full" (ResNet) keeps the first
    # stage at full resolution; a family without the stem named gets the nearest it has (autokd.students).
    stem: Literal["auto", "imagenet", "small", "full"] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _moved_fields(cls, value: object) -> object:
        if isinstance(value, dict):
            if "temperature" in value:
                raise ValueError(
                    "field 'search_space.temperature' is gone: temperature is now a hyperparameter of the "
                    "methods that use it; narrow it with search_space.method_params, e.g. "
                    "{hinton_kd: {temperature: [1, 8]}}"
                )
            if "loss_weight" in value:
                raise ValueError(
                    "field 'search_space.loss_weight' is gone: the loss is (1 - share) x task loss + share x "
                    "distillation; give search_space.distillation_share, a number or [low, high] in [0, 1)"
                )
        return value

    @field_validator("distillation_share", mode="before")
    @classmethod
    def _share_number(cls, value: object) -> object:
        return [value, value] if isinstance(value, int | float) and not isinstance(value, bool) else value

    @field_validator("distillation_share")
    @classmethod
    def _share(cls, value: Range) -> Range:
        _check_range(value, positive=False)
        if value[0] < 0 or value[1] >= 1:
            raise ValueError("the distillation share must lie in [0, 1)")
        return value

    @field_validator("method_params", mode="before")
    @classmethod
    def _param_numbers(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        return {
            method: (
                {
                    key: [v, v] if isinstance(v, int | float) and not isinstance(v, bool) else v
                    for key, v in params.items()
                }
                if isinstance(params, dict)
                else params
            )
            for method, params in value.items()
        }

    @field_validator("width", "depth")
    @classmethod
    def _ranges(cls, value: Range) -> Range:
        _check_range(value)
        if value[1] > MAX_MULTIPLIER:
            raise ValueError(
                f"high {value[1]} is above {MAX_MULTIPLIER:g}, the largest width or depth multiplier"
            )
        return value


class TrainingSection(_Section):
    """How each student is trained."""

    batch_size: Annotated[int, Strict(), Field(ge=1, le=65536)] = 128
    lr: Annotated[float, Field(gt=0, le=1)] = 3e-3
    weight_decay: Annotated[float, Field(ge=0)] = 5e-4
    threads: Annotated[int, Strict(), Field(ge=1)] | None = None
    # Where teacher and students train (autokd.devices); the latency objective stays on the runtime.
    device: str = "auto"
    amp: StrictBool = True  # automatic mixed precision (bf16 where supported) on CUDA; no effect elsewhere
    # bfloat16 autocast with channels-last tensors when training on the CPU: measured 1.6-2.1x faster
    # steps on a CPU with native bf16 (AVX512-BF16 and AMX: Intel Sapphire Rapids and later, AMD Zen 4
    # and later; README, "Fast trials", benchmarks/cpu_bf16.py), slower on CPUs without it. QAT epochs,
    # quantization, evaluation and the latency objective stay FP32/INT8 as before.
    cpu_bf16: StrictBool = False

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from autokd.devices import DEVICE_PATTERN, DEVICE_RULE

        if not DEVICE_PATTERN.fullmatch(value):
            raise ValueError(f"use {DEVICE_RULE}")
        return value


class EarlyStoppingSection(_Section):
    """Stopping hopeless trials on validation top-1, never before epoch ``warmup_epochs + 1``.

    The median rule, the same on every backend: a trial whose validation top-1 at epoch k is below the
    median of the completed trials of the same student family at epoch k (once ``min_completed_trials``
    of that family exist) stops. A stopped trial is PRUNED and never on the front.
    """

    enabled: StrictBool = True
    warmup_epochs: Annotated[int, Strict(), Field(ge=1)] = 1
    min_completed_trials: Annotated[int, Strict(), Field(ge=1)] = 5

    @model_validator(mode="before")
    @classmethod
    def _no_asha(cls, value: object) -> object:
        if isinstance(value, dict) and "reduction_factor" in value:
            raise ValueError(
                "field 'early_stopping.reduction_factor' is gone: ASHA is no longer used; both backends stop "
                "trials by the median rule (early_stopping.warmup_epochs, min_completed_trials)"
            )
        return value


class ParallelSection(_Section):
    """How trials share machines when several run at once (Ray backend; also sizes worker threads)."""

    max_concurrent_trials: Annotated[int, Strict(), Field(ge=1)] = 2
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0


class BudgetSection(_Section):
    """How much search: completed trials, epochs per trial and an optional wall-clock limit."""

    trials: Annotated[int, Strict(), Field(ge=1)] = 16
    epochs: Annotated[int, Strict(), Field(ge=1)] = 3
    time_limit_minutes: Annotated[float, Field(gt=0)] | None = None
    max_consecutive_failures: Annotated[int, Strict(), Field(ge=1)] = 5


class ReferencePoint(_Section):
    """Hypervolume reference point, fixed before the search starts."""

    retention: Annotated[float, Field(ge=0)] = 0.9
    compression: Annotated[float, Field(ge=0)] = 1.0
    latency_ms: Annotated[float, Field(gt=0)] | Literal["teacher"] = "teacher"


class ObjectivesSection(_Section):
    """How the three objectives are measured and judged."""

    latency_batch_size: Annotated[int, Strict(), Field(ge=1, le=4096)] = 1
    latency_threads: Annotated[int, Strict(), Field(ge=1, le=1024)] = 1
    latency_min_run_time_s: Annotated[float, Field(gt=0)] = 0.3
    retention_floor: Annotated[float, Field(ge=0, le=1.5)] = 0.9
    reference_point: ReferencePoint = ReferencePoint()


class ConstraintsSection(_Section):
    """Budgets a deployed student must meet; each is off (None) unless the study states it.

    ``max_size_kb`` (deployed INT8 weights, 1 KB = 1000 bytes) and ``max_latency_ms`` (the study's
    latency measurement) depend only on the architecture: a sampled student over either is measured
    untrained and never trained (recorded with why; it does not count against the trial budget).
    ``min_retention`` needs training: it is stored with ``optuna.Trial.set_constraint``, so that
    Optuna's samplers and the report know which trials are feasible; the front holds feasible ones only.
    """

    max_size_kb: Annotated[float, Field(gt=0)] | None = None
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None
    min_retention: Annotated[float, Field(gt=0, le=1.5)] | None = None

    @property
    def architectural(self) -> bool:
        """Whether a budget can be checked before training (size or latency)."""
        return self.max_size_kb is not None or self.max_latency_ms is not None

    def violations(
        self, size_kb: float, latency_ms: float, retention: float | None = None
    ) -> dict[str, float]:
        """Optuna constraint values (feasible at <= 0) of the budgets the study states."""
        values = {}
        if self.max_size_kb is not None:
            values["max_size_kb"] = size_kb - self.max_size_kb
        if self.max_latency_ms is not None:
            values["max_latency_ms"] = latency_ms - self.max_latency_ms
        if self.min_retention is not None and retention is not None:
            values["min_retention"] = self.min_retention - retention
        return values


class QuantizationSection(_Section):
    """INT8 deployment: the backend (which fixes the runtime latency is measured on), calibration, QAT.

    ``qat`` is searchable: ``false`` (post-training quantization only), ``true`` (quantization-aware
    training during the last ``qat_epochs`` epochs), or ``[false, true]`` to let each trial choose.
    """

    backend: str = "onnxruntime"
    calibration_batches: Annotated[int, Strict(), Field(ge=1, le=1000)] = 8
    qat: bool | Annotated[list[bool], Field(min_length=1)] = False
    qat_epochs: Annotated[int, Strict(), Field(ge=1)] = 1

    @field_validator("qat", mode="before")
    @classmethod
    def _qat(cls, value: object) -> object:
        choices = value if isinstance(value, list) else [value]
        if not choices or not all(isinstance(choice, bool) for choice in choices):
            raise ValueError("use true, false, or a list of them to search both, e.g. [false, true]")
        return value

    @property
    def qat_choices(self) -> list[bool]:
        """The QAT settings trials may take, without duplicates."""
        return sorted(set(self.qat)) if isinstance(self.qat, list) else [self.qat]


class SamplerSection(_Section):
    """The Optuna sampler, always configured explicitly.

    ``candidates``: how many students the sampler proposes per trained one. Each is measured untrained
    (deployed size and INT8 latency, about a second, once per distinct network) and only the one with
    the largest expected hypervolume gain is trained; the others are recorded, never trained, never
    counted (:mod:`autokd.strategy`). 1 trains every proposal. The default, random proposals and the
    best of 8, is autokd's strategy: chosen by measurement against TPE (independent and multivariate)
    and NSGA-II (README, "A search worth its compute"). ``startup_trials`` is TPE's and NSGA-II's.
    """

    kind: Literal["tpe", "nsga2", "random"] = "random"
    startup_trials: Annotated[int, Strict(), Field(ge=1)] = 8
    candidates: Annotated[int, Strict(), Field(ge=1, le=64)] = 8


class Study(_Section):
    """A whole study file."""

    name: str
    seed: Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)] = 0
    data: DataSection = DataSection()
    teacher: TeacherSection = TeacherSection()
    search_space: SearchSpaceSection = SearchSpaceSection()
    training: TrainingSection = TrainingSection()
    budget: BudgetSection = BudgetSection()
    objectives: ObjectivesSection = ObjectivesSection()
    constraints: ConstraintsSection = ConstraintsSection()
    quantization: QuantizationSection = QuantizationSection()
    sampler: SamplerSection = SamplerSection()
    augmentation: AugmentationSection = AugmentationSection()
    early_stopping: EarlyStoppingSection = EarlyStoppingSection()
    parallel: ParallelSection = ParallelSection()
    teacher_cache: StrictBool = True
    teacher_cache_max_gb: Annotated[float, Field(gt=0)] = 2.0
    # Never train a student that could not extend the front even at an optimistic retention (part of
    # autokd's strategy; :mod:`autokd.strategy`).
    prescreen: StrictBool = True
    # Python files or folders that register methods, families, datasets or backends. They are code: a
    # study file naming them runs them. ``plugins:`` is the 0.1 name of this key.
    extensions: list[str] = Field(default=[], validation_alias=AliasChoices("extensions", "plugins"))

    @model_validator(mode="after")
    def _qat_leaves_fp32_epochs(self) -> Study:
        q = self.quantization
        if True in q.qat_choices and q.qat_epochs >= self.budget.epochs:
            raise ValueError(
                f"field 'quantization.qat_epochs' = {q.qat_epochs}: must be below budget.epochs "
                f"({self.budget.epochs}), since quantization-aware training fine-tunes a student trained in FP32"
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not STUDY_NAME.fullmatch(value):
            raise ValueError(f"use {STUDY_NAME_RULE}")
        return value

    def with_paths_resolved(self, base: Path) -> Study:
        """The study with the data's and the teacher checkpoint's relative paths made absolute against
        ``base``, as :func:`load_study_file` does with the study file's folder (so a search, an export
        or a report finds the same files from any working directory)."""
        teacher = self.teacher
        if teacher.checkpoint and not Path(teacher.checkpoint).expanduser().is_absolute():
            teacher = teacher.model_copy(update={"checkpoint": str(base / teacher.checkpoint)})
        if teacher.factory:
            teacher = teacher.model_copy(update={"factory": resolve_factory(teacher.factory, base)})
        return self.model_copy(update={"data": self.data.resolved(base), "teacher": teacher})

    def extension_paths(self, study_path: Path | None) -> list[Path]:
        """The ``extensions:`` entries as paths, relative ones resolved against the study file's folder."""
        base = study_path.parent if study_path else Path.cwd()
        return [p if (p := Path(raw)).is_absolute() else base / p for raw in self.extensions]

    def teacher_key(self) -> str:
        """Content hash of everything that determines the teacher: its section and the data it sees.

        A factory file and a checkpoint enter it by name and content (SHA-256), not by where they lie, so
        a run folder keeps its teacher when the project is checked out or moved elsewhere.
        """
        return self._teacher_key(located=False)

    def legacy_teacher_key(self) -> str | None:
        """The key autokd 0.3 gave this teacher, with its factory file's or checkpoint's absolute path in
        it; None where that is the same as :meth:`teacher_key` (no such file)."""
        legacy = self._teacher_key(located=True)
        return legacy if legacy != self.teacher_key() else None

    def _teacher_key(self, located: bool) -> str:
        payload = {
            "teacher": _teacher_identity(self.teacher, located),
            "augmentation": self.augmentation.model_dump() if self.augmentation.enabled else None,
            "data": _data_identity(self.data),
            "seed": self.seed,
            "format": 1,
        }
        if self.teacher.checkpoint:
            payload["checkpoint_sha256"] = _file_sha256(Path(self.teacher.checkpoint))
        factory_file = (self.teacher.factory or "").rpartition(":")[0]
        if factory_file.endswith(".py") and Path(factory_file).is_file():
            payload["factory_sha256"] = _file_sha256(Path(factory_file))  # the model's code is the model
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# Data fields added after 0.2: left out of the teacher's key while at their defaults, so teachers
# trained before they existed keep their keys.
_LATER_DATA_FIELDS = (
    "train_dir",
    "val_dir",
    "test_dir",
    "factory",
    "test_fraction",
    "channels",
    "mean",
    "std",
)


def _teacher_identity(teacher: TeacherSection, located: bool = False) -> dict:
    identity = teacher.model_dump()
    if not located:  # their content is hashed beside: the file's name is all of its place that counts
        if identity["checkpoint"]:
            identity["checkpoint"] = Path(identity["checkpoint"]).name
        target, _, function = (identity["factory"] or "").rpartition(":")
        if target.endswith(".py"):
            identity["factory"] = f"{Path(target).name}:{function}"
    for field in ("factory", "feature_nodes"):  # added after 0.2: absent from older teachers' keys
        if identity[field] is None:
            del identity[field]
    if identity["random_erasing"] == 0:  # added after 0.2 too: off, older teachers keep their keys
        del identity["random_erasing"]
    return identity


def _data_identity(data: DataSection) -> dict:
    # Where the images live (memory or disk) and who reads them change nothing they hold.
    identity = data.model_dump(
        exclude={"data_dir", "download", "in_memory", "in_memory_max_gb", "loader_workers"}
    )
    for field in _LATER_DATA_FIELDS:
        if identity[field] == DataSection.model_fields[field].default:
            del identity[field]
    return identity


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(error: dict, document: object) -> str:
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        parent = error["loc"][:-1]
        model: type[BaseModel] = Study
        for part in parent:
            annotation = model.model_fields[str(part)].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
        allowed = ", ".join(model.model_fields)
        return f"unknown field '{loc}' (allowed here: {allowed})"
    if error["type"] == "missing":
        return f"field '{loc}' is required"
    message = error["msg"].removeprefix("Value error, ")
    if isinstance(error.get("input"), str) and re.fullmatch(r"[-+]?0[0-9]+", error["input"]):
        message += " (write the number without a leading zero; YAML 1.1 would read it as octal)"
    if not error["loc"] or message.startswith("field '"):  # the message names the field itself
        return message
    return f"field '{loc}' = {error.get('input')!r}: {message}"


def parse_study(document: object, source: str = "<study>") -> Study:
    """Validate a parsed YAML document; raise :class:`StudyFileError` with one line on the first problem."""
    if not isinstance(document, dict):
        raise StudyFileError(f"{source}: a study file must be a YAML mapping, got {type(document).__name__}")
    try:
        return Study.model_validate(document)
    except ValidationError as exc:
        raise StudyFileError(f"{source}: {_describe(exc.errors()[0], document)}") from None


class _StudyLoader(yaml.SafeLoader):
    """YAML without its surprises: no duplicate keys, no anchors or aliases, no octal or sexagesimal
    numbers, and only true/false as booleans (YAML 1.1 also reads yes/no/on/off and 010 as 8)."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"line {event.start_mark.line + 1}: anchors and aliases are not allowed")
        node = super().compose_node(parent, index)
        if getattr(node, "anchor", None):
            raise yaml.YAMLError(f"line {node.start_mark.line + 1}: anchors and aliases are not allowed")
        return node

    def construct_mapping(self, node, deep=False):  # noqa: ANN001
        keys = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in keys:
                raise yaml.YAMLError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


# Resolvers of YAML 1.2's core schema for booleans and numbers, replacing YAML 1.1's.
_StudyLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _tag, _pattern, _first in (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^[-+]?(?:0|[1-9][0-9_]*)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
        r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+0123456789.",
    ),
):
    _StudyLoader.add_implicit_resolver(_tag, re.compile(_pattern), list(_first))


def load_study_file(path: str | Path) -> Study:
    """Read and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise StudyFileError(f"{path}: study file not found")
    try:
        if path.stat().st_size > MAX_STUDY_BYTES:
            raise StudyFileError(
                f"{path}: {path.stat().st_size:,} bytes is not a study file (at most {MAX_STUDY_BYTES:,})"
            )
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StudyFileError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the study file as UTF-8"
        ) from None
    except OSError as exc:
        raise StudyFileError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        document = yaml.load(text, Loader=_StudyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise StudyFileError(f"{path}: not valid YAML{where}: {str(problem)[:200]}") from None
    except RecursionError:
        raise StudyFileError(f"{path}: nested too deeply to be a study file") from None
    study = parse_study(document, str(path))
    return study.with_paths_resolved(path.resolve().parent)


def study_schema() -> dict:
    """The study file's JSON schema, generated from the pydantic model (never kept by hand)."""
    return Study.model_json_schema()


def _yaml_value(value: object) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("...").strip()


def study_template(name: str) -> str:
    """A commented YAML study: every section and field with its default, each section's docstring as
    its comment. Generated from the model, so it always matches what the loader accepts."""
    lines = [
        f"# autokd study file ({name}): every field shown with its default. Delete what you keep as is.",
        "",
    ]
    defaults = Study(name=name).model_dump(mode="json")
    for field_name, info in Study.model_fields.items():
        value = defaults[field_name]
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            doc = (annotation.__doc__ or "").strip().splitlines()
            lines += [f"# {line.strip()}" for line in doc if line.strip()]
            lines.append(f"{field_name}:")
            for key, item in value.items():
                lines.append(f"  {key}: {_yaml_value(item)}")
            lines.append("")
        else:
            lines.append(f"{field_name}: {_yaml_value(value)}")
    return "\n".join(lines).rstrip() + "\n"
