"""PNG charts of a run (matplotlib, Agg backend: no display needed): latency
distribution, order violations, redelivery positions and delays, crash recovery and
throughput, one broker per colour. A chart whose scenario did not run is skipped."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from mailbag.broker.files import write_file
from mailbag.harness.result import Report, ScenarioResult
from mailbag.harness.scenarios.latency import PIPELINE

WIDTH = 9.0
HEIGHT = 4.8
COLOURS = plt.get_cmap("tab10").colors  # type: ignore[attr-defined]  # a ListedColormap


def draw(report: Report, out: Path) -> list[Path]:
    """Draw every chart there is data for into `out`; returns the PNG paths."""
    written = []
    for name, scenario, plot in CHARTS:
        results = [r for r in report.results if r.scenario == scenario and r.error is None]
        if not results:
            continue
        fig = plot(results)
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=110)
        plt.close(fig)
        written.append(write_file(out / f"{name}.png", png.getvalue()))
    return written


def _colour(results: list[ScenarioResult]) -> list:
    return [COLOURS[i % len(COLOURS)] for i in range(len(results))]


def latency(results: list[ScenarioResult]) -> Figure:
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    for r, colour in zip(results, _colour(results)):
        values = sorted(r.series.get("latency_ms", []))
        if not values:
            continue
        share = [(i + 1) / len(values) * 100 for i in range(len(values))]
        m = r.metrics["latency_ms"]
        label = f"{r.broker}  p50 {m['p50']:.1f} / p99 {m['p99']:.1f} ms"
        ax.step(values, share, where="post", color=colour, label=label, linewidth=2)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("publish-to-handle latency, ms (log scale)")
    ax.set_ylabel("messages handled within, %")
    ax.set_ylim(0, 101)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Latency distribution (further left is faster)")
    return fig


def ordering(results: list[ScenarioResult]) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH + 2, HEIGHT), layout="constrained")
    c = results[0].metrics["consumers"]
    brokers = [r.broker for r in results]
    x = range(len(results))
    for ax, metric, scale, title in (
        (left, "key_violations", 1, "per-key order violations (lower is better)"),
        (right, "inversion_share", 100, "global inversions, % of message pairs"),
    ):
        one = [r.metrics[f"{metric}_1"] * scale for r in results]
        many = [r.metrics[f"{metric}_{c}"] * scale for r in results]
        bars1 = ax.bar([i - 0.2 for i in x], one, width=0.4, label="1 consumer", color=COLOURS[0])
        bars2 = ax.bar([i + 0.2 for i in x], many, width=0.4, label=f"{c} consumers", color=COLOURS[1])
        ax.bar_label(bars1, fmt="%.0f" if scale == 1 else "%.1f")
        ax.bar_label(bars2, fmt="%.0f" if scale == 1 else "%.1f")
        ax.set_xticks(list(x), brokers, rotation=20, ha="right")
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        ax.margins(y=0.15)
    left.legend()
    fig.suptitle("Ordering: messages handled out of publish order")
    return fig


def redelivery(results: list[ScenarioResult]) -> Figure:
    fig, (left, right) = plt.subplots(1, 2, figsize=(WIDTH + 2, HEIGHT), layout="constrained")
    brokers = [r.broker for r in results]
    positions = [r.series.get("positions") or [0.0] for r in results]
    delays = [r.series.get("delays") or [0.0] for r in results]
    left.boxplot(positions, orientation="horizontal", tick_labels=brokers)
    left.set_xlabel("other messages handled before the retried one came back")
    left.set_title("Where a retried message comes back")
    right.boxplot(delays, orientation="horizontal", tick_labels=brokers)
    asked = results[0].metrics.get("asked_delay", 0)
    right.axvline(asked, color="red", linestyle="--", label=f"asked: {asked:g}s")
    right.set_xlabel("seconds from retry to redelivery")
    right.set_title("Redelivery delay, observed vs asked")
    right.legend()
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    return fig


def crash(results: list[ScenarioResult]) -> Figure:
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    brokers = [r.broker for r in results]
    waits = [r.series.get("comeback_seconds") or [0.0] for r in results]
    ax.boxplot(waits, orientation="horizontal", tick_labels=brokers)
    for i, r in enumerate(results, start=1):
        m = r.metrics
        ax.annotate(
            f"{m['came_back']}/{m['held']} back",
            (max(waits[i - 1]), i),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            color="red" if m["came_back"] < m["held"] else "black",
        )
    ax.set_xlabel("seconds from the consumer's death until its messages were delivered again")
    ax.set_title("Crash: unacked messages of a killed consumer")
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.2)
    ax.set_xlim(left=0)
    return fig


def throughput(results: list[ScenarioResult]) -> Figure:
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT), layout="constrained")
    x = range(len(results))
    series = [
        ("throughput", "end to end, one publish call at a time"),
        ("publish_rate", "publish (confirmed), one call at a time"),
        ("throughput_pipelined", f"end to end, {PIPELINE} publish calls in flight"),
    ]
    for n, (metric, label) in enumerate(series):
        bars = ax.bar(
            [i + (n - 1) * 0.27 for i in x],
            [r.metrics.get(metric, 0.0) for r in results],
            width=0.27,
            label=label,
            color=COLOURS[2 + n],
        )
        ax.bar_label(bars, fmt="%.0f")
    ax.set_yscale("log")
    ax.set_ylabel("messages / s (log scale)")
    ax.set_xticks(list(x), [r.broker for r in results], rotation=20, ha="right")
    ax.set_title("Throughput (higher is better)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend()
    return fig


#: (file name, scenario, drawing function), in the order index.md shows them
CHARTS: list[tuple[str, str, Callable[[list[ScenarioResult]], Figure]]] = [
    ("latency", "latency", latency),
    ("ordering", "ordering", ordering),
    ("redelivery", "redelivery", redelivery),
    ("crash", "crash", crash),
    ("throughput", "latency", throughput),
]
