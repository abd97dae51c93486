"""MLLMU-Bench and CLEAR loaders on tiny parquet fixtures built here, in the released schemas."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmunlearn.data.clear import CAPTION_PROMPT, NAME_PROMPT, load_clear
from mmunlearn.data.errors import DataError
from mmunlearn.data.mllmu import find_split_files, load_mllmu
from mmunlearn.data.record import Record


# ------------------------------------------------------------------------------------------
# fixture builders
# ------------------------------------------------------------------------------------------


def png(color: tuple[int, int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (6, 6), color if mode == "RGB" else color[0]).save(buf, format="PNG")
    return buf.getvalue()


def cell(color, mode: str = "RGB") -> dict:
    return {"bytes": png(color, mode), "path": None}


def write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


PEOPLE = {"001": ("Ava Stone", (200, 10, 10)), "002": ("Ben Kole", (10, 200, 10)), "003": ("Cy Dunn", (10, 10, 200))}
CELEBS = {"c1": ("Famous One", (120, 120, 0)), "c2": ("Famous Two", (0, 120, 120))}


def metadata(pid: str) -> str:
    return json.dumps([
        {"ID": pid, "Question": "What is this person's job?", "Answer": f"Job of {pid}."},
        {"ID": pid, "Question": "Where was this person born?", "Answer": f"Town of {pid}."},
    ])


def eval_fields(pid: str, name: str) -> dict:
    opts = {"A": f"{pid}-a", "B": f"{pid}-b", "C": f"{pid}-c", "D": f"{pid}-d"}
    return {
        "biography": json.dumps({"Name": name, "Born": "Somewhere"}),
        "Classification_Task": {
            "Image_Textual_Questions": [{"Question": "Which job does the person in the image have?", "Options": opts, "Correct_Answer": "C"}],
            "Pure_Text_Questions": [{"Question": f"Which job does {name} have?", "Options": opts, "Correct_Answer": "A"}],
        },
        "Generation_Task": [
            {"Question": "Where does the person in the image live?", "Ground_Truth": f"In town {pid}.", "Type": "Image_Textual"},
            {"Question": f"Where does {name} live?", "Ground_Truth": f"In town {pid}.", "Type": "Pure_Text"},
        ],
        "Mask_Task": [
            {"Question": "The person in the image works as a ___.", "Ground_Truth": f"job{pid}", "Type": "Image_Textual"},
            {"Question": f"{name} works as a ___.", "Ground_Truth": f"job{pid}", "Type": "Pure_Text"},
        ],
    }


def train_row(pid: str) -> dict:
    return {"image": cell(PEOPLE[pid][1]), "ID": pid, "metadata": metadata(pid)}


def full_row(pid: str, people=PEOPLE) -> dict:
    name, color = people[pid]
    return {"image": cell(color), "ID": pid, **eval_fields(pid, name)}


def make_test_set_row(pid: str) -> dict:
    name, _ = PEOPLE[pid]
    row = {"images": [cell((1, 2, 3)), cell((4, 5, 6), "L")], "ID": pid, **eval_fields(pid, name)}
    return row


def build_mllmu(root: Path, split_shape: str = "train") -> Path:
    """forget_10 = [001], retain_90 = [002, 003]; each split in a different file naming style."""
    if split_shape in ("train", "ids"):
        write(root / "ft_Data" / "train-00000-of-00001.parquet", [train_row(p) for p in PEOPLE])
        write(root / "Full_Set.parquet", [full_row(p) for p in PEOPLE])
        if split_shape == "train":  # ft_Data shape: QA from the split file, questions from Full_Set
            split_row = train_row
        else:  # only who is where: QA from ft_Data, questions from Full_Set
            def split_row(pid):
                return {"image": cell(PEOPLE[pid][1]), "ID": pid}
    else:  # the split files carry both the training metadata and the evaluation fields
        def split_row(pid):
            return {**full_row(pid), "metadata": metadata(pid)}
    write(root / "forget_10" / "train-00000-of-00001.parquet", [split_row("001")])
    write(root / "retain_90-00000-of-00001.parquet", [split_row("002"), split_row("003")])
    write(root / "Test_Set" / "test-00000-of-00002.parquet", [make_test_set_row("001")])
    write(root / "Test_Set" / "test-00001-of-00002.parquet", [make_test_set_row("002")])
    write(root / "Retain_Set.parquet", [full_row(c, CELEBS) for c in CELEBS])
    return root


def count(records, **match) -> int:
    return sum(all(getattr(r, k) == v for k, v in match.items()) for r in records)


# ------------------------------------------------------------------------------------------
# MLLMU-Bench
# ------------------------------------------------------------------------------------------


def check_mllmu(out: dict[str, list[Record]]) -> None:
    assert set(out) == {"forget", "retain", "test", "real"}
    assert [len(out[k]) for k in ("forget", "retain", "test", "real")] == [8, 16, 6, 12]
    for split, recs in out.items():
        assert len({r.id for r in recs}) == len(recs)
        for r in recs:
            r.validate()
            assert r.split == split
            assert (r.image is not None) == (r.modality == "image+text")
            if r.image is not None:
                assert isinstance(r.image, Image.Image) and r.image.mode == "RGB"
    forget = out["forget"]
    assert {r.profile_id for r in forget} == {"001"}
    assert {r.profile_id for r in out["retain"]} == {"002", "003"}
    assert count(forget, phase="unlearn", task="generation", modality="image+text") == 2
    assert count(forget, phase="eval", task="classification") == 2
    assert count(forget, phase="eval", task="generation") == 2
    assert count(forget, phase="eval", task="cloze") == 2
    assert count(forget, phase="eval", modality="text") == 3
    assert all(r.name == "Ava Stone" for r in forget)
    cls_img = next(r for r in forget if r.task == "classification" and r.modality == "image+text")
    assert cls_img.options == ["001-a", "001-b", "001-c", "001-d"]
    assert cls_img.answer_index == 2 and cls_img.answer == "001-c" and cls_img.answer_letter == "C"
    assert cls_img.image.getpixel((0, 0)) == (200, 10, 10)
    cls_txt = next(r for r in forget if r.task == "classification" and r.modality == "text")
    assert cls_txt.answer_index == 0 and cls_txt.image is None and "Ava Stone" in cls_txt.question
    cloze = next(r for r in forget if r.task == "cloze" and r.modality == "text")
    assert cloze.answer == "job001" and "___" in cloze.question
    # test: only the forget people, transformed photos rotated over the image+text questions
    test = out["test"]
    assert {r.profile_id for r in test} == {"001"} and all(r.phase == "eval" for r in test)
    pixels = [r.image.getpixel((0, 0)) for r in test if r.image is not None]
    assert pixels == [(1, 2, 3), (4, 4, 4), (1, 2, 3)]  # the L image comes back as RGB
    # real: celebrities
    real = out["real"]
    assert all(r.population == "real" and r.profile_id.startswith("real:") for r in real)
    assert {r.name for r in real} == {"Famous One", "Famous Two"}


def test_mllmu_ft_data_and_full_set_layout(tmp_path):
    check_mllmu(load_mllmu(build_mllmu(tmp_path), forget_split="forget_10"))


def test_mllmu_split_files_list_only_ids(tmp_path):
    check_mllmu(load_mllmu(build_mllmu(tmp_path, split_shape="ids"), forget_split="forget10"))


def test_mllmu_split_files_with_eval_fields(tmp_path):
    root = build_mllmu(tmp_path, split_shape="eval")
    assert not (root / "ft_Data").exists() and not (root / "Full_Set.parquet").exists()
    check_mllmu(load_mllmu(root, forget_split="10"))


def test_find_split_files_styles(tmp_path):
    root = build_mllmu(tmp_path)
    assert [p.name for p in find_split_files(root, "Full_Set", "X")] == ["Full_Set.parquet"]
    assert [p.name for p in find_split_files(root, "forget_10", "X")] == ["train-00000-of-00001.parquet"]
    assert [p.name for p in find_split_files(root, "retain_90", "X")] == ["retain_90-00000-of-00001.parquet"]
    assert len(find_split_files(root, "Test_Set", "X")) == 2
    with pytest.raises(DataError, match="forget_1"):
        find_split_files(root, "forget_1", "X")  # not fooled by forget_10


def test_mllmu_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_mllmu(tmp_path / "nope")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and "MLLMMU/MLLMU-Bench" in msg and "\n" not in msg


def test_mllmu_missing_file_names_it(tmp_path):
    root = build_mllmu(tmp_path)
    for p in (root / "Test_Set").iterdir():
        p.unlink()
    (root / "Test_Set").rmdir()
    with pytest.raises(DataError, match="Test_Set"):
        load_mllmu(root)


def test_mllmu_bad_forget_split(tmp_path):
    with pytest.raises(DataError, match="forget_5, forget_10, forget_15"):
        load_mllmu(build_mllmu(tmp_path), forget_split="forget_7")


def test_mllmu_missing_column_names_file_and_field(tmp_path):
    root = build_mllmu(tmp_path)
    rows = [full_row(p) for p in PEOPLE]
    for r in rows:
        del r["Mask_Task"]
    path = write(root / "Full_Set.parquet", rows)
    with pytest.raises(DataError) as err:
        load_mllmu(root)
    assert str(path) in str(err.value) and "'Mask_Task'" in str(err.value)


def test_mllmu_missing_nested_field_names_it(tmp_path):
    root = build_mllmu(tmp_path)
    rows = [full_row(p) for p in PEOPLE]
    rows[0]["Generation_Task"][0].pop("Ground_Truth")
    # the struct column keeps the key with a null value; the message still names the field
    path = write(root / "Full_Set.parquet", rows)
    with pytest.raises(DataError) as err:
        load_mllmu(root)
    msg = str(err.value)
    assert str(path) in msg and "row 0" in msg and "Generation_Task[0].Ground_Truth" in msg


def test_mllmu_corrupt_image_names_file_and_row(tmp_path):
    root = build_mllmu(tmp_path)
    rows = [full_row(p) for p in PEOPLE]
    rows[0]["image"] = {"bytes": b"\x89PNG\r\n\x1a\nnot really a png", "path": None}
    path = write(root / "Full_Set.parquet", rows)
    with pytest.raises(DataError) as err:
        load_mllmu(root)
    msg = str(err.value)
    assert str(path) in msg and "row 0" in msg and "image" in msg and "\n" not in msg


def test_mllmu_record_without_answer(tmp_path):
    root = build_mllmu(tmp_path)
    row = train_row("001")
    row["metadata"] = json.dumps([{"Question": "What is this person's job?", "Answer": "  "}])
    path = write(root / "forget_10" / "train-00000-of-00001.parquet", [row])
    with pytest.raises(DataError) as err:
        load_mllmu(root)
    assert str(path) in str(err.value) and "record without an answer" in str(err.value)


def test_mllmu_person_missing_from_ft_data(tmp_path):
    root = build_mllmu(tmp_path, split_shape="ids")
    write(root / "ft_Data" / "train-00000-of-00001.parquet", [train_row("002"), train_row("003")])
    with pytest.raises(DataError, match=r"ft_Data has no row for ID\(s\) 001"):
        load_mllmu(root)


def test_mllmu_wrong_answer_letter(tmp_path):
    root = build_mllmu(tmp_path)
    rows = [full_row(c, CELEBS) for c in CELEBS]
    rows[1]["Classification_Task"]["Pure_Text_Questions"][0]["Correct_Answer"] = "E"
    write(root / "Retain_Set.parquet", rows)
    with pytest.raises(DataError, match=r"Retain_Set.parquet row 1.*Correct_Answer"):
        load_mllmu(root)


# ------------------------------------------------------------------------------------------
# MLLMU fuzz: malformed rows give a DataError or valid records, never another exception
# ------------------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_qa_items = st.lists(
    st.dictionaries(
        st.sampled_from(["Question", "Answer", "Additional_question", "ID", "Type"]),
        st.none() | st.integers() | st.text(max_size=10) | st.lists(st.text(max_size=3), max_size=2),
        max_size=4,
    ),
    max_size=3,
)
_good_qa = st.lists(
    st.fixed_dictionaries({"Question": st.text(min_size=1, max_size=8), "Answer": st.text(max_size=8)}), max_size=3,
).map(json.dumps)
_metadata = st.one_of(
    _good_qa,
    _good_qa,
    st.text(max_size=20),
    _json_values.map(json.dumps),
    _qa_items.map(json.dumps),
    st.just("[" * 3000),  # deep nesting
    st.none(),
)
_generation = st.one_of(
    st.just(json.dumps(eval_fields("001", "Ava Stone")["Generation_Task"])),
    st.text(max_size=20),
    _json_values.map(json.dumps),
    st.lists(
        st.fixed_dictionaries(
            {"Question": st.text(max_size=6)},
            optional={"Ground_Truth": st.none() | st.text(max_size=6) | st.integers(),
                      "Type": st.sampled_from(["Image_Textual", "Pure_Text", "Other", ""])},
        ),
        max_size=3,
    ).map(json.dumps),
)
_image = st.sampled_from(["ok", "ok", "ok", "garbage", "none", "path"])
_id = st.sampled_from(["001", "001", "001", "001", 1, "", None, "zzz"])


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mllmu_fuzz")
    # split files list only who is where, so the fuzzed ft_Data / Full_Set rows are what gets read
    write(root / "forget_10.parquet", [{"image": cell((1, 1, 1)), "ID": "001"}])
    write(root / "retain_90.parquet", [{"image": cell((2, 2, 2)), "ID": "002"}])
    write(root / "Test_Set.parquet", [make_test_set_row("001")])
    write(root / "Retain_Set.parquet", [full_row("c1", CELEBS)])
    return root


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(meta=_metadata, gen=_generation, image=_image, pid=_id)
def test_mllmu_fuzz_only_data_errors(fuzz_root, meta, gen, image, pid):
    images = {
        "ok": cell((9, 9, 9)),
        "garbage": {"bytes": b"GIF89a-broken", "path": None},
        "none": None,
        "path": {"bytes": None, "path": "missing.png"},
    }
    ft = [{"image": images[image], "ID": pid, "metadata": meta}, train_row("002")]
    for r in ft:
        r["ID"] = None if r["ID"] is None else str(r["ID"])
    write(fuzz_root / "ft_Data.parquet", ft)
    full = [full_row("001"), full_row("002")]
    for r in full:
        for key in ("Classification_Task", "Generation_Task", "Mask_Task"):
            r[key] = json.dumps(r[key])
    full[0]["Generation_Task"] = gen
    write(fuzz_root / "Full_Set.parquet", full)
    try:
        out = load_mllmu(fuzz_root)
    except DataError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert set(out) == {"forget", "retain", "test", "real"}
    for recs in out.values():
        for r in recs:
            assert isinstance(r, Record)
            r.validate()


# ------------------------------------------------------------------------------------------
# CLEAR
# ------------------------------------------------------------------------------------------

AUTHORS = {"Ann Lee": (250, 0, 0), "Bo Tran": (0, 250, 0), "Cal Ruiz": (0, 0, 250)}


def photo(name: str, caption: str) -> dict:
    return {"image": cell(AUTHORS[name]), "caption": caption, "name": name, "question": None, "answer": None}


def qa(question: str, answer: str) -> dict:
    return {"image": None, "caption": None, "name": None, "question": question, "answer": answer}


def perturbed(name: str, others: list[str]) -> dict:
    return {
        "image": cell(AUTHORS[name]), "caption": f"{name} smiling at a desk.", "name": name,
        "paraphrased_caption": f"At a desk, {name} smiles.",
        "perturbed_captions": [f"{name} frowning outdoors.", f"{name} asleep on a bus."],
        "perturbed_names": others,
    }


def build_clear(root: Path) -> Path:
    write(root / "forget10+tofu" / "train-00000-of-00001.parquet", [
        photo("Ann Lee", "Ann Lee smiling at a desk."),
        photo("Ann Lee", "Ann Lee reading in a park."),
        qa("Where was Ann Lee born?", "Ann Lee was born in Oslo."),
        qa("What genre does the author write?", "Mostly mystery novels."),  # no name: block majority
    ])
    write(root / "forget10" / "train-00000-of-00001.parquet", [photo("Ann Lee", "ignored: +tofu wins")])
    write(root / "retain90.parquet", [photo("Bo Tran", "Bo Tran on a boat."), photo("Cal Ruiz", "Cal Ruiz at home.")])
    write(root / "forget10_perturbed-00000-of-00001.parquet",
          [perturbed("Ann Lee", ["Bo Tran", "Zed Quo"]), perturbed("Ann Lee", ["Ann Lee", "Cal Ruiz"])])
    write(root / "retain_perturbed" / "train-00000-of-00001.parquet", [perturbed("Bo Tran", ["Ann Lee"])])
    write(root / "real_faces" / "train-00000-of-00001.parquet", [
        {"image": cell((5, 5, 5)), "answer": "Real Star", "options": ["Real Star", "Other Star", "Third Star"]},
        {"image": cell((6, 6, 6)), "answer": "Real Two", "options": ["Nope One", "Nope Two"]},
    ])
    write(root / "real_world" / "train-00000-of-00001.parquet", [
        {"image": cell((7, 7, 7)), "question": "Which city is shown?", "answer": "Paris", "options": ["Paris", "Rome"]},
    ])
    return root


def test_clear_layout(tmp_path):
    out = load_clear(build_clear(tmp_path), forget_split="forget10")
    assert set(out) == {"forget", "retain", "real"}
    assert [len(out[k]) for k in ("forget", "retain", "real")] == [10, 4, 3]
    for split, recs in out.items():
        assert len({r.id for r in recs}) == len(recs)
        for r in recs:
            r.validate()
            assert r.split == split and r.task == "generation"
            assert (r.image is not None) == (r.modality == "image+text")
            if r.image is not None:
                assert r.image.mode == "RGB"
    forget = out["forget"]
    unlearn = [r for r in forget if r.phase == "unlearn"]
    assert count(unlearn, modality="image+text", question=CAPTION_PROMPT) == 2
    assert not any("ignored" in r.answer for r in forget)
    text_qa = [r for r in forget if r.modality == "text"]
    assert len(text_qa) == 4 and {r.phase for r in text_qa} == {"unlearn", "eval"}
    assert {r.profile_id for r in text_qa} == {"Ann Lee"}  # one by name, one by block majority
    caption_eval = [r for r in forget if r.phase == "eval" and r.question == CAPTION_PROMPT]
    assert len(caption_eval) == 2
    assert caption_eval[0].paraphrased_answer == "At a desk, Ann Lee smiles."
    assert caption_eval[0].perturbed_answers == ["Ann Lee frowning outdoors.", "Ann Lee asleep on a bus."]
    names = [r for r in forget if r.question == NAME_PROMPT]
    assert [r.answer for r in names] == ["Ann Lee", "Ann Lee"]
    assert names[0].perturbed_answers == ["Bo Tran", "Zed Quo"] and names[1].perturbed_answers == ["Cal Ruiz"]
    assert names[0].image.getpixel((0, 0)) == (250, 0, 0)
    retain = out["retain"]
    assert {r.profile_id for r in retain} == {"Bo Tran", "Cal Ruiz"}
    assert count(retain, phase="unlearn") == 2 and count(retain, phase="eval") == 2
    real = out["real"]
    assert all(r.population == "real" and r.phase == "eval" for r in real)
    assert real[0].question == NAME_PROMPT and real[0].perturbed_answers == ["Other Star", "Third Star"]
    assert real[0].paraphrased_answer == "Real Star"
    assert real[2].question == "Which city is shown?" and real[2].perturbed_answers == ["Rome"]


def test_clear_retain_eval_without_retain_perturbed(tmp_path):
    root = build_clear(tmp_path)
    for p in (root / "retain_perturbed").iterdir():
        p.unlink()
    (root / "retain_perturbed").rmdir()
    retain = load_clear(root, forget_split="forget_10")["retain"]
    evals = [r for r in retain if r.phase == "eval"]
    assert len(evals) == 2 and all(r.perturbed_answers == [] for r in evals)


def test_clear_missing_folder(tmp_path):
    with pytest.raises(DataError, match="therem/CLEAR"):
        load_clear(tmp_path / "absent")


def test_clear_missing_perturbed_file(tmp_path):
    root = build_clear(tmp_path)
    (root / "forget10_perturbed-00000-of-00001.parquet").unlink()
    with pytest.raises(DataError, match="forget10_perturbed"):
        load_clear(root)


def test_clear_missing_field_names_file_and_field(tmp_path):
    root = build_clear(tmp_path)
    rows = [perturbed("Ann Lee", ["Bo Tran"])]
    del rows[0]["perturbed_names"]
    path = write(root / "forget10_perturbed-00000-of-00001.parquet", rows)
    with pytest.raises(DataError) as err:
        load_clear(root)
    assert str(path) in str(err.value) and "'perturbed_names'" in str(err.value)


def test_clear_corrupt_image_names_file_and_row(tmp_path):
    root = build_clear(tmp_path)
    rows = [photo("Bo Tran", "Bo Tran on a boat."), photo("Cal Ruiz", "Cal Ruiz at home.")]
    rows[1]["image"] = {"bytes": b"\xff\xd8\xff garbage jpeg", "path": None}
    path = write(root / "retain90.parquet", rows)
    with pytest.raises(DataError) as err:
        load_clear(root)
    assert str(path) in str(err.value) and "row 1" in str(err.value)


def test_clear_bad_forget_split(tmp_path):
    with pytest.raises(DataError, match="forget01, forget05, forget10"):
        load_clear(build_clear(tmp_path), forget_split="forget20")
