"""Forget/retain trade-off of a bench, drawn from its results.json (never from a model).

    python benchmarks/plot_tradeoff.py runs/bench/results.json [--out docs/img/tradeoff.png]

Two panels, photos (image+text) and text: each method's forget classification accuracy (x, lower =
more forgotten) against its retain accuracy (y, higher = more kept), mean ± std over seeds as error
bars; the vanilla model as a star. The ideal corner is the top left: low forget, high retain. Reads the `aggregated` rows `mmunlearn bench` writes (the same numbers as its table).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PANELS = (("photos (image+text)", "forget_it", "retain_it"), ("text", "forget_txt", "retain_txt"))


def points(aggregated: list[dict], x_key: str, y_key: str) -> list[tuple[str, float, float, float, float]]:
    """(method, x mean, x std, y mean, y std) for every method that has both columns."""
    out = []
    for row in aggregated:
        x, y = row.get(x_key), row.get(y_key)
        if isinstance(x, dict) and isinstance(y, dict):
            out.append((row["method"], x["mean"], x["std"], y["mean"], y["std"]))
    return out


def plot(results: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    aggregated = results.get("aggregated")
    if not aggregated:
        raise ValueError("results.json has no 'aggregated' rows (write it with `mmunlearn bench`)")
    cfg = results.get("config", {})
    seeds = cfg.get("seeds") or []
    fig, axes = plt.subplots(1, len(PANELS), figsize=(10, 4.4), constrained_layout=True)
    for ax, (title, x_key, y_key) in zip(axes, PANELS):
        for method, x, xs, y, ys in points(aggregated, x_key, y_key):
            if method == "vanilla":
                ax.scatter([x], [y], marker="*", s=180, color="black", zorder=3)
            else:
                ax.errorbar([x], [y], xerr=[xs], yerr=[ys], fmt="o", capsize=3, zorder=2)
            ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.axvline(0.25, color="grey", linestyle=":", linewidth=1)
        ax.set_xlim(-0.05, 1.05)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("forget accuracy (lower = forgotten)")
        ax.set_ylabel("retain accuracy (higher = kept)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    spread = f"mean ± std over seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}" if seeds else ""
    fig.suptitle(f"Forget/retain trade-off ({cfg.get('forget_split', '')}; {spread}; dotted: chance)", fontsize=10)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="a bench results.json")
    ap.add_argument("--out", type=Path, default=Path("docs/img/tradeoff.png"))
    args = ap.parse_args(argv)
    if not args.results.is_file():
        print(f"error: {args.results} does not exist (run `mmunlearn bench` first)", file=sys.stderr)
        return 2
    try:
        path = plot(json.loads(args.results.read_text()), args.out)
    except (ValueError, json.JSONDecodeError) as err:
        print(f"error: {args.results}: {err}", file=sys.stderr)
        return 2
    print(f"plot → {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
