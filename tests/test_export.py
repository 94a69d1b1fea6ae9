"""Export round trip: the artifact, run by its runtime on the test split, reproduces the study's INT8 accuracy."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pytest
import torch

import autokd
from autokd.cli import main
from autokd.config import parse_study
from autokd.deploy import MODEL_CARD, ExportError, evaluate_export, export_trial
from autokd.quantize import top1
from autokd.resources import load_study_data
from autokd.storage import trial_dir
from autokd.trial import STUDENT_WEIGHTS, TrialConfig


def _one_trial_study(tiny_study: dict, name: str, backend: str) -> dict:
    tiny_study["name"] = name
    tiny_study["search_space"]["families"] = ["resnet"]
    tiny_study["budget"]["trials"] = 1
    tiny_study["quantization"]["backend"] = backend
    return tiny_study


def _completed_trial(tiny_study, shared_runs, name: str, backend: str):
    study = _one_trial_study(tiny_study, name, backend)
    result = autokd.search(study, runs_dir=shared_runs, log=lambda _: None, progress=False, reports_dir=None)
    assert result.completed == 1
    return result.run_dir, result.records.trials[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "suffix"),
    [("onnxruntime", ".onnx"), ("pt2e_x86", ".pt2")],
)
def test_exported_artifact_reproduces_the_int8_accuracy_the_study_recorded(
    backend, suffix, tiny_study, shared_runs, tmp_path, capsys
):
    run_dir, trial = _completed_trial(tiny_study, shared_runs, f"export-{backend.replace('_', '-')}", backend)
    assert (trial_dir(run_dir, 0) / STUDENT_WEIGHTS).exists()
    out = tmp_path / "export"
    assert main(["export", str(run_dir), "--trial", "0", "--out", str(out)]) == 0
    card = json.loads((out / MODEL_CARD).read_text())
    assert (
        card["artifact"] == "model" + suffix and card["backend"] == backend and card["same_backend_as_study"]
    )
    for section in ("metrics", "settings", "teacher", "data", "versions", "runtime", "runtime_version"):
        assert card[section]
    recorded = trial.result.int8_accuracy
    assert card["metrics"]["recorded_by_study"]["int8_accuracy"] == recorded

    # The artifact alone, loaded by the public API and run on the study's test split.
    data = load_study_data(parse_study(tiny_study))
    accuracy = top1(autokd.load(out, trust=True), data.test_x, data.test_y)
    assert accuracy == pytest.approx(recorded, abs=0.001)
    assert evaluate_export(out, trust=True)[0] == pytest.approx(accuracy)
    capsys.readouterr()
    assert main(["predict", str(out), "--trust-pt2"]) == 0
    assert f"test top-1 {accuracy:.4f}" in capsys.readouterr().out


def test_exporting_a_trial_the_study_does_not_have_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--trial", "3"]) == 2
    assert "holds no study" in capsys.readouterr().err


@pytest.mark.slow
def test_export_defaults_to_the_run_folder_and_rejects_missing_trials(tiny_study, shared_runs):
    run_dir, _ = _completed_trial(tiny_study, shared_runs, "export-default", "onnxruntime")
    result = export_trial(run_dir, 0)
    assert result.directory == run_dir / "exports" / "trial-0" and result.artifact.exists()
    with pytest.raises(ExportError, match="no trial 7"):
        export_trial(run_dir, 7)


@pytest.mark.slow
def test_an_unknown_export_format_names_the_registered_ones(tiny_study, shared_runs):
    run_dir, _ = _completed_trial(tiny_study, shared_runs, "export-default", "onnxruntime")
    with pytest.raises(ExportError, match=r"--format tflite: allowed: onnx, pt2"):
        autokd.export(run_dir, 0, format="tflite")


def test_a_pt2_artifact_is_not_loaded_unless_trusted(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"not even a zip")
    with pytest.raises(ExportError, match=r"runs code stored in it.*trust=True"):
        autokd.load(tmp_path / "model.pt2")


@pytest.mark.parametrize("artifact", ["../elsewhere.onnx", "/tmp/elsewhere.onnx", "sub/model.onnx"])
def test_a_model_card_cannot_point_outside_its_folder(tmp_path, artifact):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / MODEL_CARD).write_text(json.dumps({"artifact": artifact}))
    with pytest.raises(ExportError, match="is not a file inside the export folder"):
        autokd.load(folder)


def test_an_artifact_symlinked_out_of_its_folder_is_refused(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (tmp_path / "outside.onnx").write_bytes(b"")
    (folder / "model.onnx").symlink_to(tmp_path / "outside.onnx")
    (folder / MODEL_CARD).write_text(json.dumps({"artifact": "model.onnx"}))
    with pytest.raises(ExportError, match="is not a file inside the export folder"):
        autokd.load(folder)


def test_a_corrupt_model_card_names_the_file_and_what_to_do(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / MODEL_CARD).write_text("{not json")
    with pytest.raises(ExportError, match=r"model_card.json is unreadable .*export the trial again"):
        autokd.load(folder)


def _truncated_state_dict() -> bytes:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 2).state_dict(), buffer)
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", "truncated"])
def test_a_damaged_student_pt_is_one_line_naming_the_file_and_what_to_do(
    tmp_path, make_run, tiny_study, capsys, content
):
    config = asdict(TrialConfig("resnet", 0.125, 0.5))
    run_dir = make_run(tmp_path / "runs" / "tiny", settings=tiny_study, configs=(config,))
    weights = trial_dir(run_dir, 0) / STUDENT_WEIGHTS
    weights.parent.mkdir(parents=True)
    weights.write_bytes(_truncated_state_dict() if content == "truncated" else content)
    code = main(["export", str(run_dir), "--trial", "0", "--out", str(tmp_path / "export")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{weights}: trial 0's student weights are unreadable" in err
    assert "export another completed trial" in err
    assert not (tmp_path / "export").exists()


def _identity_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    tensor = ["batch", 1, 8, 8]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, tensor)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, tensor)],
    )
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _export_folder(tmp_path, artifact: bytes):
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(artifact)
    card = {"artifact": "model.onnx", "study": "tiny", "trial": 3, "data": {"dataset": "digits", "seed": 0}}
    (folder / MODEL_CARD).write_text(json.dumps(card))
    return folder


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_a_damaged_model_onnx_says_to_export_the_trial_again(tmp_path, damage):
    whole = _identity_onnx()
    artifact = {"empty": b"", "garbage": b"\x0a\xff\xff not protobuf", "truncated": whole[: len(whole) // 2]}
    folder = _export_folder(tmp_path, artifact[damage])
    with pytest.raises(ExportError) as error:
        autokd.load(folder)
    message = str(error.value)
    assert message.startswith(f"{folder / 'model.onnx'}: not a loadable ONNX model")
    assert "`autokd export RUN_DIR --trial 3`" in message and "\n" not in message


def test_an_intact_onnx_artifact_still_loads(tmp_path):
    model = autokd.load(_export_folder(tmp_path, _identity_onnx()))
    images = torch.rand(2, 1, 8, 8)
    assert torch.equal(model(images), images)


def test_predict_on_a_damaged_model_onnx_exits_2_with_one_line(tmp_path, capsys):
    folder = _export_folder(tmp_path, b"")
    assert main(["predict", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a loadable ONNX model" in err and "autokd export" in err


def test_a_damaged_trusted_pt2_artifact_says_to_export_the_trial_again(tmp_path):
    (tmp_path / "model.pt2").write_bytes(b"not even a zip")
    with pytest.raises(
        ExportError, match=r"model.pt2: not a loadable torch.export program .*export the trial"
    ):
        autokd.load(tmp_path / "model.pt2", trust=True)
