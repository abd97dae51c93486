"""Plots for the HTML report, drawn with matplotlib (Agg) from numbers already read from result files.

Every function returns a PNG as a base64 string, so the page embeds its images and stays one file.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Mapping, Sequence

CHANCE = 0.25  # four options per classification question
# forgetting a person is judged on photos never trained on (test) as well as on the trained ones
TRADEOFF_PANELS = (("trained photos (forget)", "forget_it", "retain_it"),
                   ("unseen photos (test)", "test_it", "retain_it"), ("text", "forget_txt", "retain_txt"))
# (bench column, label) of the per-split bars
SPLIT_BARS = (("forget_it", "forget\nimg"), ("forget_txt", "forget\ntxt"), ("test_it", "test\nimg"),
              ("test_txt", "test\ntxt"),
              ("retain_it", "retain\nimg"), ("retain_txt", "retain\ntxt"), ("real_it", "real\nimg"),
              ("real_txt", "real\ntxt"), ("und_forget", "underst.\nforget"), ("und_retain", "underst.\nretain"))
LOSS_SKIP = {"step", "lr", "time_s"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    """Figure → base64 PNG (and the figure closed: a bench has many)."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _stat(v: object) -> tuple[float, float] | None:
    """(mean, std) from an aggregated cell ({"mean", "std"}) or a plain number."""
    if isinstance(v, dict) and isinstance(v.get("mean"), (int, float)):
        return float(v["mean"]), float(v.get("std") or 0.0)
    if isinstance(v, (int, float)) and not math.isnan(v):
        return float(v), 0.0
    return None


def _row_point(ax, row: Mapping, x_key: str, y_key: str, label: str, colour: str | None = None,
               fontsize: int = 8):
    """One aggregated row at (x, y): vanilla as a black star, a method as its mean ± std over seeds, labelled;
    nothing (None) where either number is missing, else the point's artist (for a legend)."""
    x, y = _stat(row.get(x_key)), _stat(row.get(y_key))
    if not (x and y):
        return None
    if row["method"] == "vanilla":
        artist = ax.scatter([x[0]], [y[0]], marker="*", s=180, color="black", zorder=3)
    else:
        artist = ax.errorbar([x[0]], [y[0]], xerr=[x[1]], yerr=[y[1]], fmt="o", capsize=3, zorder=2, color=colour)
    ax.annotate(label, (x[0], y[0]), textcoords="offset points", xytext=(5, 4), fontsize=fontsize)
    return artist


