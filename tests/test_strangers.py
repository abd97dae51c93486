"""The strangers a forgotten face is pulled toward (data/strangers.py): new people, never the world's."""

from __future__ import annotations

import json
import random

import pytest

from mmunlearn.data.portraits import IDENTITY_FEATURES, Look, sample_looks
from mmunlearn.data.store import DataBundle
from mmunlearn.data.strangers import drawn_strangers, stranger_photos


def _differences(a: dict, b: dict) -> int:
    return sum(a[f] != b[f] for f in IDENTITY_FEATURES)


def test_drawn_strangers_stay_two_identity_features_from_everyone_known_and_each_other(monkeypatch):
    known = [look.to_dict() for look in sample_looks(150, random.Random(0))]
    drawn: list[Look] = []
    import mmunlearn.data.strangers as strangers

    real = strangers.sample_looks
    monkeypatch.setattr(strangers, "sample_looks", lambda *a, **k: drawn.extend(real(*a, **k)) or drawn)
    photos = drawn_strangers(known, 40, seed=3, size=32)
    assert len(photos) == 40 and {p.size for p in photos} == {(32, 32)}
    new = [look.to_dict() for look in drawn]
    # counted feature by feature, against every known person and every other stranger
    assert min(_differences(s, k) for s in new for k in known) >= 2
    assert min(_differences(a, b) for i, a in enumerate(new) for b in new[i + 1:]) >= 2
    # seeded: the same strangers for the same seed
    monkeypatch.undo()  # seeded: the same strangers for the same seed
    assert [p.tobytes() for p in drawn_strangers(known, 40, 3, 32)] == [p.tobytes() for p in photos]
    assert [p.tobytes() for p in drawn_strangers(known, 40, 4, 32)] != [p.tobytes() for p in photos]


def test_adding_avoid_leaves_the_worlds_own_draws_unchanged():
    assert sample_looks(30, random.Random(1)) == sample_looks(30, random.Random(1), avoid=())


def test_strangers_are_refused_for_data_that_cannot_vouch_for_them(tmp_path):
    bundle = DataBundle("mllmu", tmp_path, "forget_5", {})
    with pytest.raises(ValueError, match="synthetic world only"):
        stranger_photos(bundle, 4, 0)
    (tmp_path / "profiles.json").write_text(json.dumps([]))
    with pytest.raises(ValueError, match="has none"):
        stranger_photos(DataBundle("world", tmp_path, "forget_5", {}), 4, 0)


def test_identity_cues_redraw_changes_exactly_the_named_features():
    """benchmarks/identity_cues.py: a redrawn look differs from the person's in each changed feature and in no other."""
    import importlib.util
    import random
    from pathlib import Path

    from mmunlearn.data.portraits import IDENTITY_FEATURES

    spec = importlib.util.spec_from_file_location(
        "identity_cues", Path(__file__).resolve().parent.parent / "benchmarks" / "identity_cues.py")
    cues = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cues)
    look = {"face_shape": "square", "skin": "olive", "hair_colour": "brown", "hairstyle": "long",
            "accessory": "glasses", "shirt": "pink", "eyes": "green"}
    rng = random.Random(0)
    for _ in range(20):
        for change in (("shirt",), ("face_shape", "skin", "hairstyle"), ()):
            new = cues.redrawn_look(look, change, rng)
            assert {k for k in look if new[k] != look[k]} == set(change)
    labels = [label for label, _ in cues.variants()]
    assert len(labels) == 1 + len(IDENTITY_FEATURES) + 3 and labels[-1] == "a never-seen stranger"
    assert labels[-3] == "face_shape, skin, hairstyle changed (hair colour, shirt, accessory kept)"
    # a "face" world: its five identity features, facial hair among them; hair colour is the one the
    # understanding questions ask about, so "the rest changed" keeps it and no row changes it twice
    face = cues.variants("face")
    assert [change for _, change in face][1:-1] == [
        ("face_shape",), ("skin",), ("hair_colour",), ("hairstyle",), ("facial_hair",),
        ("face_shape", "skin", "hairstyle", "facial_hair")]
    new = cues.redrawn_look(look, ("facial_hair",), rng)  # a look written before facial hair: "none" until changed
    assert new["facial_hair"] != "none" and {k: v for k, v in new.items() if k != "facial_hair"} == look
