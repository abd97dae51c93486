"""Forget/retain trade-off of a bench, drawn from its results.json (never from a model).

    python benchmarks/plot_tradeoff.py runs/bench/results.json [--out docs/img/tradeoff.png]

Three panels, trained photos, unseen photos (`test`) and text: each method's forget classification accuracy (x, lower =
more forgotten) against its retain accuracy (y, higher = more kept), mean ± std over seeds as error
bars; the vanilla model as a star. The ideal corner is the top left: low forget, high retain. Reads the `aggregated` rows `mmunlearn bench` writes (the same numbers as its table).

`--identity-out PNG` also draws the identity frontier (a bench with --attacks): the share of unseen photos whose
true name ranks in the top 5 against understanding of those photos, with the person bar's lines.

    python benchmarks/plot_tradeoff.py runs/bench/results.json --identity-out docs/img/identity.png
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path

def points(aggregated: list[dict], x_key: str, y_key: str) -> list[tuple[str, float, float, float, float]]:
    """(method, x mean, x std, y mean, y std) for every method that has both columns."""
    out = []
    for row in aggregated:
        x, y = row.get(x_key), row.get(y_key)
        if isinstance(x, dict) and isinstance(y, dict):
            out.append((row["method"], x["mean"], x["std"], y["mean"], y["std"]))
    return out


def plot(results: dict, out: Path) -> Path:
    """The HTML report's trade-off figure (`mmunlearn.report.plots.tradeoff`), written as a PNG file."""
    from mmunlearn.report.plots import tradeoff

    aggregated = results.get("aggregated")
    if not aggregated:
        raise ValueError("results.json has no 'aggregated' rows (write it with `mmunlearn bench`)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(tradeoff(aggregated)))
    return out


def plot_identity(results: dict, out: Path) -> Path:
    """The identity frontier (`mmunlearn.report.plots.identity_frontier`) as a PNG file."""
    from mmunlearn.report.plots import identity_frontier

    aggregated = results.get("aggregated") or []
    if not any(isinstance(a.get("rank_top5"), dict) for a in aggregated):
        raise ValueError("no name-rank columns: run the bench with --attacks")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(identity_frontier(aggregated)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", type=Path, help="a bench results.json")
    ap.add_argument("--out", type=Path, default=Path("docs/img/tradeoff.png"))
    ap.add_argument("--identity-out", type=Path, default=None,
                    help="also draw the identity frontier (name top-5 against understanding) here")
    args = ap.parse_args(argv)
    if not args.results.is_file():
        print(f"error: {args.results} does not exist (run `mmunlearn bench` first)", file=sys.stderr)
        return 2
    try:
        results = json.loads(args.results.read_text())
        paths = [plot(results, args.out)]
        if args.identity_out is not None:
            paths.append(plot_identity(results, args.identity_out))
    except (ValueError, json.JSONDecodeError) as err:
        print(f"error: {args.results}: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"plot → {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
