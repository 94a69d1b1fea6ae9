"""Each student family's Pareto front on the same teacher and data, at an equal budget. Run by hand.

Runs ``--study`` (default: studies/families.yaml) once per family in its ``search_space.families``,
restricted to that family, with ``--trials`` completed trials of ``--epochs`` epochs each and no time
limit (the teacher is trained once into ``--runs-dir`` and reused), then prints per family: the
hypervolume of its front (one reference point for all: the first run's), the front, and the most
compressed student at or above the study's retention floor.

    .venv/bin/python benchmarks/families.py --trials 4 --epochs 2
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import autokd
from autokd.config import load_study_file
from autokd.pareto import OBJECTIVES, hypervolume

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--study", type=Path, default=REPO / "studies" / "families.yaml")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--families", nargs="+", help="default: the study's own")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    args = parser.parse_args()

    base = load_study_file(args.study)
    families = args.families or base.search_space.families
    floor = base.objectives.retention_floor
    reference = None
    rows = []
    for family in families:
        doc = base.model_dump()
        doc["name"] = f"families-{family.replace(':', '-')}-{int(time.time())}"
        doc["search_space"]["families"] = [family]
        doc["budget"].update(trials=args.trials, epochs=args.epochs, time_limit_minutes=None)
        doc["quantization"]["qat"] = False  # QAT needs epochs > qat_epochs; compare the plain recipe
        doc["sampler"]["startup_trials"] = args.trials  # random sampling: the same chance for every family
        start = time.perf_counter()
        result = autokd.search(
            doc, runs_dir=args.runs_dir, reports_dir=None, progress=False, log=lambda _: None
        )
        minutes = (time.perf_counter() - start) / 60
        done = [t for t in result.records.trials if t.completed]
        ref = reference = reference or result.records.reference_point
        points = [t.values for t in done]
        hv = hypervolume(points, (ref["retention"], ref["compression"], ref["latency_ms"])) if points else 0.0
        shippable = [t for t in done if t.result.retention >= floor]
        best = max(shippable, key=lambda t: t.result.compression, default=None)
        rows.append((family, len(done), hv, best, minutes))
        print(
            f"{family:<22} {len(done)} trials  HV {hv:7.2f}  "
            + (
                f"best >= {floor:g}: trial {best.number} retention {best.result.retention:.3f} "
                f"{best.result.compression:.0f}x {best.result.latency_ms:.3f} ms"
                if best
                else f"none >= {floor:g}"
            )
            + f"  ({minutes:.1f} min)",
            flush=True,
        )
        shutil.rmtree(result.run_dir, ignore_errors=True)
    print(f"\n{args.trials} trials × {args.epochs} epochs per family; objectives {', '.join(OBJECTIVES)}")
    print("| family | trials | hypervolume | most compressed at or above the floor | minutes |")
    print("|---|---:|---:|---|---:|")
    for family, n, hv, best, minutes in rows:
        shown = (
            f"retention {best.result.retention:.3f}, {best.result.compression:.0f}x, {best.result.latency_ms:.3f} ms"
            if best
            else "none"
        )
        print(f"| {family} | {n} | {hv:.2f} | {shown} | {minutes:.1f} |")


if __name__ == "__main__":
    main()
