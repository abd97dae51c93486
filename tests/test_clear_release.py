"""The CLEAR loader on a copy of the released layout (tests/fixtures_release.py), with and without
a TOFU folder. Expected values are counted by hand from the fixture's constants:

five authors, two photos each; forget01 = [Ilse], forget05 = [Ilse, Tomas], forget10 = [Ilse, Tomas,
Rin]; retain is the rest; 20 TOFU questions per author; forget10_perturbed one row short (5 of 6);
retain_perturbed = 3 photos of Delia and Omar; real_faces 2 rows, real_world 2 rows; TOFU:
retain_perturbed 4 questions each of Delia and Omar, 2 real authors, 3 world facts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fixtures_release import build_clear, build_tofu, image_cell, write_json_lines
from mmunlearn.data.clear import CAPTION_PROMPT, NAME_PROMPT, load_clear
from mmunlearn.data.errors import DataError
from mmunlearn.data.mllmu import find_split_files
from mmunlearn.data.store import load_data

ILSE, TOMAS, RIN, DELIA, OMAR = "Ilse Marrow", "Tomas Okafor", "Rin Halvorsen", "Delia Quist", "Omar Venn"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("release")
    return build_clear(base / "CLEAR"), build_tofu(base / "TOFU")


@pytest.fixture
def clear_copy(release, tmp_path) -> Path:
    return Path(shutil.copytree(release[0], tmp_path / "CLEAR"))


@pytest.fixture
def tofu_copy(release, tmp_path) -> Path:
    return Path(shutil.copytree(release[1], tmp_path / "TOFU"))


def rewrite(path: Path, edit) -> Path:
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
    return path


def shard(root: Path, config: str) -> Path:
    return root / config / "train-00000-of-00001.parquet"


def by(records, **match):
    return [r for r in records if all(getattr(r, k) == v for k, v in match.items())]


# ------------------------------------------------------------------------------------------------
# the fixture is the release's layout (guards against fixtures drifting toward the loader)
# ------------------------------------------------------------------------------------------------


def test_fixture_follows_the_release_schema(release):
    root, tofu = release
    cols = lambda config, k=0: pq.read_schema(sorted((root / config).glob("*.parquet"))[k]).names  # noqa: E731
    assert cols("forget10") == cols("retain90") == cols("full") == cols("data") == ["image", "caption", "name"]
    assert cols("forget10+tofu") == cols("full+tofu") == ["image", "caption", "question", "answer"]
    assert cols("forget01_perturbed") == ["image", "caption", "name", "perturbed_captions", "paraphrased_caption",
                                          "perturbed_names"]
    assert cols("forget05_perturbed") == ["image", "caption", "name", "paraphrased_caption", "perturbed_names",
                                          "perturbed_captions"]
    assert cols("real_faces") == ["image", "answer", "options"]
    assert cols("real_world") == ["question", "answer", "options", "image"]
    assert [p.name for p in find_split_files(root, "full", "X")] == ["train-00000-of-00002.parquet",
                                                                      "train-00001-of-00002.parquet"]
    assert len(find_split_files(root, "full+tofu", "X")) == 3 and len(find_split_files(root, "data", "X")) == 2
    assert pq.read_metadata(shard(root, "forget10")).num_rows == 6
    assert pq.read_metadata(shard(root, "forget10_perturbed")).num_rows == 5  # one row fewer than forget10
    plus = pq.read_table(shard(root, "forget10+tofu")).to_pylist()
    assert len(plus) == 66 and all(r["image"] is not None for r in plus[:6]) and all(r["image"] is None for r in plus[6:])
    first = json.loads((tofu / "forget10_perturbed.json").read_text().splitlines()[0])
    assert list(first) == ["question", "answer", "paraphrased_answer", "perturbed_answer", "paraphrased_question"]
    real = json.loads((tofu / "real_authors_perturbed.json").read_text().splitlines()[0])
    assert list(real) == ["question", "answer", "perturbed_answer"]


# ------------------------------------------------------------------------------------------------
# reading the release cold
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, counts", [
    # forget: photos + QA (unlearn) + perturbed photos + QA (eval); faces; retain likewise; real; real_world
    ("forget01", {"forget": 2 + 20 + 2 + 20, "forget_faces": 2, "retain": 8 + 80 + 3 + 80, "retain_faces": 3,
                  "real": 2, "real_world": 2}),
    ("forget05", {"forget": 4 + 40 + 4 + 40, "forget_faces": 4, "retain": 6 + 60 + 3 + 60, "retain_faces": 3,
                  "real": 2, "real_world": 2}),
    ("forget10", {"forget": 6 + 60 + 5 + 60, "forget_faces": 5, "retain": 4 + 40 + 3 + 40, "retain_faces": 3,
                  "real": 2, "real_world": 2}),
])
def test_each_forget_split_reads_cold(release, split, counts):
    out = load_clear(release[0], forget_split=split)
    assert {k: len(v) for k, v in out.splits.items()} == counts
    for name, recs in out.splits.items():
        assert len({r.id for r in recs}) == len(recs)
        for r in recs:
            r.validate()
            assert r.split == name and r.task == "generation"
            assert (r.image is not None) == (r.modality == "image+text")
            if r.image is not None:
                assert r.image.mode == "RGB"


@pytest.mark.parametrize("split, forget, retain", [
    ("forget01", {ILSE}, {TOMAS, RIN, DELIA, OMAR}),
    ("forget05", {ILSE, TOMAS}, {RIN, DELIA, OMAR}),
    ("forget10", {ILSE, TOMAS, RIN}, {DELIA, OMAR}),
])
def test_nested_forget_sets_and_retain_is_the_rest(release, split, forget, retain):
    bundle = load_data(release[0], split.replace("forget", "forget_"))
    assert bundle.source == "clear"
    assert bundle.forget_ids == forget and bundle.retain_ids == retain
    assert {r.profile_id for r in bundle.splits["forget_faces"]} <= forget
    assert {r.profile_id for r in bundle.splits["retain_faces"]} == {DELIA, OMAR}


def test_photos_names_and_captions(release):
    out = load_clear(release[0], "forget10").splits
    photos = by(out["forget"], phase="unlearn", modality="image+text")
    assert len(photos) == 6  # from forget10 only: the +tofu file's photo rows are not read twice
    assert photos[0].question == CAPTION_PROMPT and photos[0].answer == "Ilse Marrow reads by a window."
    assert photos[0].profile_id == photos[0].name == ILSE
    assert photos[0].image.getpixel((0, 0)) == (20, 30, 200)  # author 0, photo 0
    assert photos[5].answer == "Rin Halvorsen walks along a pier." and photos[5].image.getpixel((0, 0)) == (100, 130, 140)


def test_captioning_and_face_recognition_are_separate_cells(release):
    out = load_clear(release[0], "forget10").splits
    captions = by(out["forget"], phase="eval", modality="image+text")
    faces = out["forget_faces"]
    assert len(captions) == 5 and len(faces) == 5 and all(r.question == CAPTION_PROMPT for r in captions)
    assert captions[0].answer == "Ilse Marrow reads by a window."
    assert captions[0].paraphrased_answer == "Paraphrase: Ilse Marrow reads by a window."
    assert captions[0].perturbed_answers == ["Ilse Marrow sleeps on a bus.", "Ilse Marrow rides a horse."]
    assert all(r.question == NAME_PROMPT and r.phase == "eval" and r.split == "forget_faces" for r in faces)
    assert [r.answer for r in faces] == [ILSE, ILSE, TOMAS, TOMAS, RIN]
    # the true name listed among the perturbed names (odd rows) is dropped
    assert faces[0].perturbed_answers == [TOMAS, RIN] and faces[1].perturbed_answers == [TOMAS, RIN]
    assert faces[2].perturbed_answers == [ILSE, RIN] and faces[2].paraphrased_answer == TOMAS
    assert faces[4].image.getpixel((0, 0)) == (100, 30, 140)  # Rin's first photo (her second row was dropped)
    assert not by(out["forget"], question=NAME_PROMPT)


def test_both_perturbed_column_orders_read_the_same(release):
    one = by(load_clear(release[0], "forget01").splits["forget"], phase="eval", modality="image+text")
    five = by(load_clear(release[0], "forget05").splits["forget"], phase="eval", modality="image+text")
    assert [(r.answer, r.paraphrased_answer, r.perturbed_answers) for r in one] == \
        [(r.answer, r.paraphrased_answer, r.perturbed_answers) for r in five[:2]]
    assert five[2].answer == "Tomas Okafor reads by a window."


def test_text_qa_rows_are_matched_to_their_author(release):
    forget = load_clear(release[0], "forget10").splits["forget"]
    text = by(forget, modality="text")
    assert len(text) == 120 and len(by(text, phase="unlearn")) == 60 and all(r.image is None for r in text)
    evals = by(text, phase="eval")
    assert [r.profile_id for r in evals[:20]] == [ILSE] * 20
    assert [r.profile_id for r in evals[20:40]] == [TOMAS] * 20 and [r.profile_id for r in evals[40:]] == [RIN] * 20
    # the row naming nobody and the row naming two forget authors go to their block's author
    assert [r.profile_id for r in evals if r.question == "What genre does this author mostly write?"] == [ILSE, TOMAS, RIN]
    assert by(evals, question="Did Ilse Marrow ever meet Tomas Okafor?")[0].profile_id == ILSE
    assert evals[0].answer == "Fact 0 of Ilse Marrow concerns Tollhaven." and evals[0].name == ILSE


def test_real_faces_and_real_world_are_separate_splits(release):
    out = load_clear(release[0], "forget10").splits
    faces, world = out["real"], out["real_world"]
    assert [(r.question, r.answer) for r in faces] == [(NAME_PROMPT, "Famous Actor"), (NAME_PROMPT, "Known Singer")]
    assert faces[0].perturbed_answers == ["Other Actor", "Third Actor", "Fourth Actor"]
    assert faces[0].paraphrased_answer == "Famous Actor" and faces[0].image.getpixel((0, 0)) == (5, 5, 5)
    assert faces[1].perturbed_answers == ["Wrong One", "Wrong Two", "Wrong Three"]
    assert [(r.question, r.answer) for r in world] == [("Which city is shown?", "Paris"), ("What animal is this?", "A cat")]
    assert world[1].perturbed_answers == ["A dog", "A cow", "A fox"] and world[1].image.getpixel((0, 0)) == (8, 8, 8)
    assert all(r.population == "real" and r.phase == "eval" and r.modality == "image+text" for r in faces + world)


# ------------------------------------------------------------------------------------------------
# the text truth ratio: TOFU
# ------------------------------------------------------------------------------------------------


def test_without_tofu_every_text_cell_says_why(release, capsys):
    bundle = load_data(release[0], "forget_10")
    assert set(bundle.notes) == {"forget/text", "retain/text", "real/text", "real_world/text"}
    assert bundle.notes["forget/text"].startswith("truth_ratio absent") and "--tofu" in bundle.notes["forget/text"]
    assert bundle.notes["real/text"].startswith("absent") and "real_authors_perturbed" in bundle.notes["real/text"]
    assert "world_facts_perturbed" in bundle.notes["real_world/text"]
    assert not [r for r in bundle.splits["forget"] if r.modality == "text" and r.perturbed_answers]
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("warning: CLEAR: no --tofu folder") and "truth_ratio" in err[0]


def test_tofu_supplies_the_text_truth_ratio_inputs(release, capsys):
    bundle = load_data(release[0], "forget_10", tofu=release[1])
    forget_text = by(bundle.splits["forget"], modality="text", phase="eval")
    assert len(forget_text) == 60 and all(r.paraphrased_answer and r.perturbed_answers for r in forget_text)
    first = forget_text[0]
    assert first.paraphrased_answer == "In other words: Fact 0 of Ilse Marrow concerns Tollhaven."
    assert first.perturbed_answers == ["Rumour 0 of Ilse Marrow concerns Tollhaven.", "Nothing about Fact 0 of Il",
                                       "Unknown."]
    genre = by(forget_text, question="What genre does this author mostly write?")[0]
    assert genre.perturbed_answers == ["Nothing about Mostly myste", "Unknown."]  # the copy of the answer is dropped
    assert not [r for r in bundle.splits["forget"] if r.phase == "unlearn" and r.perturbed_answers]
    retain_text = by(bundle.splits["retain"], modality="text", phase="eval")
    enriched = [r for r in retain_text if r.perturbed_answers]
    assert len(retain_text) == 40 and len(enriched) == 8
    assert {r.profile_id for r in enriched} == {DELIA, OMAR}
    assert bundle.notes == {"retain/text": "truth_ratio over 8 of 40 questions: the others are not in TOFU's retain_perturbed"}
    assert "warning" not in capsys.readouterr().err


def test_tofu_real_authors_and_world_facts(release):
    splits = load_clear(release[0], "forget10", tofu=release[1]).splits
    authors = by(splits["real"], modality="text")
    assert [(r.question, r.answer, r.paraphrased_answer) for r in authors] == [
        ("Who wrote 'Moby-Dick'?", "Herman Melville", "Herman Melville"),
        ("Who wrote 'Dune'?", "Frank Herbert", "Frank Herbert")]
    assert authors[0].perturbed_answers == ["Edgar Allan Poe", "Mark Twain", "Jack London"]
    assert authors[1].perturbed_answers == ["Arthur C. Clarke", "Philip K. Dick"]
    facts = by(splits["real_world"], modality="text")
    assert [r.answer for r in facts] == ["Paris", "Eight", "The Pacific"]
    assert all(r.population == "real" and r.phase == "eval" and r.image is None for r in authors + facts)
    assert len(by(splits["real"], modality="image+text")) == 2 and len(by(splits["real_world"], modality="image+text")) == 2


def test_tofu_hub_parquet_export_reads_the_same(release, tmp_path):
    import pyarrow as pa

    tofu = tmp_path / "TOFU"
    for src in release[1].glob("*.json"):
        rows = [json.loads(line) for line in src.read_text().splitlines()]
        (tofu / src.stem / "train").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), tofu / src.stem / "train" / "0000.parquet")
    a = load_clear(release[0], "forget05", tofu=release[1]).splits
    b = load_clear(release[0], "forget05", tofu=tofu).splits
    assert [(r.id, r.paraphrased_answer, r.perturbed_answers) for r in a["forget"]] == \
        [(r.id, r.paraphrased_answer, r.perturbed_answers) for r in b["forget"]]
    assert len(by(b["real_world"], modality="text")) == 3


def test_tofu_question_unknown_to_clear_is_skipped_with_a_warning(release, tofu_copy):
    path = tofu_copy / "forget10_perturbed.json"
    with path.open("a") as fh:
        fh.write(json.dumps({"question": "Who is Zed Quo?", "answer": "Nobody.", "paraphrased_answer": "No one.",
                             "perturbed_answer": ["Someone."]}) + "\n")
    out = load_clear(release[0], "forget10", tofu=tofu_copy)
    assert [w for w in out.warnings if w.startswith("TOFU")] == [
        f"TOFU: 1 of forget10_perturbed's 61 rows match no question of forget10+tofu and are skipped "
        f"(first: TOFU: {path} row 60)"]
    assert len([r for r in out.splits["forget"] if r.perturbed_answers and r.modality == "text"]) == 60


def test_tofu_folder_of_another_release_is_an_error(release, tofu_copy):
    path = write_json_lines(tofu_copy / "forget10_perturbed.json", [
        {"question": f"Unrelated question {j}?", "answer": "No.", "paraphrased_answer": "Nope.",
         "perturbed_answer": ["Yes."]} for j in range(3)])
    with pytest.raises(DataError) as err:
        load_clear(release[0], "forget10", tofu=tofu_copy)
    msg = str(err.value)
    assert str(path) in msg and "row 0" in msg and "forget10+tofu" in msg and "\n" not in msg


def test_tofu_retain_question_of_a_forget_author_is_an_error(release, tofu_copy):
    # forget10's Rin question given as a retain one while forgetting forget10's people
    row = json.loads((tofu_copy / "forget10_perturbed.json").read_text().splitlines()[45])
    write_json_lines(tofu_copy / "retain_perturbed.json", [row])
    with pytest.raises(DataError, match="is a question of the forget set, not of retain90[+]tofu"):
        load_clear(release[0], "forget10", tofu=tofu_copy)
    assert load_clear(release[0], "forget01", tofu=tofu_copy).splits  # Rin is a retain author there


@pytest.mark.parametrize("edit, needle", [
    (lambda t: (t / "world_facts_perturbed.json").unlink(), "world_facts_perturbed"),
    (lambda t: (t / "forget10_perturbed.json").write_text('{"question": "q", "answer": "a"\n'), "row 0 is not valid JSON"),
    (lambda t: write_json_lines(t / "real_authors_perturbed.json", [{"question": "q", "answer": "a"}]),
     "missing field 'perturbed_answer'"),
    (lambda t: write_json_lines(t / "forget10_perturbed.json", [{"question": "q", "answer": "a", "paraphrased_answer": None,
                                                                 "perturbed_answer": ["b"]}]),
     "'paraphrased_answer' is missing"),
])
def test_bad_tofu_folder_is_one_line(release, tofu_copy, edit, needle):
    edit(tofu_copy)
    with pytest.raises(DataError) as err:
        load_clear(release[0], "forget10", tofu=tofu_copy)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_tofu_folder_must_exist_and_is_for_clear_only(release, tmp_path):
    with pytest.raises(DataError, match="--tofu .* does not exist"):
        load_clear(release[0], "forget10", tofu=tmp_path / "nope")
    from fixtures_release import build_mllmu

    with pytest.raises(DataError, match="CLEAR folder only"):
        load_data(build_mllmu(tmp_path / "M"), "forget_5", tofu=release[1])


# ------------------------------------------------------------------------------------------------
# a missing text side or retain_perturbed: warnings naming what is missing
# ------------------------------------------------------------------------------------------------


def test_missing_text_side_is_a_warning_naming_the_folders(tmp_path, capsys):
    root = build_clear(tmp_path / "CLEAR", plus_tofu=False)
    bundle = load_data(root, "forget_10")
    assert not [r for recs in bundle.splits.values() for r in recs if r.modality == "text"]
    assert bundle.notes["forget/text"].startswith("absent: no forget10+tofu folder")
    assert bundle.notes["retain/text"].startswith("absent: no retain90+tofu folder")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    missing = [line for line in err if "text side missing" in line]
    assert len(missing) == 1 and "forget10+tofu, retain90+tofu" in missing[0]
    assert len(bundle.splits["forget"]) == 6 + 5  # photos only


def test_one_missing_plus_tofu_folder(clear_copy):
    shutil.rmtree(clear_copy / "retain90+tofu")
    out = load_clear(clear_copy, "forget10")
    assert len(by(out.splits["forget"], modality="text")) == 120 and not by(out.splits["retain"], modality="text")
    assert [w for w in out.warnings if "text side missing" in w] == [
        f"CLEAR: text side missing: no retain90+tofu folder in {clear_copy}; the retain/text cells are absent"]


def test_missing_retain_perturbed(clear_copy):
    shutil.rmtree(clear_copy / "retain_perturbed")
    out = load_clear(clear_copy, "forget10")
    captions = by(out.splits["retain"], phase="eval", modality="image+text")
    assert len(captions) == 4 and all(r.perturbed_answers == [] for r in captions)  # retain90's photos
    assert out.splits["retain_faces"] == []
    assert "truth_ratio absent" in out.notes["retain/image+text"] and "retain_faces/image+text" in out.notes
    assert any("no retain_perturbed" in w for w in out.warnings)


def test_photo_rows_of_plus_tofu_that_differ_are_a_warning(clear_copy):
    rewrite(shard(clear_copy, "forget10+tofu"), lambda rows: rows[0].update(caption="Someone else entirely."))
    out = load_clear(clear_copy, "forget10")
    assert [w for w in out.warnings if "photo rows differ" in w] == [
        "CLEAR: forget10+tofu's 6 photo rows differ from forget10's 6 (1 captions not in forget10); photos and names "
        "are taken from forget10"]


def test_full_is_checked_to_be_forget_plus_retain(clear_copy):
    extra = {"image": image_cell((1, 1, 1)), "caption": "A stranger.", "name": "Stranger Danger"}
    rewrite(clear_copy / "full" / "train-00001-of-00002.parquet", lambda rows: rows.append(extra))
    out = load_clear(clear_copy, "forget10")
    assert [w for w in out.warnings if "neither" in w] == [
        "CLEAR: 1 people of full are in neither forget10 nor retain90 (Stranger Danger): is the folder one release?"]


def test_qa_block_naming_nobody_is_reported(clear_copy):
    def add_block(rows):
        rows.extend({"image": None, "caption": None, "question": f"What is unnamed fact {j}?", "answer": f"Unnamed {j}."}
                    for j in range(20))
    rewrite(shard(clear_copy, "forget01+tofu"), add_block)
    out = load_clear(clear_copy, "forget01")
    text = by(out.splits["forget"], modality="text", phase="eval")
    assert [r.profile_id for r in text[20:]] == ["clear-forget-qa-block1"] * 20
    assert any("1 block(s) of 20 TOFU questions in forget01+tofu name none" in w for w in out.warnings)


# ------------------------------------------------------------------------------------------------
# bad input: one-line DataError naming file, row and field
# ------------------------------------------------------------------------------------------------


def test_plus_tofu_without_name_column_is_the_release_and_reads(release):
    assert "name" not in pq.read_schema(shard(release[0], "forget10+tofu")).names
    assert len(load_clear(release[0], "forget10").splits["forget"]) == 131


def test_photo_config_without_name_is_an_error(clear_copy):
    table = pq.read_table(shard(clear_copy, "forget10")).drop_columns(["name"])
    pq.write_table(table, shard(clear_copy, "forget10"))
    with pytest.raises(DataError) as err:
        load_clear(clear_copy, "forget10")
    assert str(shard(clear_copy, "forget10")) in str(err.value) and "'name'" in str(err.value)


def test_missing_perturbed_field_names_file_and_field(clear_copy):
    path = shard(clear_copy, "forget10_perturbed")
    pq.write_table(pq.read_table(path).drop_columns(["perturbed_names"]), path)
    with pytest.raises(DataError) as err:
        load_clear(clear_copy, "forget10")
    assert str(path) in str(err.value) and "'perturbed_names'" in str(err.value)


def test_corrupt_image_names_file_and_row(clear_copy):
    path = rewrite(shard(clear_copy, "retain90"), lambda rows: rows[1].update(image={"bytes": b"\xff\xd8 junk", "path": None}))
    with pytest.raises(DataError) as err:
        load_clear(clear_copy, "forget10")
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and "corrupt image" in msg and "\n" not in msg


def test_null_question_in_a_qa_row(clear_copy):
    path = rewrite(shard(clear_copy, "forget10+tofu"), lambda rows: rows[7].update(question=None))
    with pytest.raises(DataError, match=r"row 7: field 'question' is missing") as err:
        load_clear(clear_copy, "forget10")
    assert str(path) in str(err.value)


def test_plus_tofu_without_qa_rows(clear_copy):
    rewrite(shard(clear_copy, "forget10+tofu"), lambda rows: rows.__delitem__(slice(6, None)))
    with pytest.raises(DataError, match="forget10\\+tofu has no question/answer rows"):
        load_clear(clear_copy, "forget10")


def test_perturbed_photo_of_a_retain_person(clear_copy):
    rewrite(shard(clear_copy, "forget10_perturbed"), lambda rows: rows[0].update(name=DELIA))
    with pytest.raises(DataError, match="row 0: the photo is of 'Delia Quist', who is in the retain set"):
        load_clear(clear_copy, "forget10")


def test_retain_perturbed_photo_of_a_forget_person(clear_copy):
    rewrite(shard(clear_copy, "retain_perturbed"), lambda rows: rows[2].update(name=RIN))
    with pytest.raises(DataError, match="row 2: the photo is of 'Rin Halvorsen', who is in the forget set"):
        load_clear(clear_copy, "forget10")
    assert load_clear(clear_copy, "forget05").splits  # Rin is a retain person there


def test_forget_and_retain_sharing_a_person(clear_copy):
    extra = {"image": image_cell((9, 9, 9)), "caption": "Ilse again.", "name": ILSE}
    rewrite(shard(clear_copy, "retain90"), lambda rows: rows.append(extra))
    with pytest.raises(DataError, match="forget10 and retain90 share people: Ilse Marrow"):
        load_clear(clear_copy, "forget10")


@pytest.mark.parametrize("config", ["forget10", "retain90", "forget10_perturbed", "real_faces", "real_world"])
def test_missing_required_folder_is_named(clear_copy, config):
    shutil.rmtree(clear_copy / config)
    with pytest.raises(DataError, match=f"no parquet file for split '{config.replace('+', '[+]')}'"):
        load_clear(clear_copy, "forget10")


def test_git_lfs_pointer_instead_of_parquet(clear_copy):
    path = shard(clear_copy, "real_world")
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(DataError, match="is a Git LFS pointer, not the parquet file: run `git lfs pull`") as err:
        load_clear(clear_copy, "forget10")
    assert str(path) in str(err.value)


def test_missing_folder_and_bad_split(release, tmp_path):
    with pytest.raises(DataError, match="therem/CLEAR"):
        load_clear(tmp_path / "absent")
    with pytest.raises(DataError, match="forget01, forget05, forget10"):
        load_clear(release[0], forget_split="forget20")
