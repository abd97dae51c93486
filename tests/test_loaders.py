"""The MLLMU-Bench loader (and the helpers it shares with CLEAR) on a copy of the released layout
built by tests/fixtures_release.py from the release's own schema. CLEAR: tests/test_clear_release.py.

The fixture, by hand: 20 fictitious people 000..019 ("Person Aazo", "Person Bbzo", ...), forget_5 =
[000], forget_10 = [000, 001], forget_15 = [000, 001, 002], retain = the rest; per person 2 ft_Data
QA and 6 evaluation questions (classification, generation, cloze × image+text, text); Test_Set in 2
shards of 10 rows, two transformed photos per person (the second greyscale); 3 celebrities.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fixtures_release import (
    CELEBS, IMAGE, MLLMU_SPLIT, MLLMU_TEST, build_mllmu, image_cell, mllmu_metadata, mllmu_split_row, mllmu_test_row,
    write_config,
)
from mmunlearn.data.errors import DataError
from mmunlearn.data.mllmu import Row, _name_of, find_split_files, load_mllmu
from mmunlearn.data.record import Record


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return build_mllmu(tmp_path_factory.mktemp("mllmu") / "MLLMU-Bench")


@pytest.fixture
def copy(release, tmp_path) -> Path:
    return Path(shutil.copytree(release, tmp_path / "MLLMU-Bench"))


def shard(root: Path, config: str, k: int = 0, n: int = 1) -> Path:
    return root / config / f"train-{k:05d}-of-{n:05d}.parquet"


def rewrite(path: Path, edit) -> Path:
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)
    return path


def count(records, **match) -> int:
    return sum(all(getattr(r, k) == v for k, v in match.items()) for r in records)


# ------------------------------------------------------------------------------------------
# the fixture is the release's layout
# ------------------------------------------------------------------------------------------


def test_fixture_follows_the_release_schema(release):
    names = lambda config, k=0, n=1: pq.read_schema(shard(release, config, k, n)).names  # noqa: E731
    assert names("ft_Data") == ["image", "ID", "metadata"]
    evals = ["biography", "question", "answer", "Classification_Task", "Generation_Task", "Mask_Task"]
    assert names("forget_10") == names("retain_90") == names("Retain_Set") == ["image", "ID"] + evals
    assert names("Full_Set") == ["image", "ID", "Directory"] + evals
    assert names("Test_Set", 0, 2) == names("Test_Set", 1, 2) == ["images", "ID"] + evals
    cls = pq.read_schema(shard(release, "forget_10")).field("Classification_Task").type
    item = cls.field("Image_Textual_Questions").type.value_type
    assert [item.field(i).name for i in range(item.num_fields)] == ["Correct_Answer", "Options", "Question"]
    row = pq.read_table(shard(release, "ft_Data")).to_pylist()[0]
    assert isinstance(row["metadata"], str) and json.loads(row["metadata"])[0]["Question"]


# ------------------------------------------------------------------------------------------
# reading the release
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split, forget_ids, sizes", [
    ("forget_5", {"000"}, [8, 19 * 8, 6, 18]),
    ("forget_10", {"000", "001"}, [16, 18 * 8, 12, 18]),
    ("forget_15", {"000", "001", "002"}, [24, 17 * 8, 18, 18]),
])
def test_each_forget_split(release, split, forget_ids, sizes):
    out = load_mllmu(release, forget_split=split)
    assert [len(out[k]) for k in ("forget", "retain", "test", "real")] == sizes
    assert {r.profile_id for r in out["forget"]} == forget_ids == {r.profile_id for r in out["test"]}
    assert not forget_ids & {r.profile_id for r in out["retain"]}
    for name, recs in out.items():
        assert len({r.id for r in recs}) == len(recs)
        for r in recs:
            r.validate()
            assert r.split == name
            assert (r.image is not None) == (r.modality == "image+text")
            if r.image is not None:
                assert isinstance(r.image, Image.Image) and r.image.mode == "RGB"


def test_records_of_one_person(release):
    forget = load_mllmu(release, forget_split="forget_5")["forget"]
    assert all(r.name == "Person Aazo" for r in forget)
    unlearn = [r for r in forget if r.phase == "unlearn"]
    assert [(r.question, r.answer) for r in unlearn] == [
        ("What is this person's occupation?", "Person Aazo works as a weaver."),
        ("Where was this person born?", "Person Aazo was born in Town 000.")]
    assert all(r.modality == "image+text" and r.image.getpixel((0, 0)) == (5, 250, 100) for r in unlearn)
    assert count(forget, phase="eval", task="classification") == 2
    assert count(forget, phase="eval", task="generation") == 2 and count(forget, phase="eval", task="cloze") == 2
    cls_img = next(r for r in forget if r.task == "classification" and r.modality == "image+text")
    assert cls_img.options == ["baker", "pilot", "weaver", "nurse"]
    assert cls_img.answer_index == 2 and cls_img.answer == "weaver" and cls_img.answer_letter == "C"
    assert cls_img.image.getpixel((0, 0)) == (5, 250, 100)
    cls_txt = next(r for r in forget if r.task == "classification" and r.modality == "text")
    assert cls_txt.options == ["Town 000", "Elsewhere", "Nowhere", "Far away"] and cls_txt.answer_index == 0
    assert cls_txt.image is None and cls_txt.question == "Where was Person Aazo born?"
    gen_img = next(r for r in forget if r.task == "generation" and r.modality == "image+text" and r.phase == "eval")
    assert gen_img.answer == "This person works as a weaver."
    cloze = next(r for r in forget if r.task == "cloze" and r.modality == "text")
    assert cloze.answer == "Town 000" and "__" in cloze.question


def test_test_set_rotates_the_transformed_photos(release):
    test = load_mllmu(release, forget_split="forget_5")["test"]
    assert all(r.phase == "eval" and r.profile_id == "000" for r in test)
    # image+text questions in order: classification, generation, cloze → images[0], [1], [0]; the L image as RGB
    assert [r.image.getpixel((0, 0)) for r in test if r.image is not None] == [(5, 250, 1), (5, 5, 5), (5, 250, 1)]


def test_celebrities(release):
    real = load_mllmu(release, forget_split="forget_5")["real"]
    assert all(r.population == "real" and r.phase == "eval" for r in real)
    assert {r.profile_id for r in real} == {"real:c001", "real:c002", "real:c003"}
    assert {r.name for r in real} == {"Celeb One", "Celeb Two", "Celeb Three"}
    assert next(r for r in real if r.profile_id == "real:c001" and r.image is not None).image.getpixel((0, 0)) == (15, 240, 150)


def test_split_file_without_evaluation_fields_takes_them_from_full_set(copy):
    # an export listing only who is where: questions come from Full_Set, QA from ft_Data
    schema = pa.schema([("image", IMAGE), ("ID", pa.string())])
    write_config(copy, "forget_5", [{"image": image_cell((1, 1, 1)), "ID": "000"}], schema)
    out = load_mllmu(copy, forget_split="forget_5")
    assert len(out["forget"]) == 8 and count(out["forget"], phase="eval") == 6


def test_split_file_with_metadata_reads_it(copy):
    schema = MLLMU_SPLIT.append(pa.field("metadata", pa.string()))
    row = {**mllmu_split_row("000"), "metadata": json.dumps([{"Question": "Own question?", "Answer": "Own answer."}])}
    write_config(copy, "forget_5", [row], schema)
    unlearn = [r for r in load_mllmu(copy, forget_split="forget_5")["forget"] if r.phase == "unlearn"]
    assert [(r.question, r.answer) for r in unlearn] == [("Own question?", "Own answer.")]


def test_find_split_files_styles(release, tmp_path):
    assert [p.name for p in find_split_files(release, "Test_Set", "X")] == ["train-00000-of-00002.parquet",
                                                                             "train-00001-of-00002.parquet"]
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "Full_Set.parquet").write_bytes(shard(release, "Full_Set").read_bytes())
    (flat / "retain_90-00000-of-00001.parquet").write_bytes(shard(release, "retain_90").read_bytes())
    assert [p.name for p in find_split_files(flat, "Full_Set", "X")] == ["Full_Set.parquet"]
    assert [p.name for p in find_split_files(flat, "retain_90", "X")] == ["retain_90-00000-of-00001.parquet"]
    with pytest.raises(DataError, match="forget_1"):
        find_split_files(release, "forget_1", "X")  # not fooled by forget_10 / forget_15


@pytest.mark.parametrize("bio, name", [
    ('{"Name": "Ann Lee", "Born": "Oslo"}', "Ann Lee"),
    ("{'Name': 'Bo Tran', 'Born': 'Rome'}", "Bo Tran"),
    ("Name: Cal Ruiz\nBorn: 1990", "Cal Ruiz"),
    ("A biography that names nobody.", ""),
    ("[" * 3000, ""),
    (None, ""),
])
def test_name_from_the_biography_string(bio, name):
    assert _name_of(Row(Path("x.parquet"), 0, {"biography": bio})) == name


# ------------------------------------------------------------------------------------------
# bad input: one-line DataError naming folder, file, row, field
# ------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_mllmu(tmp_path / "nope")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and "MLLMMU/MLLMU-Bench" in msg and "\n" not in msg


def test_missing_test_set_is_named(copy):
    shutil.rmtree(copy / "Test_Set")
    with pytest.raises(DataError, match="Test_Set"):
        load_mllmu(copy)


def test_bad_forget_split(release):
    with pytest.raises(DataError, match="forget_5, forget_10, forget_15"):
        load_mllmu(release, forget_split="forget_7")


def test_missing_column_names_file_and_field(copy):
    path = shard(copy, "forget_10")
    pq.write_table(pq.read_table(path).drop_columns(["Mask_Task"]), path)
    with pytest.raises(DataError) as err:
        load_mllmu(copy)
    assert str(path) in str(err.value) and "'Mask_Task'" in str(err.value)


def test_missing_nested_field_names_it(copy):
    path = rewrite(shard(copy, "retain_90"), lambda rows: rows[3]["Generation_Task"][0].update(Ground_Truth=None))
    with pytest.raises(DataError) as err:
        load_mllmu(copy)
    msg = str(err.value)
    assert str(path) in msg and "row 3" in msg and "Generation_Task[0].Ground_Truth" in msg


def test_corrupt_image_names_file_and_row(copy):
    path = rewrite(shard(copy, "forget_10"), lambda rows: rows[1].update(image={"bytes": b"\x89PNG\r\n\x1a\nnope", "path": None}))
    with pytest.raises(DataError) as err:
        load_mllmu(copy)
    msg = str(err.value)
    assert str(path) in msg and "row 1" in msg and "image" in msg and "\n" not in msg


def test_record_without_answer(copy):
    def blank(rows):
        rows[0]["metadata"] = json.dumps([{"ID": "000", "Question": "What is this person's job?", "Answer": "  "}])
    path = rewrite(shard(copy, "ft_Data"), blank)
    with pytest.raises(DataError) as err:
        load_mllmu(copy)
    assert str(path) in str(err.value) and "record without an answer" in str(err.value)


def test_person_missing_from_ft_data(copy):
    rewrite(shard(copy, "ft_Data"), lambda rows: rows.pop(0))
    with pytest.raises(DataError, match=r"ft_Data has no row for ID\(s\) 000"):
        load_mllmu(copy)


def test_wrong_answer_letter(copy):
    def wrong(rows):
        rows[1]["Classification_Task"]["Pure_Text_Questions"][0]["Correct_Answer"] = "E"
    rewrite(shard(copy, "Retain_Set"), wrong)
    with pytest.raises(DataError, match=r"Retain_Set/train-00000-of-00001.parquet row 1.*Correct_Answer"):
        load_mllmu(copy)


def test_forget_and_retain_sharing_an_id(copy):
    rewrite(shard(copy, "retain_90"), lambda rows: rows.append(mllmu_split_row("000")))
    with pytest.raises(DataError, match="forget_10 and retain_90 share ID"):
        load_mllmu(copy)


# ------------------------------------------------------------------------------------------
# fuzz: malformed rows give a DataError or valid records, never another exception
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
    st.just(json.dumps(mllmu_split_row("000")["Generation_Task"])),
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
_id = st.sampled_from(["000", "000", "000", "000", "", None, "zzz"])
# cells that are valid by the release's schema: non-blank text, the two known Types
_word = st.text(min_size=1, max_size=8).filter(str.strip)
_valid_metadata = st.lists(st.fixed_dictionaries({"Question": _word, "Answer": _word}), max_size=3)
_valid_generation = st.lists(st.fixed_dictionaries({"Question": _word, "Ground_Truth": _word,
                                                    "Type": st.sampled_from(["Image_Textual", "Pure_Text"])}),
                             max_size=3)
_MODALITY = {"Image_Textual": "image+text", "Pure_Text": "text"}


@st.composite
def _cells(draw) -> dict:
    """Half the examples valid in every cell (the load must then succeed), half fuzzed cell by cell: a loader
    that refused everything would pass a test of the fuzzed half alone."""
    if draw(st.booleans()):
        return {"valid": True, "meta": json.dumps(draw(_valid_metadata)), "gen": json.dumps(draw(_valid_generation)),
                "image": "ok", "pid": "000"}
    return {"valid": False, "meta": draw(_metadata), "gen": draw(_generation), "image": draw(_image), "pid": draw(_id)}


# the struct columns as JSON strings (the form some exports use): any value can be written
_FUZZ_SPLIT = pa.schema([("image", IMAGE), ("ID", pa.string()), ("biography", pa.string()),
                         ("Classification_Task", pa.string()), ("Generation_Task", pa.string()),
                         ("Mask_Task", pa.string())])
_FUZZ_FT = pa.schema([("image", IMAGE), ("ID", pa.string()), ("metadata", pa.string())])


def _json_row(pid: str) -> dict:
    row = mllmu_split_row(pid)
    return {"image": row["image"], "ID": pid, "biography": row["biography"],
            **{k: json.dumps(row[k]) for k in ("Classification_Task", "Generation_Task", "Mask_Task")}}


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mllmu_fuzz")
    write_config(root, "retain_90", [_json_row("002")], _FUZZ_SPLIT)
    write_config(root, "Test_Set", [mllmu_test_row("000")], MLLMU_TEST)
    write_config(root, "Retain_Set", [mllmu_split_row("c001", CELEBS)], MLLMU_SPLIT)
    return root


_RELEASE_CELLS = {"valid": True, "meta": mllmu_metadata("000", "Person Aazo"),
                  "gen": json.dumps(mllmu_split_row("000")["Generation_Task"]), "image": "ok", "pid": "000"}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cells=_cells())
@example(cells=_RELEASE_CELLS)  # the release's own cells, every run
def test_fuzz_only_data_errors(fuzz_root, cells):
    """Malformed cells give one-line DataErrors or valid records, never another exception; valid cells load."""
    images = {
        "ok": image_cell((9, 9, 9)),
        "garbage": {"bytes": b"GIF89a-broken", "path": None},
        "none": None,
        "path": {"bytes": None, "path": "missing.png"},
    }
    meta, gen, pid = cells["meta"], cells["gen"], cells["pid"]
    write_config(fuzz_root, "ft_Data", [{"image": images[cells["image"]], "ID": pid, "metadata": meta},
                                        {"image": image_cell((2, 2, 2)), "ID": "002", "metadata": mllmu_metadata("002", "B")}],
                 _FUZZ_FT)
    forget = {**_json_row("000"), "ID": pid, "Generation_Task": gen}
    write_config(fuzz_root, "forget_10", [forget], _FUZZ_SPLIT)
    if cells["valid"]:  # no DataError allowed: the records are exactly the cells written
        out = load_mllmu(fuzz_root)
        mine = [r for r in out["forget"] if r.profile_id == "000"]
        assert {r.profile_id for r in out["forget"]} == {"000"}
        assert [(r.question, r.answer) for r in mine if r.phase == "unlearn"] == \
            [(q["Question"], q["Answer"]) for q in json.loads(meta)]
        assert [(r.question, r.answer, r.modality) for r in mine if r.phase == "eval" and r.task == "generation"] == \
            [(g["Question"], g["Ground_Truth"], _MODALITY[g["Type"]]) for g in json.loads(gen)]
        assert {r.profile_id for r in out["retain"] if r.phase == "unlearn"} == {"002"}
    else:
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
