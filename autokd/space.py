"""The study's search space: checked against the registries, and sampled into a :class:`TrialConfig`.

Sampling is define-by-run on an ``optuna.Trial``, the same for every driver:

- ``family``, ``width``, ``depth`` (and ``qat`` when the study lets trials choose);
- ``method``: one entry of ``search_space.methods`` (a method, ``none``, or methods joined by ``+``);
- ``distillation_share`` when the method distils and the study gives it a range;
- ``<method>.weight`` for each method of a combination (normalised to sum to 1);
- ``<method>.<hyperparameter>`` for each hyperparameter a method declares (its temperature included),
  over the method's range or the narrower one in ``search_space.method_params``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import optuna
import timm

from autokd.config import Study, StudyFileError
from autokd.methods import METHODS, Hyperparameter
from autokd.quantize import BACKENDS
from autokd.students import FAMILIES, UnknownTimmModelError, get_family, is_fixed_name
from autokd.trial import TrialConfig

NO_DISTILLATION = "none"
COMBINED_WEIGHT_RANGE = (0.1, 1.0)  # each method's raw weight in a combination, before normalising


def methods_of(choice: str) -> tuple[str, ...]:
    """Methods named by a search-space entry: 'none', one name, or names joined by '+'."""
    return () if choice == NO_DISTILLATION else tuple(part.strip() for part in choice.split("+"))


def method_ranges(study: Study, name: str) -> dict[str, Hyperparameter]:
    """The hyperparameters method ``name`` brings, with the study's narrower ranges applied."""
    ranges = dict(METHODS.get(name).hyperparameters)
    for key, (low, high) in study.search_space.method_params.get(name, {}).items():
        spec = ranges[key]
        ranges[key] = Hyperparameter(
            low=low, high=high, default=min(max(spec.default, low), high), log=spec.log
        )
    return ranges


SMALL_IMAGE_CHECK = 32  # every family handles 32-pixel images; below that, each is tried once


def _check_small_images(study: Study) -> None:
    """Refuse an image size a family's smallest student cannot take (its strides leave nothing)."""
    import torch

    size, space = study.data.image_size, study.search_space
    channels = study.data.channels or 1
    for i, family in enumerate(space.families):
        spec = get_family(family)
        stem = spec.stem_for(size, space.stem)
        model = spec.build(space.width[0], space.depth[0], num_classes=2, in_chans=channels, stem=stem).eval()
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size))
        except RuntimeError:
            raise StudyFileError(
                f"field 'search_space.families.{i}' = {family!r}: its students cannot take "
                f"{size}-pixel images (data.image_size); use data.image_size: 32 or more for this family"
            ) from None


def check_study(study: Study) -> None:
    """Check every family, method, method parameter and the backend against the registries.

    Call after the study's extension files are loaded; raises :class:`StudyFileError` (one line).
    """
    from autokd.config import FACTORY, IMAGE_FOLDER, TORCHVISION_PREFIX
    from autokd.data import DATASETS

    dataset = study.data.dataset
    if (
        dataset not in DATASETS
        and dataset not in (IMAGE_FOLDER, FACTORY)
        and not dataset.startswith(TORCHVISION_PREFIX)
    ):
        raise StudyFileError(
            f"field 'data.dataset' = {dataset!r}: unknown dataset; allowed: {', '.join(DATASETS.names())}, "
            f"{IMAGE_FOLDER} (with data.train_dir), {TORCHVISION_PREFIX}NAME (e.g. torchvision:CIFAR10) or "
            f"{FACTORY} (with data.factory)"
        )
    from autokd.devices import DeviceError, resolve_device

    try:
        resolve_device(study.training.device)
    except DeviceError as exc:
        raise StudyFileError(str(exc)) from None
    if study.teacher.factory is None:
        _check_teacher_model(study.teacher.model)
    checkpoint = study.teacher.checkpoint
    if checkpoint and not Path(checkpoint).expanduser().is_file():
        raise StudyFileError(
            f"field 'teacher.checkpoint' = {checkpoint!r}: no such file (a relative path is relative to the "
            "study file's folder)"
        )
    space = study.search_space
    for i, family in enumerate(space.families):
        if is_fixed_name(family):
            try:
                get_family(family)
            except UnknownTimmModelError as exc:
                raise StudyFileError(f"field 'search_space.families.{i}' = {family!r}: {exc}") from None
        elif family not in FAMILIES:
            raise StudyFileError(
                f"field 'search_space.families.{i}' = {family!r}: unknown family; allowed: "
                f"{', '.join(FAMILIES.names())}, or timm:NAME for any timm model as is"
            )
    if study.data.image_size < SMALL_IMAGE_CHECK:
        _check_small_images(study)
    for i, choice in enumerate(space.methods):
        for name in methods_of(choice):
            if name not in METHODS:
                allowed = ", ".join([NO_DISTILLATION, *METHODS.names()])
                raise StudyFileError(
                    f"field 'search_space.methods.{i}' = {choice!r}: unknown method {name!r}; allowed: {allowed} "
                    "(combine with '+')"
                )
    named = {name for choice in space.methods for name in methods_of(choice)}
    if study.teacher.factory and not study.teacher.feature_nodes:
        reading = sorted(
            n for n in named if METHODS.get(n).needs_features and METHODS.get(n).needs_teacher_features
        )
        if reading:
            raise StudyFileError(
                f"field 'search_space.methods': {', '.join(reading)} read(s) the teacher's features, and a "
                "teacher.factory model has none until teacher.feature_nodes names them (node names from "
                "torchvision.models.feature_extraction.get_graph_node_names); response methods need none"
            )
    for name, params in space.method_params.items():
        if name not in named:
            raise StudyFileError(
                f"field 'search_space.method_params.{name}': {name!r} is not among search_space.methods "
                f"({', '.join(sorted(named)) or 'none'})"
            )
        declared = METHODS.get(name).hyperparameters
        for key, (low, high) in params.items():
            if key not in declared:
                raise StudyFileError(
                    f"field 'search_space.method_params.{name}.{key}': method {name!r} has no such "
                    f"hyperparameter; it has: {', '.join(declared) or 'none'}"
                )
            spec = declared[key]
            if not (spec.low <= low <= high <= spec.high):
                raise StudyFileError(
                    f"field 'search_space.method_params.{name}.{key}' = [{low:g}, {high:g}]: must lie within "
                    f"[{spec.low:g}, {spec.high:g}] with low <= high"
                )
    backend_name = study.quantization.backend
    if backend_name not in BACKENDS:
        raise StudyFileError(
            f"field 'quantization.backend' = {backend_name!r}: allowed: {', '.join(BACKENDS.names())}"
        )
    backend = BACKENDS.get(backend_name)
    for i, family in enumerate(space.families):
        reason = backend.refusal(family, get_family(family).stem_for(study.data.image_size, space.stem))
        if reason is not None:
            supported = [f for f in FAMILIES.names() if backend.refusal(f) is None]
            raise StudyFileError(
                f"field 'search_space.families.{i}' = {family!r}: not supported by quantization backend "
                f"'{backend.name}' ({reason}); supported there: {', '.join(supported)}"
            )


