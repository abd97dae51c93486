import hashlib
import json
from collections import Counter

import pytest

from mmunlearn.data.errors import DataError
from mmunlearn.data.store import load_data, save_world
from mmunlearn.data.world import QUESTIONS, WorldConfig, build_world


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_gives_byte_identical_world(tmp_path):
    cfg = WorldConfig(profiles=6, real=3, holdout=2, seed=7)
    a, b = save_world(build_world(cfg), tmp_path / "a"), save_world(build_world(cfg), tmp_path / "b")
    assert _digest(a) == _digest(b)
    c = save_world(build_world(WorldConfig(profiles=6, real=3, holdout=2, seed=8)), tmp_path / "c")
    assert _digest(a) != _digest(c)


def test_world_layout_and_manifest(small_world):
    manifest = json.loads((small_world / "world.json").read_text())
    assert manifest["seed"] == 0
    for name in ("forget_5", "forget_10", "forget_15", "retain_95", "retain_90", "retain_85", "test", "real",
                 "understanding", "understanding_unseen", "holdout", "pretrain", "finetune"):
        assert (small_world / "data" / f"{name}.parquet").is_file(), name
    ids = manifest["ids"]
    assert set(ids["forget_5"]) <= set(ids["forget_10"]) <= set(ids["forget_15"])
    for pct in (5, 10, 15):
        assert not set(ids[f"forget_{pct}"]) & set(ids[f"retain_{100 - pct}"])
        assert set(ids[f"forget_{pct}"]) | set(ids[f"retain_{100 - pct}"]) == set(ids["fictitious"])
    profiles = json.loads((small_world / "profiles.json").read_text())
    assert len(profiles) == 6 + 4 + 3
    assert all(len(p["facts"]) >= 6 for p in profiles)


def test_records_cover_tasks_modalities_and_keep_phrasings_apart(small_world):
    b = load_data(small_world, "forget_15")
    forget = b.splits["forget"]
    combos = Counter((r.task, r.modality) for r in b.eval("forget"))
    for task in ("generation", "classification", "cloze"):
        for modality in ("image+text", "text"):
            assert combos[(task, modality)] > 0, (task, modality)
    train_q = {r.question for r in b.train("forget")} | {r.question for r in b.splits["finetune"]}
    eval_q = {r.question for r in b.eval("forget")} | {r.question for r in b.eval("test")}
    assert train_q and eval_q and not train_q & eval_q
    assert all(r.phase in ("unlearn", "eval") for r in forget)
    # the text-only modality names the person and shows no photo; image+text shows the photo, no name
    for r in b.eval("forget"):
        if r.modality == "text":
            assert r.image is None and r.name in r.question
        else:
            assert r.image is not None and r.name not in r.question
    # the three phrasing styles never share a template
    for styles in QUESTIONS.values():
        assert not set(styles["train"]) & set(styles["eval"]) and not set(styles["eval"]) & set(styles["test"])


def test_eval_option_letters_are_balanced(small_world):
    b = load_data(small_world, "forget_10")
    letters = Counter(r.answer_index for r in b.eval("retain") if r.task == "classification")
    assert set(letters) == {0, 1, 2, 3}
    assert max(letters.values()) - min(letters.values()) <= 1


def test_test_split_uses_transformed_photos_and_holdout_is_never_trained(small_world):
    b = load_data(small_world, "forget_10")
    canonical = {r.profile_id: r.image.tobytes() for r in b.eval("forget") if r.image is not None}
    test_imgs = [r for r in b.eval("test") if r.profile_id in canonical and r.image is not None]
    assert test_imgs and all(r.image.tobytes() != canonical[r.profile_id] for r in test_imgs)
    holdout_ids = {r.profile_id for r in b.splits["holdout"]}
    trained = {r.profile_id for r in b.splits["pretrain"] + b.splits["finetune"]}
    assert holdout_ids and not holdout_ids & trained
    assert {r.population for r in b.splits["real"]} == {"real"}
    und = b.eval("understanding")
    assert {r.profile_id for r in und} & b.forget_ids and {r.profile_id for r in und} & b.retain_ids


def test_unseen_understanding_asks_about_a_test_photo_never_trained_on(small_world):
    from mmunlearn.data.portraits import random_pose

    b = load_data(small_world, "forget_10")
    und = b.eval("understanding_unseen")
    assert {r.profile_id for r in und} == b.forget_ids | b.retain_ids  # every fictitious person
    test_photos = {}  # the first test photo of each person: the one drawn with pose "<id>-test-0"
    for r in b.eval("test"):
        if r.image is not None:
            test_photos.setdefault(r.profile_id, set()).add(r.image.tobytes())
    trained = {r.image.tobytes() for r in b.splits["finetune"] if r.image is not None}
    for r in und:
        assert r.image.tobytes() not in trained
        if r.profile_id in test_photos:  # the test split holds the forget people only
            assert r.image.tobytes() in test_photos[r.profile_id]
        if r.fact == "visible:background":
            import random

            expected = random_pose(random.Random(f"{r.profile_id}-test-0"), "test").background
            assert r.answer == expected or r.answer.endswith(f" {expected}.")


