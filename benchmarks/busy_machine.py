"""Trials per hour when other CPU-bound processes share the machine. Run by hand, not in CI.

Starts ``--hogs`` busy-looping processes (none for the idle baseline), then runs the quickstart's
settings under a time limit in a fresh study (the teacher is trained once into ``--runs-dir`` and
reused), once per ``--threads`` setting, and prints completed trials per hour for each. ``auto`` is
autokd's default (torch threads = the cores other processes leave free); a number forces it.
Configurations are interleaved over ``--rounds``.

    .venv/bin/python benchmarks/busy_machine.py --hogs 2 --threads 2 auto --minutes 4
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import time
from pathlib import Path

import autokd
from autokd.config import load_study_file

REPO = Path(__file__).resolve().parents[1]


def _hog() -> None:
    while True:
        pass


def _document(minutes: float, threads: str, index: str) -> dict:
    study = load_study_file(REPO / "studies" / "quickstart.yaml").model_dump()
    study["name"] = f"busy-{index}"
    study["budget"]["trials"] = 1000
    study["budget"]["time_limit_minutes"] = minutes
    study["training"]["threads"] = None if threads == "auto" else int(threads)
    study["early_stopping"]["enabled"] = False  # every started trial runs to the end: comparable work
    # every proposal trained, none measured as a candidate or screened: the count is of trainings
    study["sampler"] = {"kind": "random", "candidates": 1}
    study["prescreen"] = False
    return study


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hogs", type=int, default=2)
    parser.add_argument("--threads", nargs="+", default=["2", "auto"])
    parser.add_argument("--minutes", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    args = parser.parse_args()

    # The teacher (and its output cache) first, with nothing else running, so every run reuses it.
    autokd.search(_document(0.01, "auto", "warm"), runs_dir=args.runs_dir, reports_dir=None, progress=False)
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hogs)]
    for hog in hogs:
        hog.start()
    time.sleep(5)
    results: dict[str, list[float]] = {t: [] for t in args.threads}
    try:
        for round_ in range(args.rounds):
            for threads in args.threads:
                index = f"{threads}-{round_}-{int(time.time())}"
                shutil.rmtree(args.runs_dir / f"busy-{index}", ignore_errors=True)
                start = time.time()
                result = autokd.search(
                    _document(args.minutes, threads, index),
                    runs_dir=args.runs_dir,
                    reports_dir=None,
                    progress=False,
                    log=lambda _: None,
                )
                hours = (time.time() - start) / 3600
                results[threads].append(result.completed / hours)
                print(
                    f"threads={threads:<5} hogs={args.hogs}: {result.completed} trials in {hours * 60:.1f} min "
                    f"= {result.completed / hours:.0f} trials/hour (stopped by {result.stopped_reason})",
                    flush=True,
                )
                shutil.rmtree(args.runs_dir / f"busy-{index}", ignore_errors=True)
    finally:
        for hog in hogs:
            hog.terminate()
    for threads, rates in results.items():
        spread = f" (min {min(rates):.0f}, max {max(rates):.0f})" if len(rates) > 1 else ""
        print(f"threads={threads}: median {statistics.median(rates):.0f} trials/hour{spread}")


if __name__ == "__main__":
    main()
