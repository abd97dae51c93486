"""Photos of people nobody has seen: the target a forgotten face should look like.

A method that pulls the model's answers on a forget person's photos toward what θ0 answers on a stranger's
photo needs strangers that are in no population at all, not the world's `holdout` people: those are the
evaluation's strangers (membership inference, the identity ranking's baseline), and training toward them
would grade a method on the photos it was shaped by. So the strangers are drawn fresh, at least two identity
features away from every person of the world (holdout included), each in one photo posed as a test photo. A
"face" identity world has fewer faces to draw from (five features, 150 people two apart already), so its strangers
are one feature away, in clothes of their own.
"""

from __future__ import annotations

import json
import random
from PIL import Image

from .portraits import IDENTITIES, draw, random_pose, sample_looks, with_own_clothes
from .store import DataBundle, world_identity


def drawn_strangers(known_looks: list[dict], n: int, seed: int, size: int, identity: str = "look") -> list[Image.Image]:
    """`n` photos of new people: looks two identity features (one under "face" identity) away from each other and
    from `known_looks`."""
    rng = random.Random(f"strangers-{seed}")
    features = IDENTITIES[identity]
    avoid = [tuple(look.get(f, "none") for f in features) for look in known_looks]
    looks = sample_looks(n, rng, min_distance=1 if identity == "face" else 2, avoid=avoid, identity=identity)
    photos = []
    for look in looks:
        pose = random_pose(rng, "test")
        if identity == "face":
            pose = with_own_clothes(pose, rng)
        photos.append(draw(look, pose, size))
    return photos


def stranger_photos(bundle: DataBundle, n: int, seed: int) -> list[Image.Image]:
    """Photos of `n` people the data does not hold, the size of its photos. Drawn for the synthetic world,
    whose looks are known (profiles.json); other data has no stranger it can vouch for."""
    if bundle.source != "world":
        raise ValueError(f"stranger targets need photos of people nobody has seen; they are drawn for the synthetic "
                         f"world only (this data is {bundle.source!r})")
    profiles = json.loads((bundle.root / "profiles.json").read_text())
    photo = next((r.image for recs in bundle.splits.values() for r in recs if r.image is not None), None)
    if photo is None:
        raise ValueError("stranger targets need the data's photos, and it has none")
    return drawn_strangers([p["look"] for p in profiles], n, seed, photo.size[0], world_identity(bundle.manifest))
