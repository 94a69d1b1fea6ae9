"""Is the search worth it? The front's architectures trained with the searched settings, on hard labels
alone, and with the literature's KD defaults (Hinton KD, T = 4, 0.9 distillation / 0.1 task), each
over the same seeds, printed side by side. Run by hand after a search.

It runs ``autokd confirm RUN --top K --seeds S --baselines`` (what is stored already is not trained
again, so an interrupted run continues), then prints the confirmed front (mean ± std over the seeds)
and the comparison, as Markdown:

    .venv/bin/python benchmarks/baselines.py runs/fashion_mnist --top 3 --seeds 2
    .venv/bin/python benchmarks/baselines.py runs/fashion_mnist --top 3 --seeds 2 --no-train  # print only
"""

from __future__ import annotations

import argparse

import autokd
from autokd.reporting import (
    BASELINES_NOTE,
    baseline_comparison,
    baseline_table,
    confirmed_front,
    load_results,
    readable,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", help="run folder of a searched study, e.g. runs/fashion_mnist")
    parser.add_argument("--top", type=int, default=3, help="front points adding the most hypervolume")
    parser.add_argument(
        "--trial", type=int, action="append", metavar="N", help="front point N only (repeatable)"
    )
    parser.add_argument("--seeds", type=int, default=2, help="new seeds per point (the search's own is kept)")
    parser.add_argument("--epochs", type=int, help="train this many epochs instead of the search's budget")
    parser.add_argument("--no-train", action="store_true", help="print what is stored, train nothing")
    args = parser.parse_args()
    if not args.no_train:
        autokd.confirm(
            args.run_dir,
            top=args.top,
            seeds=args.seeds,
            baselines=True,
            trials=args.trial,
            epochs=args.epochs,
        )
    results = load_results(args.run_dir)
    teacher = results.teacher
    print(
        f"\nteacher {teacher.get('model')}: test top-1 {teacher.get('test_accuracy', float('nan')):.4f}, "
        f"{teacher.get('weight_bytes', 0) / 1000:,.0f} KB FP32"
    )
    confirmed = confirmed_front(results)
    print("\nConfirmed front (mean ± std over seeds; the search's own run included):\n")
    columns = [
        "trial",
        "epochs",
        "family",
        "method",
        "seeds",
        "compression",
        "latency_ms",
        "on_front_of_means",
    ]
    shown = readable(confirmed, columns) if len(confirmed) else confirmed
    for row, r in zip(shown.to_dict("records"), confirmed.to_dict("records"), strict=True):
        print(
            f"  trial {row['trial']} {row['family']} {row['method']}, {row['epochs']} epochs: INT8 top-1 "
            f"{r['int8_accuracy_mean']:.4f} ± {r['int8_accuracy_std']:.4f}, retention "
            f"{r['retention_mean']:.3f} ± {r['retention_std']:.3f}, {row['compression']} smaller, "
            f"{row['latency_ms']} ms, {row['seeds']} seeds"
        )
    compared = baseline_comparison(results)
    print(f"\n{BASELINES_NOTE}\n")
    if not len(compared):
        print("(no baselines stored yet: run without --no-train)")
        return
    table = baseline_table(compared)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")
    wins = int(compared["beats_baselines"].sum())
    print(
        f"\nThe searched settings lead both baselines by more than the largest std on {wins} of "
        f"{len(compared)} front points."
    )


if __name__ == "__main__":
    main()