def test_truth_ratio_inputs_exist(small_world):
    b = load_data(small_world, "forget_10")
    gen = [r for r in b.eval("forget") if r.task == "generation"]
    assert gen and all(r.paraphrased_answer and len(r.perturbed_answers) == 3 for r in gen)
    assert all(r.answer not in r.perturbed_answers for r in gen)


def test_identity_is_not_the_background():
    from mmunlearn.data.portraits import Pose, draw, sample_looks
    import random

    look = sample_looks(1, random.Random(0))[0]
    a, b = draw(look, Pose(background="grey")), draw(look, Pose(background="mint"))
    assert a.tobytes() != b.tobytes()
    # the face region is identical whatever the background
    assert a.crop((12, 10, 20, 18)).tobytes() == b.crop((12, 10, 20, 18)).tobytes()


def test_missing_or_wrong_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_data(tmp_path / "nope")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="neither a world"):
        load_data(tmp_path / "junk")


def test_unknown_forget_split_is_refused(small_world):
    with pytest.raises(DataError, match="forget_99"):
        load_data(small_world, "forget_99")


def _world_with_edited_rows(world, tmp_path, split, edit):
    """A copy of `world` whose `split` parquet rows went through `edit(rows)` (in place)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    path = copy / "data" / f"{split}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return copy


def test_corrupt_image_names_file_and_row(small_world, tmp_path):
    def corrupt_first_image(rows):
        row = next(r for r in rows if r["image"] is not None)
        row["image"] = {"bytes": b"not a png", "path": None}

    copy = _world_with_edited_rows(small_world, tmp_path, "real", corrupt_first_image)
    with pytest.raises(DataError, match=r"real\.parquet: row \d+ .*corrupt image"):
        load_data(copy, "forget_10")


def test_record_without_answer_is_refused(small_world, tmp_path):
    def drop_an_answer(rows):
        next(r for r in rows if r["task"] == "generation")["answer"] = ""

    copy = _world_with_edited_rows(small_world, tmp_path, "holdout", drop_an_answer)
    with pytest.raises(DataError, match="without an answer"):
        load_data(copy, "forget_10")


def test_training_augmentation_moves_the_person_like_a_test_photo():
    import numpy as np

    from mmunlearn.data.portraits import Look, Pose, augment, draw

    look = Look("round", "tan", "red", "short", "glasses", "blue", "brown")
    img = draw(look, Pose(background="mint"), 32)
    rng = np.random.default_rng(0)
    outs = [augment(img, rng, geometric=1.0) for _ in range(4)]
    assert all(o.size == img.size and o.mode == "RGB" for o in outs)
    base = np.asarray(img, dtype=np.float32)
    # strong transforms move pixels far more than the mild jitter does
    strong = np.mean([np.abs(np.asarray(o, dtype=np.float32) - base).mean() for o in outs])
    mild = np.mean([np.abs(np.asarray(augment(img, rng, geometric=0.0), dtype=np.float32) - base).mean()
                    for _ in range(4)])
    assert strong > 2 * mild


def test_stage0_captions_name_every_drawn_feature():
    from mmunlearn.data.portraits import Look
    from mmunlearn.train.vision_warmup import describe

    caption = describe(Look("square", "olive", "purple", "mohawk", "hat", "pink", "blue"), "mint")
    for word in ("square", "olive", "purple", "mohawk", "a hat", "pink shirt", "mint background"):
        assert word in caption
    assert "no hair" in describe(Look("oval", "dark", "black", "bald", "none", "red", "green"), "grey")


def test_cli_train_phrasings_gives_every_training_phrasing(tmp_path):
    from typer.testing import CliRunner

    from mmunlearn.cli import app

    runner = CliRunner()
    args = ["world", "--profiles", "3", "--real", "1", "--holdout", "1"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "w3")])  # the default: all three
    assert res.exit_code == 0, res.output
    recs = load_data(tmp_path / "w3").splits["finetune"]
    asked = {}
    for r in recs:
        if r.task == "generation" and r.modality == "text":
            asked.setdefault((r.profile_id, r.fact), set()).add(r.question)
    assert asked and all(len(q) == 3 for q in asked.values()), asked
    res = runner.invoke(app, args + ["--train-phrasings", "1", "--out", str(tmp_path / "w1")])
    assert res.exit_code == 0, res.output
    one = load_data(tmp_path / "w1").splits["finetune"]
    assert len([r for r in one if r.fact != "name" and not r.fact.startswith("visible")]) * 3 == len(
        [r for r in recs if r.fact != "name" and not r.fact.startswith("visible")])
    res = runner.invoke(app, args + ["--train-phrasings", "0", "--out", str(tmp_path / "w0")])
    assert res.exit_code != 0 and "--train-phrasings" in res.output
    assert not (tmp_path / "w0").exists()
