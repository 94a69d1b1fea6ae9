"""How many epochs do a study's students need? Train chosen students for longer than the study does.

A searched front is only as good as its students' training budget: a front of under-trained students
ranks architectures by how fast they learn, not by how good they get. This trains students of a study
(its data, teacher, teacher-output cache, quantization and latency measurement, all as the search
would) with the architecture and loss you give, for the epochs you give, and prints the validation
top-1 per epoch and the INT8 test top-1, one line per run, as it finishes:

    .venv/bin/python benchmarks/student_budget.py studies/fashion_mnist.yaml \
        --width 0.13 --depth 0.5 --method hinton_kd --share 0.7 --temperature 4 --epochs 12 40

Nothing is stored in the study's run folder; ``--json FILE`` appends each run as a JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from autokd.config import load_study_file
from autokd.measure import machine_latency_lock
from autokd.resources import prepare_resources, torch_threads
from autokd.students import STEMS
from autokd.trial import TrialConfig, run_trial


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("study", type=Path, help="study file, e.g. studies/fashion_mnist.yaml")
    parser.add_argument("--family", default="resnet")
    parser.add_argument(
        "--stem", default="small", choices=STEMS, help="full: the first stage at the input's resolution"
    )
    parser.add_argument("--width", type=float, required=True)
    parser.add_argument("--depth", type=float, required=True)
    parser.add_argument("--method", default="hinton_kd", help="a method name, or 'none' for hard labels")
    parser.add_argument("--share", type=float, default=0.7, help="distillation share of the loss")
    parser.add_argument("--temperature", type=float, default=4.0, help="Hinton KD's temperature")
    parser.add_argument("--epochs", type=int, nargs="+", required=True, help="one run per value")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--qat", action="store_true", help="train the last epoch quantization-aware")
    parser.add_argument("--lr", type=float, help="default: the study's training.lr")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--json", type=Path, help="append each run here as one JSON line")
    args = parser.parse_args()

    study = load_study_file(args.study)
    resources = prepare_resources(study, runs_root=args.runs_dir, study_path=args.study, threads=args.threads)
    teacher = resources.teacher_reference()
    methods = () if args.method == "none" else tuple(args.method.split("+"))
    params = {"hinton_kd": {"temperature": args.temperature}} if "hinton_kd" in methods else {}
    print(
        f"teacher test top-1 {resources.teacher.test_accuracy:.4f}; student {args.family} w{args.width} "
        f"d{args.depth} {args.method or 'none'} share {args.share if methods else 0}",
        flush=True,
    )
    for epochs in args.epochs:
        for seed in args.seeds:
            config = TrialConfig(
                family=args.family,
                width=args.width,
                depth=args.depth,
                stem=args.stem,
                methods=methods,
                distillation_share=args.share if methods else 0.0,
                method_params=params,
                epochs=epochs,
                batch_size=study.training.batch_size,
                lr=args.lr or study.training.lr,
                weight_decay=study.training.weight_decay,
                seed=seed,
                quantization_backend=study.quantization.backend,
                calibration_batches=study.quantization.calibration_batches,
                qat=args.qat,
                qat_epochs=study.quantization.qat_epochs,
                latency_batch_size=study.objectives.latency_batch_size,
                latency_threads=study.objectives.latency_threads,
            )
            start = time.perf_counter()
            with torch_threads(args.threads):
                result = run_trial(
                    config,
                    resources.data,
                    teacher,
                    latency_lock=machine_latency_lock(),
                    device=resources.device,
                    amp=study.training.amp,
                    cpu_bf16=study.training.cpu_bf16,
                    on_epoch=lambda epoch, val, start=start, epochs=epochs, seed=seed: print(
                        f"  seed {seed} epoch {epoch}/{epochs}: val top-1 {val:.4f} "
                        f"({(time.perf_counter() - start) / 60:.1f} min)",
                        flush=True,
                    ),
                )
            row = {
                "width": args.width,
                "depth": args.depth,
                "method": args.method,
                "share": config.distillation_share,
                "temperature": args.temperature if params else None,
                "epochs": epochs,
                "seed": seed,
                "qat": args.qat,
                "lr": config.lr,
                "parameters": result.parameters,
                "weight_kb": result.weight_bytes / 1000,
                "compression": result.compression,
                "int8_accuracy": result.int8_accuracy,
                "fp32_accuracy": result.fp32_accuracy,
                "retention": result.retention,
                "val_per_epoch": [round(v, 4) for v in result.val_accuracy_per_epoch],
                "minutes": (time.perf_counter() - start) / 60,
            }
            print(
                f"{epochs} epochs seed {seed}: {result.parameters:,} params, {row['weight_kb']:.1f} KB INT8, "
                f"{result.compression:.1f}x; INT8 test top-1 {result.int8_accuracy:.4f} (FP32 "
                f"{result.fp32_accuracy:.4f}), retention {result.retention:.3f}; {row['minutes']:.1f} min; "
                f"val per epoch {' '.join(f'{v:.4f}' for v in row['val_per_epoch'])}",
                flush=True,
            )
            if args.json:
                with args.json.open("a") as out:
                    out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