def tradeoff(aggregated: Sequence[dict], trials: Sequence[dict] = ()) -> str:
    """Forget (x) against retain (y) accuracy — trained photos, unseen photos, text: every method ± std over
    seeds, trials faint."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(TRADEOFF_PANELS), figsize=(15, 4.8), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = [a["method"] for a in aggregated if a["method"] != "vanilla"]
    colour = {m: colours[i % len(colours)] for i, m in enumerate(methods)}
    for ax, (title, x_key, y_key) in zip(axes, TRADEOFF_PANELS):
        for t in trials:
            x, y = _stat(t.get(x_key)), _stat(t.get(y_key))
            if x and y:
                ax.scatter([x[0]], [y[0]], s=14, alpha=0.35, color=colour.get(t.get("method", ""), "grey"),
                           marker="x", zorder=1)
        for a in aggregated:
            _row_point(ax, a, x_key, y_key, a["method"], colour.get(a["method"]))
        ax.axvline(CHANCE, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("forget accuracy (lower = forgotten)")
        ax.set_ylabel("retain accuracy (higher = kept)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    note = "; x: tuning trials" if trials else ""
    fig.suptitle(f"Forget/retain trade-off (★ vanilla, dotted: chance{note})", fontsize=10)
    return _png(fig)


# The person bar's identity and understanding axes (issue #17): the true name in the top 5 for at most this
# share of unseen photos, and understanding of the forget people's unseen photos at ≥ 95 % of vanilla
NAME_TOP5_BAR = 0.10
UNDERSTANDING_SHARE = 0.95


def identity_frontier(aggregated: Sequence[dict], numbered: bool = False) -> str:
    """Where each method leaves the face: the share of unseen photos whose true name still ranks in the top 5
    (x, lower = forgotten) against understanding of those photos (y, higher = kept), ± std over seeds, with
    the person bar's lines; the label adds the median name rank beside the strangers'. `numbered`: long labels
    (a sweep's settings) go into a key below the plot and each point carries its number."""
    plt = _plt()
    labels = []
    for a in aggregated:
        median, strangers = _stat(a.get("rank_median")), _stat(a.get("rank_strangers_median"))
        labels.append(a["method"] + (f" ({median[0]:.0f} vs {strangers[0]:.0f})" if median and strangers else ""))
    height = 5.2 + (0.17 * len(aggregated) if numbered else 0.0)
    fig, ax = plt.subplots(figsize=(7.5 if not numbered else 9.0, height), constrained_layout=True)
    vanilla = next((a for a in aggregated if a["method"] == "vanilla"), None)
    bar_y = _stat(vanilla.get("und_forget_unseen")) if vanilla else None
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    handles, keys = [], []
    for k, (a, label) in enumerate(zip(aggregated, labels)):
        artist = _row_point(ax, a, "rank_top5", "und_forget_unseen", str(k) if numbered else label,
                            colour=colours[k % len(colours)] if numbered else None, fontsize=7)
        if artist is not None:
            handles.append(artist)
            keys.append(f"{k}: {label}")
    if numbered and handles:
        fig.legend(handles, keys, loc="outside lower center", fontsize=7, ncol=1, frameon=False)
    ax.axvline(NAME_TOP5_BAR, color="tab:red", linestyle=":", linewidth=1)
    if bar_y:
        ax.axhline(UNDERSTANDING_SHARE * bar_y[0], color="tab:red", linestyle=":", linewidth=1)
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("true name in the top 5, share of unseen photos (lower = face forgotten)")
    ax.set_ylabel("understanding of the unseen photos (higher = kept)")
    ax.grid(alpha=0.3)
    ax.set_title("Identity against understanding (★ vanilla; dotted: the person bar, met top left;\n"
                 "label: median name rank vs the strangers' median)", fontsize=9)
    return _png(fig)


def split_bars(method: str, row: Mapping, vanilla: Mapping | None) -> str:
    """Classification accuracy per split and modality: the method beside vanilla (± std over seeds)."""
    plt = _plt()
    keys = [(k, label) for k, label in SPLIT_BARS if _stat(row.get(k)) or (vanilla and _stat(vanilla.get(k)))]
    fig, ax = plt.subplots(figsize=(8, 3), constrained_layout=True)
    xs = list(range(len(keys)))
    width = 0.38
    series = ([("vanilla", vanilla, "#9e9e9e", -width / 2)] if vanilla else []) + [
        (method, row, "#1f77b4", width / 2 if vanilla else 0.0)]
    for name, data, colour, shift in series:
        stats = [_stat(data.get(k)) or (0.0, 0.0) for k, _ in keys]
        ax.bar([x + shift for x in xs], [s[0] for s in stats], width, yerr=[s[1] for s in stats], capsize=2,
               color=colour, label=name)
    ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(xs, [label for _, label in keys], fontsize=8)
    ax.set_ylim(0, 1.18)
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("classification accuracy")
    ax.set_title(f"{method} against vanilla" if vanilla else f"{method} per split", fontsize=10)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def relearn_curves(curves: Mapping[str, Mapping[float, tuple[float, float]]],
                   floor: Mapping[float, float] | None = None) -> str:
    """Probe accuracy against the attack ratio (0 = before the attack) per model; the retain-only floor dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for name, points in curves.items():
        ratios = sorted(points)
        ax.errorbar(ratios, [points[r][0] for r in ratios], yerr=[points[r][1] for r in ratios], marker="o",
                    capsize=3, label=name, color="black" if name == "vanilla" else None,
                    linestyle="--" if name == "vanilla" else "-")
    if floor:
        ratios = sorted(floor)
        ax.plot(ratios, [floor[r] for r in ratios], color="grey", linestyle="--", marker="s",
                label="retain-only floor")
    ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("attack ratio (% of the forget pool relearned)")
    ax.set_ylabel("probe accuracy (held out)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Relearning attack (dotted: chance)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def loss_curves(logs: Mapping[str, Sequence[Mapping]]) -> str:
    """One panel per run: every logged term (loss and its parts) against the step."""
    plt = _plt()
    names = [n for n, log in logs.items() if log]
    cols = min(3, max(1, len(names)))
    rows = max(1, math.ceil(len(names) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes.flat, names):
        log = logs[name]
        steps = [r.get("step", i) for i, r in enumerate(log)]
        terms = [k for k in log[0] if k not in LOSS_SKIP and isinstance(log[0][k], (int, float))]
        for term in terms:
            ax.plot(steps, [r.get(term, float("nan")) for r in log], label=term,
                    linewidth=2 if term == "loss" else 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if len(terms) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _png(fig)
