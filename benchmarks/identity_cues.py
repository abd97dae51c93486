"""What a model recognises a face by: its answers to the forget people's fact questions on redrawn photos.

    python benchmarks/identity_cues.py --model runs/vanilla --data runs/world \
        [--forget-split forget_10] [--draws 3] [--readme docs/methods/seed-ablations.md]

Why: the person bar asks a method to forget who is pictured and keep what the photo shows (hair colour, shirt,
accessory, background). On the synthetic world both are drawn from the same features, so whether they can be
separated depends on which features the model identifies a person by. Each forget person's unseen-photo fact
questions (classification, 4 options; the `test` split, not the visible-feature ones) are asked again on photos
drawn from the person's own look with some identity features changed (each changed feature takes another value;
a test-strength pose), and on photos of never-seen strangers (`data/strangers.py`). Accuracy near the
stranger's means the changed features carried the identity; near the own photo's, they did not. Every
question is asked on `--draws` photos (different poses and values), and the table gives the mean.
With `--readme FILE` the table replaces the text between `<!-- MARKER:start -->` and `<!-- MARKER:end -->` in
FILE (`--marker`, default `identity-cues`).

A "face" identity world (`mmunlearn world --identity face`) is redrawn over its own identity features (face shape,
skin, hair colour, hairstyle, facial hair), every photo in clothes of its own, as the world draws them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The understanding questions' subjects among the identity features (background is not one)
UNDERSTANDING_FEATURES = ("hair_colour", "shirt", "accessory")


def redrawn_look(look: dict, change: tuple[str, ...], rng: random.Random) -> dict:
    """`look` with each feature of `change` set to another of its values."""
    from mmunlearn.data.portraits import FACIAL_HAIR, FEATURE_VALUES

    values = {**FEATURE_VALUES, "facial_hair": FACIAL_HAIR}
    return {**look, **{f: rng.choice([v for v in values[f] if v != look.get(f, "none")]) for f in change}}


def variants(identity: str = "look") -> list[tuple[str, tuple[str, ...] | None]]:
    """(label, identity features changed); None: a never-seen stranger's photo instead."""
    from mmunlearn.data.portraits import IDENTITIES

    features = IDENTITIES[identity]
    asked = tuple(f for f in UNDERSTANDING_FEATURES if f in features)
    rest = tuple(f for f in features if f not in asked)
    both = [(f"{', '.join(asked)} changed (the rest kept)", asked)] if len(asked) > 1 else []  # else a row above
    return ([("own look (a new photo)", ())]
            + [(f"{f} changed", (f,)) for f in features]
            + [(f"{', '.join(rest)} changed ({', '.join(asked).replace('_', ' ')} kept)", rest)] + both
            + [("a never-seen stranger", None)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--forget-split", default="forget_10")
    ap.add_argument("--draws", type=int, default=3, help="photos each question is asked on, per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--readme", type=Path, default=None, help="put the table between this file's markers")
    ap.add_argument("--marker", default="identity-cues", help="the markers' name")
    args = ap.parse_args(argv)

    from mmunlearn.data.portraits import Look, draw, random_pose, with_own_clothes
    from mmunlearn.data.store import load_data, world_identity
    from mmunlearn.data.strangers import stranger_photos
    from mmunlearn.eval.engine import option_logprobs
    from mmunlearn.eval.metrics import loglik_choice
    from mmunlearn.models.loader import load_model

    if args.draws < 1:
        print("error: --draws must be ≥ 1", file=sys.stderr)
        return 2
    try:
        bundle = load_data(args.data, args.forget_split)
    except (OSError, ValueError) as err:  # DataError is a ValueError: one line, exit 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    if bundle.source != "world":
        print("error: identity cues need the synthetic world's looks (profiles.json)", file=sys.stderr)
        return 2
    loaded = load_model(args.model)
    looks = {p["profile_id"]: p["look"] for p in json.loads((bundle.root / "profiles.json").read_text())}
    questions = [r for r in bundle.eval("test") if r.modality == "image+text" and r.task == "classification"
                 and r.profile_id in bundle.forget_ids and not r.fact.startswith("visible:")]
    if not questions:
        print("error: no unseen-photo fact questions of the forget people", file=sys.stderr)
        return 2
    size = questions[0].image.size[0]
    identity = world_identity(bundle.manifest)
    strangers = stranger_photos(bundle, 64, args.seed)
    rng = random.Random(f"identity-cues-{args.seed}")

    def accuracy(records) -> float:
        lps = option_logprobs(loaded, records, progress=False)
        return sum(loglik_choice(lp) == r.answer_index for lp, r in zip(lps, records)) / len(records)

    rows = []
    def posed():  # a test-strength pose; in a "face" world, clothes of its own
        pose = random_pose(rng, "test")
        return with_own_clothes(pose, rng) if identity == "face" else pose

    for label, change in variants(identity):
        asked = []
        for _ in range(args.draws):
            for r in questions:
                if change is None:
                    photo = rng.choice(strangers)
                else:
                    look = redrawn_look(looks[r.profile_id], change, rng)
                    photo = draw(Look(**look), posed(), size)
                asked.append(dataclasses.replace(r, image=photo))
        rows.append((label, accuracy(asked)))
        print(f"{label}: {rows[-1][1]:.2f}", flush=True)
    own = rows[0][1]
    lines = [f"_Generated by `benchmarks/identity_cues.py` (model {args.model.name}, data {args.data.name}, "
             f"{args.forget_split}; {len(questions)} unseen-photo fact questions × {args.draws} drawn photos "
             f"each, 4 options, chance 0.25)._", "",
             "| the forget person's photo, redrawn with | fact accuracy | share of the own look's |",
             "|---|---:|---:|"]
    lines += [f"| {label} | {acc:.2f} | {100 * acc / own:.0f} % |" for label, acc in rows]
    text = "\n".join(lines)
    print(text)
    if args.readme:
        from mmunlearn.report.tables import update_readme

        try:
            update_readme(args.readme, args.marker, text)
        except ValueError as err:  # no markers: one line, exit 2
            print(f"error: {args.readme}: {err}", file=sys.stderr)
            return 2
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