def _check_teacher_model(name: str) -> None:
    """The teacher must be a model timm can build (extension files may register more with timm)."""
    if ":" in name:  # a source-prefixed name (hf-hub:..., local-dir:...) is resolved by timm when built
        return
    if timm.is_model(name):  # also accepts a pretrained tag, e.g. resnet18.a1_in1k
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5)
    hint = f"close matches: {', '.join(close)}" if close else "no close match"
    raise StudyFileError(
        f"field 'teacher.model' = {name!r}: not a timm model; {hint} (timm.list_models() lists them all)"
    )


def _suggest(trial: optuna.Trial, name: str, low: float, high: float, log: bool = False) -> float:
    # A range of one value is a fixed setting: it costs the sampler no dimension.
    return low if low == high else trial.suggest_float(name, low, high, log=log)


def sample_config(trial: optuna.Trial, study: Study) -> TrialConfig:
    """Draw one trial's settings from the study's search space (define-by-run)."""
    space = study.search_space
    family = trial.suggest_categorical("family", space.families)
    student = get_family(family)
    # A fixed timm:NAME student has no width or depth: they are sampled for families only.
    width = 1.0 if student.fixed else trial.suggest_float("width", *space.width)
    depth = 1.0 if student.fixed else trial.suggest_float("depth", *space.depth)
    methods = methods_of(trial.suggest_categorical("method", space.methods))
    share = _suggest(trial, "distillation_share", *space.distillation_share) if methods else 0.0
    weights = {}
    if len(methods) > 1:
        raw = {name: trial.suggest_float(f"{name}.weight", *COMBINED_WEIGHT_RANGE) for name in methods}
        weights = {name: value / sum(raw.values()) for name, value in raw.items()}
    params = {
        name: {
            key: _suggest(trial, f"{name}.{key}", spec.low, spec.high, spec.log)
            for key, spec in method_ranges(study, name).items()
        }
        for name in methods
    }
    qat_choices = study.quantization.qat_choices
    qat = trial.suggest_categorical("qat", qat_choices) if len(qat_choices) > 1 else qat_choices[0]
    return TrialConfig(
        family=family,
        width=width,
        depth=depth,
        stem=student.stem_for(study.data.image_size, space.stem),
        methods=methods,
        distillation_share=share,
        method_weights=weights,
        method_params=params,
        epochs=study.budget.epochs,
        batch_size=study.training.batch_size,
        lr=study.training.lr,
        weight_decay=study.training.weight_decay,
        seed=study.seed + trial.number,
        quantization_backend=study.quantization.backend,
        calibration_batches=study.quantization.calibration_batches,
        qat=qat,
        qat_epochs=study.quantization.qat_epochs,
        latency_batch_size=study.objectives.latency_batch_size,
        latency_threads=study.objectives.latency_threads,
        latency_min_run_time_s=study.objectives.latency_min_run_time_s,
    )


def make_sampler(study: Study, offset: int = 0) -> optuna.samplers.BaseSampler:
    """The explicitly configured sampler; ``offset`` shifts the seed so a resumed run draws new points."""
    seed = (study.seed + offset) % 2**32  # numpy's seed range
    kind = study.sampler.kind
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=study.sampler.startup_trials)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, study.sampler.startup_trials))
    return optuna.samplers.RandomSampler(seed=seed)
