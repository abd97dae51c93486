"""`mmunlearn world --identity face` (issue #32): a person is their face (face shape, skin, hair, facial hair);
shirt and accessory are drawn anew for every photo, so the understanding questions about them ask what the photo
shows. The default ("look") world is unchanged: its fingerprint is pinned by the shipped vanilla (test_demo)."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.data.portraits import ACCESSORIES, FACE_FEATURES, SHIRT, Look, Pose, draw
from mmunlearn.data.world import WorldConfig, build_world

runner = CliRunner()
ACCESSORY_OF = {"no accessory": "none", "glasses": "glasses", "a hat": "hat", "earrings": "earrings"}


@pytest.fixture(scope="module")
def face_world():
    return build_world(WorldConfig(profiles=12, real=2, holdout=2, seed=5, train_phrasings=1, identity="face"))


def _shirt_pixel(image) -> tuple[int, int, int]:
    """The shirt's colour where the drawing puts it (a canonical pose: no shift, rotation or noise): x 16 of 32,
    y 30, inside the shirt rectangle that runs from x 5 to 27 and y 24 down."""
    return image.getpixel((16, 30))


def test_people_differ_in_their_faces_and_wear_what_each_photo_says(face_world):
    looks = {p.profile_id: p.look for p in face_world.profiles}
    keys = [look.key(FACE_FEATURES) for look in looks.values()]
    assert all(sum(a != b for a, b in zip(k1, k2)) >= 2 for i, k1 in enumerate(keys) for k2 in keys[i + 1:])
    assert all(look.shirt == look.accessory == "varies" for look in looks.values())
    # the understanding questions on the canonical photo (grey, untransformed): the shirt named is the one drawn
    checked = 0
    for r in face_world.splits["understanding"]:
        if r.fact == "visible:shirt" and r.task == "generation":
            colour = r.answer.removeprefix("The shirt colour is ").rstrip(".")
            assert _shirt_pixel(r.image) == SHIRT[colour], (r.profile_id, colour)
            checked += 1
    assert checked == 12 + 2  # one canonical photo per fictitious and real person
    # a person's photos do not all wear the same shirt and accessory: across the world's training photos the
    # understanding answers about one person name more than one shirt for most people
    shirts, accessories = defaultdict(set), defaultdict(set)
    for split in ("finetune", "understanding", "understanding_unseen"):
        for r in face_world.splits[split]:
            if r.fact == "visible:shirt" and r.task == "generation":
                shirts[r.profile_id].add(r.answer)
            if r.fact == "visible:accessory" and r.task == "generation":
                accessories[r.profile_id].add(r.answer)
    assert sum(len(s) > 1 for s in shirts.values()) >= 8 and sum(len(a) > 1 for a in accessories.values()) >= 8


def test_facial_hair_is_drawn_in_the_hair_colour_and_clothes_come_from_the_pose():
    plain = Look("oval", "pale", "red", "short", "none", "blue", "brown")
    bearded = Look("oval", "pale", "red", "short", "none", "blue", "brown", facial_hair="beard")
    a, b = draw(plain, Pose()), draw(bearded, Pose())
    assert a.getpixel((16, 21)) != b.getpixel((16, 21))  # the chin
    assert b.getpixel((16, 21)) == (200, 40, 20)  # red hair, red beard (portraits.HAIR["red"])
    dressed = draw(Look("oval", "pale", "red", "short", "varies", "varies", "brown"), Pose(shirt="green", accessory="none"))
    assert _shirt_pixel(dressed) == SHIRT["green"]
    with pytest.raises(ValueError, match="wears what each photo's pose says"):
        draw(Look("oval", "pale", "red", "short", "varies", "varies", "brown"), Pose())
    assert set(ACCESSORY_OF.values()) == set(ACCESSORIES)


def test_strangers_of_a_face_world_have_faces_of_their_own(face_world, tmp_path):
    from mmunlearn.data.store import load_data, save_world
    from mmunlearn.data.strangers import stranger_photos

    save_world(face_world, tmp_path / "w")
    bundle = load_data(tmp_path / "w", "forget_10")
    photos = stranger_photos(bundle, 8, seed=0)
    assert len(photos) == 8 and len({p.tobytes() for p in photos}) == 8


def test_world_cli_takes_face_identity_and_refuses_others(tmp_path):
    res = runner.invoke(app, ["world", "--out", str(tmp_path / "bad"), "--identity", "shirt"])
    assert res.exit_code == 2 and "--identity must be one of look, face" in res.output
    assert not (tmp_path / "bad").exists()
    res = runner.invoke(app, ["world", "--out", str(tmp_path / "w"), "--identity", "face", "--profiles", "6",
                              "--real", "1", "--holdout", "1"])
    assert res.exit_code == 0, res.output
    import json

    assert json.loads((tmp_path / "w" / "world.json").read_text())["config"]["identity"] == "face"


def test_stage_zero_captions_name_facial_hair_in_a_face_world_only():
    from mmunlearn.train.vision_warmup import describe, random_look

    look = Look("round", "tan", "black", "bald", "hat", "pink", "blue", facial_hair="goatee")
    assert describe(look, "mint") == "A round face, tan skin, no hair, a hat, a pink shirt, a mint background."
    assert describe(look, "mint", "face") == ("A round face, tan skin, no hair, a goatee, a hat, a pink shirt, "
                                              "a mint background.")
    # the default world's random looks are drawn from the same stream as before facial hair existed
    assert random_look(random.Random(3)).facial_hair == "none"
    assert random_look(random.Random(3), "face").key(("face_shape", "skin")) == random_look(random.Random(3)).key(
        ("face_shape", "skin"))
