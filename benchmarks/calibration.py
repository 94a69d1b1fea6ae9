"""ONNX Runtime calibration variants against INT8/FP32 agreement, on the same trained students.

Trains one student per family (plain cross-entropy, as benchmarks/quantization.py does), then
quantizes it with ``quantize_static`` under each variant: MinMax (autokd's) with 8 or 32 batches,
percentile (99.999, 99.99), entropy, symmetric s8 activations, and MinMax with the first, the first
and last, or every depthwise convolution left in FP32. Prints agreement and INT8 accuracy per variant.
Run from the repository root:

    .venv/bin/python benchmarks/calibration.py --families mobilenetv4 efficientnet_lite mobilenetv3_minimal
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autokd.data import load_splits  # noqa: E402
from autokd.quantize import calibration_batches, predict, quiet  # noqa: E402
from autokd.quantize.ort import OnnxRuntimeModel, _Batches, export_onnx, static_options  # noqa: E402
from autokd.students import build_student, stem_for  # noqa: E402
from autokd.train import TrainSettings, predict_logits, train  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--families", nargs="+", default=["mobilenetv4", "efficientnet_lite", "mobilenetv3_minimal"]
    )
    parser.add_argument("--train-subsample", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--depth", type=float, default=0.5)
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def quantized(model_bytes: bytes, calibration, **overrides) -> OnnxRuntimeModel:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    options = static_options()  # autokd's, then the variant's overrides
    extra = overrides.pop("extra", {})
    options.update(overrides)
    options["extra_options"] = {**options["extra_options"], **extra}
    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, int8 = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(model_bytes)
        with quiet():
            quant_pre_process(str(fp32), str(pre))
            quantize_static(str(pre), str(int8), _Batches(calibration), **options)
        return OnnxRuntimeModel(int8.read_bytes(), "int8")


def convolutions(model_bytes: bytes) -> tuple[list[str], list[str]]:
    """Names of the Conv nodes after ORT's pre-processing, and of the depthwise (grouped) ones."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        fp32.write_bytes(model_bytes)
        with quiet():
            quant_pre_process(str(fp32), str(pre))
        graph = onnx.load(str(pre)).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    grouped = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return [n.name for n in convs], grouped


def main() -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantType

    args = parse_args()
    torch.set_num_threads(args.train_threads)
    data = load_splits("fashion_mnist", train_subsample=args.train_subsample, image_size=32, seed=args.seed)
    print(f"# {len(data.train_x)} train images, {args.epochs} epochs, width {args.width}, depth {args.depth}")
    print("| family | variant | agreement | int8 acc |\n|---|---|---|---|")
    for family in args.families:
        torch.manual_seed(args.seed)
        stem = stem_for(family, data.image_size)
        student = build_student(
            family, args.width, args.depth, num_classes=10, in_chans=data.in_chans, stem=stem
        )
        train(student, data.train_x, data.train_y, TrainSettings(args.epochs, 128, 3e-3, seed=args.seed))
        reference = predict_logits(student.eval(), data.test_x).argmax(1)
        model_bytes, _ = export_onnx(student, data.train_x[:128])
        convs, depthwise = convolutions(model_bytes)
        variants = {
            "MinMax, 8 batches (autokd's)": {},
            "MinMax, 32 batches": {"batches": 32},
            "percentile 99.999": {"calibrate_method": CalibrationMethod.Percentile},
            "percentile 99.99": {
                "calibrate_method": CalibrationMethod.Percentile,
                "extra": {"CalibPercentile": 99.99},
            },
            "entropy": {"calibrate_method": CalibrationMethod.Entropy},
            "symmetric s8 activations": {
                "activation_type": QuantType.QInt8,
                "extra": {"ActivationSymmetric": True},
            },
            "first convolution in FP32": {"nodes_to_exclude": convs[:1]},
            "first and last convolutions in FP32": {"nodes_to_exclude": [convs[0], convs[-1]]},
            f"every depthwise convolution in FP32 ({len(depthwise)})": {"nodes_to_exclude": depthwise},
        }
        for name, overrides in variants.items():
            calibration = calibration_batches(data.train_x, 128, overrides.pop("batches", 8))
            with quiet():
                predictions = predict(quantized(model_bytes, calibration, **overrides), data.test_x).argmax(1)
            agreement = float((predictions == reference).float().mean())
            accuracy = float((predictions == data.test_y).float().mean())
            print(f"| {family} | {name} | {agreement:.4f} | {accuracy:.4f} |", flush=True)


if __name__ == "__main__":
    main()
