"""``mnistlab plot``: learning curves of one or several runs as one PNG.

mnistlab plot runs/seed-mlp runs/seed-mlp-book -o compare.png
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "plot",
        help="learning curves (loss, validation accuracy, learning rate) of runs as a PNG",
        description="Plot the metrics.jsonl of one or several runs on one figure to compare them.",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a run folder (holding metrics.jsonl) or a metrics.jsonl file",
    )
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE.png",
        help="where to write the figure (default: RUN/curves.png for one run, "
        "curves.png here for several)",
    )
    p.add_argument("--title", help="the figure's title (default: the runs' names)")
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from mnistlab.io.plots import metrics_path, plot_runs

    if args.output:
        output = Path(args.output)
    elif len(args.runs) == 1:
        output = metrics_path(args.runs[0]).parent / "curves.png"
    else:
        output = Path("curves.png")
    print(plot_runs(args.runs, output, title=args.title))
    return 0
