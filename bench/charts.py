"""PNG charts of the results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.plan import CONDITIONS
from bench.sdks import BASELINES, LABELS, SDKS
from bench.stats import DASH, Summary

Raw = dict[str, Any]
COLORS = {
    "klime_mp": "#1b9e77",
    "klime_mp_spool": "#66a61e",
    "klime": "#d95f02",
    "segment": "#7570b3",
    "posthog": "#e7298a",
    "none": "#999999",
    "encode_only": "#cccccc",
}


def _bar(summary: Summary | None) -> tuple[float, float, float]:
    """Height and the distances down to min and up to max (zeros when missing)."""
    if not summary or summary.get("median") is None:
        return 0.0, 0.0, 0.0
    median = float(summary["median"])
    return median, median - float(summary["min"]), float(summary["max"]) - median


def _subtitle(meta: Raw) -> str:
    dot = " \u00b7 "
    return dot.join(
        [
            meta["date"][:10],
            f"{meta['machine']} ({meta['cpus']} CPUs)",
            f"Python {meta['python']}",
            f"median of {meta['runs']} run(s), bars min{DASH}max",
        ]
    )


def _bars(ax: Any, names: list[str], values: list[Summary | None], **labels: Any) -> list[float]:
    """One bar per SDK, labelled; returns the tops of their error bars."""
    tops = []
    for i, (sdk, value) in enumerate(zip(names, values)):
        h, lo, hi = _bar(value)
        ax.bar(i, h, 0.6, yerr=[[lo], [hi]], capsize=3, color=COLORS[sdk])
        tops.append(h + hi)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([LABELS[n] for n in names], fontsize=8, **labels)
    return tops


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_chart(lat: Raw, meta: Raw, path: Path) -> None:
    import matplotlib.pyplot as plt

    metrics = (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"), ("max_ms", "max"))
    fig, axes = plt.subplots(1, len(CONDITIONS), figsize=(15, 4.8), sharey=True)
    width = 0.8 / len(SDKS)
    for ax, cond in zip(axes, CONDITIONS):
        table = lat[cond]["sdks"]
        for k, sdk in enumerate(SDKS):
            heights, lows, highs = [], [], []
            for key, _ in metrics:
                scale = 1000.0 if key == "max_ms" else 1.0  # plot everything in µs
                h, lo, hi = _bar(table[sdk][key])
                heights.append(h * scale)
                lows.append(lo * scale)
                highs.append(hi * scale)
            xs = [i + (k - (len(SDKS) - 1) / 2) * width for i in range(len(metrics))]
            cut = table[sdk]["cut"]  # censored: the true values are at least this high
            ax.bar(
                xs,
                heights,
                width,
                yerr=[lows, highs],
                capsize=2,
                label=LABELS[sdk],
                color=COLORS[sdk],
                hatch="//" if cut else None,
                edgecolor="white" if cut else None,
            )
        ax.set_yscale("log")
        ax.set_xticks(range(len(metrics)))
        ax.set_xticklabels([label for _, label in metrics])
        ax.set_title({"up": "collector up", "down": "collector down", "full": "queue full"}[cond])
        ax.axhline(1000, color="#444", linewidth=0.6, linestyle=":")
        ax.grid(axis="y", which="major", alpha=0.3)
    axes[0].set_ylabel("track() latency, µs (log)")
    axes[0].legend(fontsize=8)
    fig.suptitle(
        "track() call latency (lower is better; dotted line: 1 ms; hatched: run cut, "
        "the true value is at least this)\n" + _subtitle(meta),
        fontsize=10,
    )
    _save(fig, path)


def throughput_chart(tp: Raw, meta: Raw, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    names = list(SDKS)
    tops = _bars(ax, names, [tp["sdks"][sdk]["events_per_s"] for sdk in names])
    for i, (sdk, top) in enumerate(zip(names, tops)):
        rate, conns = (tp["sdks"][sdk][key]["median"] for key in ("events_per_s", "connections"))
        if conns is not None:
            ax.text(
                i, top, f"{rate:,.0f}/s\n{conns:.0f} conn.", ha="center", va="bottom", fontsize=8
            )
    ax.set_ylabel("events/s until delivered")
    ax.set_title("Throughput of a burst (higher is better)\n" + _subtitle(meta), fontsize=9)
    ax.margins(y=0.2)
    _save(fig, path)


def gunicorn_chart(gun: Raw, meta: Raw, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = [n for n in (*BASELINES, *SDKS) if n in gun["sdks"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, sdk in enumerate(names):
        for offset, key, alpha in ((-0.2, "p50_ms", 1.0), (0.2, "p99_ms", 0.5)):
            h, lo, hi = _bar(gun["sdks"][sdk][key])
            left.bar(
                i + offset, h, 0.4, yerr=[[lo], [hi]], capsize=2, color=COLORS[sdk], alpha=alpha
            )
    _bars(right, names, [gun["sdks"][sdk]["rps"] for sdk in names], rotation=10)
    left.set_xticks(range(len(names)))
    left.set_xticklabels([LABELS[n] for n in names], fontsize=8, rotation=10)
    left.set_ylabel("request latency, ms (solid p50, light p99)")
    right.set_ylabel("requests/s")
    fig.suptitle("Under Gunicorn: one track() per request\n" + _subtitle(meta), fontsize=9)
    _save(fig, path)


def cpu_chart(cpu: Raw, meta: Raw, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [n for n in (*SDKS, "encode_only") if n in cpu["sdks"]]
    _bars(ax, names, [cpu["sdks"][sdk]["us_per_event"] for sdk in names], rotation=10)
    ax.set_ylabel("worker CPU per event, µs (lower is better)")
    fig.suptitle("CPU per event in a Gunicorn worker\n" + _subtitle(meta), fontsize=9)
    _save(fig, path)


def draw(results: Raw, folder: Path) -> list[str]:
    """Draw what the results hold; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    charts = (cpu_chart, latency_chart, throughput_chart, gunicorn_chart)
    written = []
    for draw_one in charts:
        key = draw_one.__name__.removesuffix("_chart")
        if key in results:
            path = folder / f"{key}.png"
            draw_one(results[key], results["meta"], path)
            written.append(str(path))
    return written
