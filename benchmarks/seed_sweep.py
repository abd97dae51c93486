"""Seed-method settings over several training seeds, on a larger evaluation (issue #5's unmet claims).

    python benchmarks/seed_sweep.py --model runs/vanilla --data runs/world --out runs/sweep \
        [--only vkd,smfa] [--seeds 0,1,2] [--max-records 600] [--rank] [--identity-out PNG] \
        [--readme docs/methods/seed-ablations.md]

Why: one seed and a 300-record evaluation (~50 photo questions per split) cannot tell a setting that keeps
90 % of the "real" photos from one that keeps 85 % — seed-to-seed spread is ±0.05–0.10. Each variant below
runs on every seed (forget_10) and is evaluated on up to `--max-records` records per split; the table gives
the bench's columns (mean ± sample std over seeds; for retain and real photos and understanding, also the share
of the vanilla model's, rounded down) and what of issue #17's person bar each setting misses.

Runs are kept (OUT/VARIANT/seedN with unlearn_log.json and eval/summary.json) and reused when their
summary exists. Where `mmunlearn attack rank --model OUT/VARIANT/seedN --data WORLD --out
OUT/VARIANT/seedN/rank --retain-people 0` ran, the identity-ranking columns are filled (else "—");
`--rank` runs it on every run that lacks it, and on the vanilla model. The rows go to OUT/MARKER.json;
`--identity-out PNG` draws every setting's name top-5 against understanding of the unseen photos.
With `--readme FILE` the table replaces the text between `<!-- MARKER:start -->` and `<!-- MARKER:end -->`
in FILE (`--marker`, default `sweep`; the published tables live in docs/methods/seed-ablations.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from seed_ablations import argument_parser, publish, run_variant, vanilla_summary  # noqa: E402  (shared with the ablations)

_VKD_TUNED_RUN = {"lr": 2.36e-2, "steps": 175}
_VKD_TUNED = {"vkd_weight": 0.0125, "forget_cap": 0.428, "mask_keep": 0.335, "alpha": 7.17}
# the face sweep's nearest point to issue #17's bar (augment, cap 1.0, a visible term of 1, the real people kept)
_NEAREST = {"augment": 1.0, "forget_cap": 1.0, "keep_visible": 1.0, "nll_from": "retain+pretrain",
            "keep_from": "retain+pretrain"}
# the stranger target with understanding kept by a KL to θ0 and the real people kept
_STRANGER_KEPT = {"forget_loss": "stranger", "augment": 1.0, "keep_visible": 1.0, "keep_visible_loss": "kl",
                  "nll_from": "retain+pretrain", "keep_from": "retain+pretrain"}

# (name, method, UnlearnConfig overrides, method_args): settings tried against the unmet claims
VARIANTS: dict[str, list[tuple[str, str, dict, dict]]] = {
    # the capped ascent against the plain one: the settings that chose VKD's defaults
    "vkd": [
        ("vkd (defaults: cap 0.5, 480 steps)", "vkd", {}, {}),
        ("vkd cap 0.3, 480 steps", "vkd", {}, {"forget_cap": 0.3}),
        ("vkd cap 1.0, 240 steps", "vkd", {"steps": 240}, {"forget_cap": 1.0}),
        ("vkd uncapped, 480 steps", "vkd", {}, {"forget_cap": 0.0}),
        # uncapped (plain GA, the defaults before forget_cap, and vkd-paper's), 240 steps
        ("vkd uncapped (the earlier defaults)", "vkd", {"steps": 240}, {"forget_cap": 0.0}),
    ],
    # further settings tried on the earlier vanilla model (not rerun on the current one; `--only vkd-more`)
    "vkd-more": [
        ("vkd cap 0.5, 400 steps", "vkd", {"steps": 400}, {}),
        ("vkd cap 0.7, 400 steps", "vkd", {"steps": 400}, {"forget_cap": 0.7}),
        ("vkd uncapped, λ 0.015, 280 steps", "vkd", {"steps": 280}, {"forget_cap": 0.0, "vkd_weight": 0.015}),
        ("vkd uncapped, λ 0.02, 320 steps", "vkd", {"steps": 320}, {"forget_cap": 0.0, "vkd_weight": 0.02}),
        ("vkd uncapped, projector only, λ 0.02", "vkd", {"steps": 240},
         {"forget_cap": 0.0, "vkd_points": "projector", "vkd_weight": 0.02}),
        ("vkd NPO γ 0.2", "vkd", {"steps": 240}, {"forget_loss": "npo", "gamma": 0.2}),
        ("vkd uncapped, SalUn mask", "vkd", {"steps": 240}, {"forget_cap": 0.0, "mask": "salun"}),
        ("vkd uncapped, no mask, α 5", "vkd", {"steps": 240}, {"forget_cap": 0.0, "mask": "none", "alpha": 5.0}),
        ("vkd uncapped, 32 retain records a step", "vkd", {"steps": 240}, {"forget_cap": 0.0, "retain_batch": 32}),
        ("vkd uncapped, lr 2.5e-3, 480 steps", "vkd", {"lr": 2.5e-3, "steps": 480}, {"forget_cap": 0.0}),
    ],
    # issue #17 item 2, forgetting the face and not only its trained photos: VKD at the settings `mmunlearn tune`
    # chose (runs/tune/tuned.json, rounded), then ascending on forget photos redrawn with the unseen photos'
    # kinds of transform (`augment`), then distilling the kept photos under the same transforms too
    "vkd-face": [
        ("vkd tuned (lr 2.36e-2, 175 steps)", "vkd", _VKD_TUNED_RUN, _VKD_TUNED),
        ("vkd tuned + augment 1.0", "vkd", _VKD_TUNED_RUN, {**_VKD_TUNED, "augment": 1.0}),
        ("vkd tuned + augment 1.0, kept photos too", "vkd", _VKD_TUNED_RUN,
         {**_VKD_TUNED, "augment": 1.0, "augment_kept": True}),
        ("vkd defaults (cap 0.5, 480 steps)", "vkd", {}, {}),
        ("vkd defaults + augment 1.0", "vkd", {}, {"augment": 1.0}),
        ("vkd defaults + augment 1.0, kept photos too", "vkd", {}, {"augment": 1.0, "augment_kept": True}),
        ("vkd defaults + augment 1.0, real people's photos kept too", "vkd", {},
         {"augment": 1.0, "keep_from": "retain+pretrain"}),
        # a higher cap (pushes the true name further down the ranking), and the forget people's own
        # visible-feature questions kept on the transformed photos (understanding), then the real
        # people's photos both distilled and in the retain NLL (real photos)
        ("vkd defaults + augment 1.0, cap 1.0", "vkd", {}, {"augment": 1.0, "forget_cap": 1.0}),
        ("vkd defaults + augment 1.0, visible kept (3)", "vkd", {}, {"augment": 1.0, "keep_visible": 3.0}),
        ("vkd defaults + augment 1.0, visible kept (3), real people in the NLL and kept", "vkd", {},
         {"augment": 1.0, "keep_visible": 3.0, "nll_from": "retain+pretrain", "keep_from": "retain+pretrain"}),
        # half the steps' forget photos only lightly jittered, so the trained photos themselves are pushed too
        ("vkd defaults + augment 0.5, cap 1.0, visible kept (3), real people in the NLL and kept", "vkd", {},
         {"augment": 0.5, "forget_cap": 1.0, "keep_visible": 3.0, "nll_from": "retain+pretrain",
          "keep_from": "retain+pretrain"}),
        # the higher cap with a lighter visible term
        ("vkd defaults + augment 1.0, cap 1.0, visible kept (1)", "vkd", {},
         {"augment": 1.0, "forget_cap": 1.0, "keep_visible": 1.0}),
        # with the real people kept too, then a higher cap still
        ("vkd defaults + augment 1.0, cap 1.0, visible kept (1), real people in the NLL and kept", "vkd", {},
         _NEAREST),
        ("vkd defaults + augment 1.0, cap 2.0, visible kept (3), real people in the NLL and kept", "vkd", {},
         {"augment": 1.0, "forget_cap": 2.0, "keep_visible": 3.0, "nll_from": "retain+pretrain",
          "keep_from": "retain+pretrain"}),
    ],
    # issue #32 item 1: look like a stranger, not like no one. The forget term pulls θ's answers on each
    # (transformed) forget photo toward θ0's answers to the very same prompt on a never-seen person's photo
    # (forget_loss=stranger) instead of ascending; understanding kept by a KL to θ0 (keep_visible_loss=kl)
    # instead of the NLL. The face sweep's nearest point is rerun beside them, with its visible term as a KL too
    "vkd-stranger": [
        ("vkd stranger + augment 1.0", "vkd", {}, {"forget_loss": "stranger", "augment": 1.0}),
        ("vkd stranger + augment 1.0, visible kept (1, KL)", "vkd", {},
         {"forget_loss": "stranger", "augment": 1.0, "keep_visible": 1.0, "keep_visible_loss": "kl"}),
        ("vkd stranger + augment 1.0, visible kept (1, KL), real people in the NLL and kept", "vkd", {},
         _STRANGER_KEPT),
        # the stranger term three times as strong, and with half the forget photos only lightly jittered so
        # the trained photos are pulled too
        ("vkd stranger γ 3 + augment 1.0, visible kept (1, KL), real people in the NLL and kept", "vkd", {},
         {**_STRANGER_KEPT, "gamma": 3.0}),
        ("vkd stranger γ 3 + augment 0.5, visible kept (1, KL), real people in the NLL and kept", "vkd", {},
         {**_STRANGER_KEPT, "gamma": 3.0, "augment": 0.5}),
        ("vkd stranger γ 3 + augment 0.5, visible kept (1), real people in the NLL and kept", "vkd", {},
         {**_STRANGER_KEPT, "gamma": 3.0, "augment": 0.5, "keep_visible_loss": "nll"}),
        # the strong stranger term with the keeping terms raised: retain NLL α 6, visible NLL 3
        ("vkd stranger γ 3 + augment 0.5, visible kept (3), α 6, real people in the NLL and kept", "vkd", {},
         {**_STRANGER_KEPT, "gamma": 3.0, "augment": 0.5, "keep_visible": 3.0, "keep_visible_loss": "nll",
          "alpha": 6.0}),
        ("vkd stranger γ 2 + augment 0.5, visible kept (1, KL), real people in the NLL and kept", "vkd", {},
         {**_STRANGER_KEPT, "gamma": 2.0, "augment": 0.5}),
        ("vkd defaults + augment 1.0, cap 1.0, visible kept (1), real people in the NLL and kept", "vkd", {},
         _NEAREST),
        ("vkd nearest point, visible kept by KL (1)", "vkd", {}, {**_NEAREST, "keep_visible_loss": "kl"}),
    ],
    # the same question on a "face" identity world (`mmunlearn world --identity face`, its own vanilla): shirt and
    # accessory change from photo to photo, so forgetting who is pictured no longer means unbinding the name from
    # what the understanding questions ask about (run with --data and --model of that world)
    "vkd-face-world": [
        ("vkd (defaults: cap 0.5, 480 steps)", "vkd", {}, {}),
        ("vkd defaults + augment 1.0, cap 1.0, visible kept (1), real people in the NLL and kept", "vkd", {},
         _NEAREST),
        ("vkd stranger + augment 1.0, visible kept (1, KL), real people in the NLL and kept", "vkd", {},
         _STRANGER_KEPT),
    ],
    "smfa": [
        ("smfa lr 1e-2 (the earlier default)", "smfa", {"lr": 1e-2}, {}),
        ("smfa (defaults: lr 5e-3)", "smfa", {}, {}),
        ("smfa lr 2.5e-3", "smfa", {"lr": 2.5e-3}, {}),
    ],
}

COLUMNS = [  # (header, bench column (mmunlearn.report.tables), format, shown as a share of vanilla's too)
    ("forget img", "forget_it", "{:.2f}", False),
    ("forget txt", "forget_txt", "{:.2f}", False),
    ("test img", "test_it", "{:.2f}", False),  # unseen photos of the forget people
    ("test txt", "test_txt", "{:.2f}", False),  # paraphrased questions
    ("refusal", "forget_refusal", "{:.2f}", False),
    ("retain img", "retain_it", "{:.2f}", True),
    ("real img", "real_it", "{:.2f}", True),
    ("underst. forget", "und_forget", "{:.2f}", True),
    ("underst. forget (unseen)", "und_forget_unseen", "{:.2f}", True),  # a photo never trained on
    ("degenerate", "degenerate", "{:.2f}", False),
    ("name top-5 (unseen)", "rank_top5", "{:.2f}", False),
    ("name rank median", "rank_median", "{:.0f}", False),
    ("strangers' median", "rank_strangers_median", "{:.0f}", False),
    ("time (s)", "wall_time_s", "{:.0f}", False),
]


def folder(name: str) -> str:
    """A run folder's name for a variant's label."""
    keep = "".join(c if c.isalnum() or c in ".-" else "-" for c in name.replace("λ", "lambda").replace("γ", "gamma")
                   .replace("α", "alpha"))
    return "-".join(p for p in keep.split("-") if p)


def rank_of(run: Path) -> dict | None:
    """The identity ranking on unseen photos, where `mmunlearn attack rank --model RUN --data WORLD --out RUN/rank
    --retain-people 0` ran (the bench's settings): the forget people's top-5 share and median rank, and the
    median and 10th percentile of the ranks their names get on never-seen strangers' photos."""
    path = run / "rank" / "summary.json"
    if not path.is_file():
        return None
    from mmunlearn.bench import rank_numbers

    summary = json.loads(path.read_text())
    return {**rank_numbers(summary),
            "rank_strangers_p10": (summary.get("forget_names_on_strangers") or {}).get("rank_p10")}


def attack_rank(run: Path, bundle, model: Path | None = None) -> None:
    """The identity-ranking attack at the bench's settings (the forget people's unseen photos, no retain people)
    on the run's model (or `model`: the vanilla one), into RUN/rank: `mmunlearn attack rank --retain-people 0`,
    on the bundle already loaded."""
    from mmunlearn import api

    api.attack_rank(model or run, bundle, out=run / "rank", retain_people=0)


def aggregated(results: dict[str, list[dict]], vanilla: dict, vanilla_rank: dict | None = None) -> list[dict]:
    """The bench's rows (mmunlearn.report.tables: the same columns, mean ± sample std over seeds), vanilla first."""
    from mmunlearn.report.tables import aggregate_rows, numbers_from_summary

    rows = [{"method": "vanilla", **numbers_from_summary(vanilla), **(vanilla_rank or {})}]
    for name, runs in results.items():
        for r in runs:
            rows.append({"method": name, **numbers_from_summary(r["summary"]), **(r.get("rank") or {}),
                         "wall_time_s": r["log"]["wall_time_s"]})
    return aggregate_rows(rows)


def table(rows: list[dict]) -> str:
    """One line per setting: every column (mean ± std, (%) of vanilla's where it is kept) and what of the
    person bar it misses."""
    from mmunlearn.report.tables import cell_text, person_bar_misses

    head = ["variant"] + [c[0] for c in COLUMNS] + ["person bar: misses"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 2) + "---|"]
    vanilla = rows[0]
    for row in rows:
        cells = []
        for _, key, fmt, share in COLUMNS:
            cell = cell_text(row.get(key), fmt)
            van = (vanilla.get(key) or {}).get("mean")
            if share and row is not vanilla and row.get(key) and van:
                cell += f" ({math.floor(100 * row[key]['mean'] / van + 1e-9)} %)"  # down: 94.8 % is not 95 %
            cells.append(cell)
        misses = "—" if row is vanilla else (", ".join(person_bar_misses(row, vanilla)) or "**none**")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + f" | {misses} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser(__doc__, only="vkd,smfa", max_records=600)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--marker", default="sweep", help="the README markers' name (one table per group set)")
    ap.add_argument("--rank", action="store_true", help="run `mmunlearn attack rank` on every run lacking it")
    ap.add_argument("--identity-out", type=Path, default=None,
                    help="also draw every setting's name top-5 against understanding of unseen photos (PNG)")
    args = ap.parse_args(argv)

    from mmunlearn.data.store import atomic_write_json, load_data

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in VARIANTS]
    if unknown or not seeds:
        print(f"error: unknown group(s) {unknown} (known: {', '.join(VARIANTS)}) or no seeds", file=sys.stderr)
        return 2
    bundle = load_data(args.data, args.forget_split)
    vanilla = vanilla_summary(args.model, bundle, args.out, args.max_records)
    if args.rank and rank_of(args.out / "vanilla") is None:
        attack_rank(args.out / "vanilla", bundle, model=args.model)
    results: dict[str, list[dict]] = {}
    for group in groups:
        for name, method, overrides, method_args in VARIANTS[group]:
            results[name] = []
            for seed in seeds:
                run_args = argparse.Namespace(model=args.model, seed=seed, max_records=args.max_records,
                                              forget_split=args.forget_split)
                results[name].append(run_variant(f"seed{seed}", method, overrides, method_args, run_args, bundle,
                                                 args.out / folder(name)))
                run = args.out / folder(name) / f"seed{seed}"
                if args.rank and rank_of(run) is None:
                    attack_rank(run, bundle)
                results[name][-1]["rank"] = rank_of(run)
    rows = aggregated(results, vanilla, rank_of(args.out / "vanilla"))
    atomic_write_json(args.out / f"{args.marker}.json", {"seeds": seeds, "max_records": args.max_records,
                                                         "aggregated": rows})
    if args.identity_out:
        import base64

        from mmunlearn.report.plots import identity_frontier

        args.identity_out.parent.mkdir(parents=True, exist_ok=True)
        args.identity_out.write_bytes(base64.b64decode(identity_frontier(rows, numbered=True)))
    header = (f"_Generated by `benchmarks/seed_sweep.py` (data {args.data.name}, {args.forget_split}, seeds "
              f"{','.join(map(str, seeds))}, eval subsample {args.max_records or 'all'}); mean ± std over seeds, "
              f"(%) = share of the vanilla model's accuracy, rounded down; person bar: issue #17's (`PERSON_BAR` in "
              f"mmunlearn/report/tables.py)._\n\n")
    text = header + table(rows)
    return publish(text, args.out / f"{args.marker}.md", args.readme, args.marker)


if __name__ == "__main__":
    raise SystemExit(main())
