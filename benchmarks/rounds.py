"""The framework comparison's arithmetic and report: per-round ratios, medians and ranges.

A round runs every framework once; the next round runs them in the reverse order, so a drift in
the machine's speed during a round hits the first and the last framework alike over two rounds.
Each framework's time is divided by mnistlab's time *in the same round* (one ratio per round),
and a ratio is called a difference only when its range over the rounds does not cross 1.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

BASELINE = "mnistlab"


def round_order(frameworks: list[str], round_index: int) -> list[str]:
    """The frameworks in round ``round_index`` (from 0): as given, then reversed, alternately."""
    return list(frameworks) if round_index % 2 == 0 else list(reversed(frameworks))


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def verdict(ratio: dict[str, float]) -> str:
    """What a range of per-round ratios (framework / mnistlab) lets one say."""
    if ratio["min"] > 1:
        return "slower than mnistlab in every round"
    if ratio["max"] < 1:
        return "faster than mnistlab in every round"
    return "not separated: the range crosses 1"


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{program: {framework: figures}}`` from every run's row (each with its ``round``)."""
    ok = [r for r in rows if "error" not in r]
    base = {
        (r["program"], r["round"]): r["train_seconds"] for r in ok if r["framework"] == BASELINE
    }
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for program in dict.fromkeys(r["program"] for r in ok):
        out[program] = {}
        for framework in dict.fromkeys(r["framework"] for r in ok if r["program"] == program):
            mine = [r for r in ok if r["program"] == program and r["framework"] == framework]
            seconds = [r["train_seconds"] for r in mine]
            figures: dict[str, Any] = {
                "rounds": len(mine),
                "steps": mine[0]["steps"],
                "train_seconds": spread(seconds),
                "ms_per_step": spread([1e3 * s / mine[0]["steps"] for s in seconds]),
                "test_accuracy": spread([r["test_accuracy"] for r in mine]),
                "load_1min": spread(
                    [r["load_1min"] for r in mine if r.get("load_1min") is not None]
                    or [float("nan")]
                ),
            }
            ratios = [
                r["train_seconds"] / base[(program, r["round"])]
                for r in mine
                if (program, r["round"]) in base
            ]
            if ratios and framework != BASELINE:
                figures["ratio_to_mnistlab"] = spread(ratios)
                figures["ratio_per_round"] = ratios
                figures["mnistlab_over_this"] = spread([1 / q for q in ratios])
                figures["verdict"] = verdict(figures["ratio_to_mnistlab"])
            out[program][framework] = figures
    return out


def pair_ratios(rows: list[dict[str, Any]], a: str, b: str) -> dict[str, dict[str, float]]:
    """``{program: spread of a's time / b's time}`` over the rounds both finished."""
    ok = [r for r in rows if "error" not in r]
    times = {(r["framework"], r["program"], r["round"]): r["train_seconds"] for r in ok}
    out: dict[str, dict[str, float]] = {}
    for program in dict.fromkeys(r["program"] for r in ok):
        ratios = [
            times[(a, program, n)] / times[(b, program, n)]
            for (f, p, n) in times
            if f == a and p == program and (b, program, n) in times
        ]
        if ratios:
            out[program] = spread(ratios)
    return out


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = (
        f"{'program':<8} {'framework':<13} {'rounds':>6} {'median s':>9} {'range s':>15} "
        f"{'ms/step':>8} {'x mnistlab (range)':>22} {'test acc':>9}  verdict"
    )
    lines = [head, "-" * len(head)]
    for program, frameworks in summary.items():
        for framework, f in frameworks.items():
            s, acc = f["train_seconds"], f["test_accuracy"]
            if "ratio_to_mnistlab" in f:
                q = f["ratio_to_mnistlab"]
                ratio = f"{q['median']:.2f} ({q['min']:.2f}-{q['max']:.2f})"
            else:
                ratio = "1" if framework == BASELINE else "-"
            lines.append(
                f"{program:<8} {framework:<13} {f['rounds']:>6} {s['median']:>9.2f} "
                f"{s['min']:>7.2f}-{s['max']:<7.2f} {f['ms_per_step']['median']:>8.3f} "
                f"{ratio:>22} {100 * acc['median']:>8.2f}%  {f.get('verdict', '')}"
            )
    return "\n".join(lines)


def bar_chart(summary: dict[str, dict[str, dict[str, Any]]], path: Path, title: str) -> None:
    """Median training time per framework, with the range over rounds as an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    programs = list(summary)
    fig, axes = plt.subplots(1, len(programs), figsize=(6 * len(programs), 3.2), squeeze=False)
    for ax, program in zip(axes[0], programs, strict=True):
        frameworks = summary[program]
        names = list(frameworks)
        med = [frameworks[n]["train_seconds"]["median"] for n in names]
        lo = [m - frameworks[n]["train_seconds"]["min"] for m, n in zip(med, names, strict=True)]
        hi = [frameworks[n]["train_seconds"]["max"] - m for m, n in zip(med, names, strict=True)]
        bars = ax.barh(names, med, xerr=[lo, hi], color="#4c72b0", capsize=3)
        for bar, n in zip(bars, names, strict=True):
            f = frameworks[n]
            q = f.get("ratio_to_mnistlab")
            label = (
                f" {f['train_seconds']['median']:.1f} s, {100 * f['test_accuracy']['median']:.2f}%"
            )
            if q:
                label += f", {q['min']:.2f}-{q['max']:.2f}x"
            ax.text(
                bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8
            )
        ax.invert_yaxis()
        ax.set_xlabel("training time (s), median and range over rounds; lower is better")
        first = next(iter(frameworks.values()))
        ax.set_title(f"{program}, {first['steps']:,} steps, {first['rounds']} rounds")
        ax.set_xlim(0, max(f["train_seconds"]["max"] for f in frameworks.values()) * 1.7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
