"""run_trial, called directly: one student trained, quantized and measured from a config."""

from __future__ import annotations

import pytest

from autokd.trial import STUDENT_WEIGHTS, TrialConfig, TrialResult, run_trial


def _config(**overrides) -> TrialConfig:
    settings = {
        "family": "resnet",
        "width": 0.125,
        "depth": 0.5,
        "stem": "small",
        "methods": ("hinton_kd",),
        "method_params": {"hinton_kd": {"temperature": 4.0}},
        "epochs": 2,
        "batch_size": 64,
        "calibration_batches": 2,
        "latency_min_run_time_s": 0.05,
    }
    return TrialConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def finished(tiny_resources, tmp_path_factory):
    """One trial run to the end, with its epoch callbacks and artifact folder."""
    epochs: list[tuple[int, float]] = []
    artifacts = tmp_path_factory.mktemp("trial")
    result = run_trial(
        _config(),
        tiny_resources.data,
        tiny_resources.teacher_reference(),
        on_epoch=lambda epoch, accuracy: epochs.append((epoch, accuracy)),
        artifact_dir=artifacts,
    )
    return result, epochs, artifacts, tiny_resources.teacher_reference()


def test_the_result_is_typed_and_its_objectives_come_in_the_studys_order(finished):
    result, *_ = finished
    assert isinstance(result, TrialResult)
    assert result.objectives() == [result.retention, result.compression, result.latency_ms]


def test_retention_is_int8_accuracy_over_the_teachers(finished):
    result, _, _, teacher = finished
    assert result.retention == pytest.approx(result.int8_accuracy / teacher.test_accuracy)
    assert result.retention_fp32 == pytest.approx(result.fp32_accuracy / teacher.test_accuracy)


def test_compression_is_teacher_bytes_over_deployed_student_bytes(finished):
    result, _, _, teacher = finished
    assert result.compression == pytest.approx(teacher.weight_bytes / result.weight_bytes)
    assert result.parameter_ratio == pytest.approx(teacher.parameters / result.parameters)


def test_every_epoch_reports_its_validation_accuracy(finished):
    result, epochs, *_ = finished
    assert [e for e, _ in epochs] == [1, 2]
    assert [a for _, a in epochs] == result.val_accuracy_per_epoch


def test_the_student_and_its_int8_artifact_are_kept(finished):
    result, _, artifacts, _ = finished
    assert (artifacts / STUDENT_WEIGHTS).exists()
    assert (artifacts / "int8.onnx").stat().st_size == result.artifact_bytes


def test_the_result_round_trips_through_the_stored_attributes(finished):
    result, *_ = finished
    assert TrialResult.from_attrs(result.as_attrs()) == result


def test_raising_from_the_epoch_callback_stops_the_trial(tiny_resources):
    class Stop(Exception):
        pass

    def stop_after_first(epoch: int, accuracy: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        run_trial(
            _config(epochs=3),
            tiny_resources.data,
            tiny_resources.teacher_reference(),
            on_epoch=stop_after_first,
        )


@pytest.mark.slow
def test_a_qat_trial_trains_its_last_epoch_quantization_aware(tiny_resources):
    result = run_trial(
        _config(epochs=4, qat=True, qat_epochs=1), tiny_resources.data, tiny_resources.teacher_reference()
    )
    assert result.qat is True and len(result.val_accuracy_per_epoch) == 4
    assert result.retention_fp32 > 0.5


@pytest.mark.slow
def test_a_full_resolution_resnet_student_learns_and_deploys_as_int8(tiny_resources):
    result = run_trial(
        _config(stem="full", epochs=3), tiny_resources.data, tiny_resources.teacher_reference()
    )
    assert result.retention_fp32 > 0.25  # ten classes: chance is about 0.1
    assert result.agreement_ok and abs(result.retention - result.retention_fp32) < 0.05
