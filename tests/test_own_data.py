"""Bring your own data: people.jsonl / people.csv → exact records; --forget-ids / --retain-ids on any
source; bad rows and unknown ids are one `error:` line (exit 2) and nothing written."""

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.data.errors import DataError
from mmunlearn.data.store import load_data, parse_ids

RED, BLUE = (200, 20, 20), (20, 20, 200)


def _png(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"person_id": "p1", "name": "Ada Brill", "image": "img/p1.png", "question": "Who is this?", "answer": "Ada Brill."},
    {"person_id": "p1", "question": "Where was Ada born?", "options": ["Norrow", "Tollhaven", "Brisk"],
     "answer_index": 2},
    {"person_id": "p2", "image": "img/p2.png", "question": "Her job?", "answer": "Baker.", "phase": "eval",
     "paraphrased_answer": "She bakes.", "perturbed_answers": ["Smith.", "Sailor."]},
    {"person_id": "p3", "question": "Colour?", "options": ["red", "blue"], "answer": "B", "phase": "train"},
]


@pytest.fixture
def people(tmp_path) -> Path:
    _png(tmp_path / "img" / "p1.png", RED)
    _png(tmp_path / "img" / "p2.png", BLUE)
    return _jsonl(tmp_path / "people.jsonl", ROWS)


def test_jsonl_gives_exact_records(people):
    bundle = load_data(people, forget_ids=["p1"])
    assert bundle.source == "own" and bundle.forget_ids == {"p1"} and bundle.retain_ids == {"p2", "p3"}
    assert set(bundle.splits) == {"forget", "retain"}
    # p1: rows 1 and 2, each a training copy and an evaluation copy
    got = [(r.id, r.phase, r.task, r.modality, r.question, r.answer, r.answer_letter) for r in bundle.splits["forget"]]
    assert got == [
        ("own:p1:1:train", "unlearn", "generation", "image+text", "Who is this?", "Ada Brill.", ""),
        ("own:p1:1", "eval", "generation", "image+text", "Who is this?", "Ada Brill.", ""),
        ("own:p1:2:train", "unlearn", "classification", "text", "Where was Ada born?", "Brisk", "C"),
        ("own:p1:2", "eval", "classification", "text", "Where was Ada born?", "Brisk", "C"),
    ]
    first = bundle.splits["forget"][1]
    assert first.name == "Ada Brill" and first.image.size == (8, 8) and first.image.getpixel((3, 3)) == RED
    assert bundle.splits["forget"][3].options == ["Norrow", "Tollhaven", "Brisk"]
    # p2's row is evaluation only, p3's training only; "B" is the letter of p3's second option
    got = [(r.id, r.phase, r.profile_id, r.answer, r.answer_index) for r in bundle.splits["retain"]]
    assert got == [("own:p2:3", "eval", "p2", "Baker.", -1), ("own:p3:4:train", "unlearn", "p3", "blue", 1)]
    p2 = bundle.splits["retain"][0]
    assert p2.image.getpixel((0, 0)) == BLUE and p2.paraphrased_answer == "She bakes."
    assert p2.perturbed_answers == ["Smith.", "Sailor."]
    assert [r.id for r in bundle.eval("forget")] == ["own:p1:1", "own:p1:2"]
    assert [r.id for r in bundle.train("retain")] == ["own:p3:4:train"]


def test_csv_gives_the_same_kind_of_records(tmp_path):
    _png(tmp_path / "photos" / "a.png", RED)
    (tmp_path / "people.csv").write_text(
        "person_id,question,answer,image,options,answer_index,perturbed_answers\n"
        "007,Who is this?,Jim Pole.,photos/a.png,,,\n"
        '007,Born where?,,,"[""Oslo"", ""Rome""]",1,\n'
        "8,Hobby?,Chess.,,,,Golf.|Polo.\n"
        "8,Pet?,,,cat|dog|owl,0,\n"
    )
    bundle = load_data(tmp_path / "people.csv", forget_ids="007")
    assert bundle.forget_ids == {"007"} and bundle.retain_ids == {"8"}  # ids stay text: "007" is not 7
    ev = bundle.eval("forget")
    assert [(r.id, r.task, r.modality, r.answer, r.answer_letter) for r in ev] == [
        ("own:007:1", "generation", "image+text", "Jim Pole.", ""),
        ("own:007:2", "classification", "text", "Rome", "B"),
    ]
    assert ev[0].image.getpixel((1, 1)) == RED and ev[1].options == ["Oslo", "Rome"]
    retain = bundle.eval("retain")
    assert [(r.answer, r.perturbed_answers, r.options, r.answer_index) for r in retain] == [
        ("Chess.", ["Golf.", "Polo."], [], -1), ("cat", [], ["cat", "dog", "owl"], 0)]


def test_image_folder_layout(tmp_path):
    folder = tmp_path / "people"
    _png(folder / "x.png", BLUE)
    _jsonl(folder / "metadata.jsonl", [
        {"file_name": "x.png", "person_id": "a", "question": "Who?", "answer": "Al."},
        {"file_name": "x.png", "person_id": "a", "question": "Hat?", "answer": "None."},
        {"person_id": "b", "question": "Age?", "answer": "40."},
    ])
    bundle = load_data(folder, forget_ids=["a"])
    ev = bundle.eval("forget")
    assert [r.modality for r in ev] == ["image+text", "image+text"] and ev[0].image is ev[1].image  # decoded once
    assert [r.modality for r in bundle.eval("retain")] == ["text"]


def test_forget_ids_split_sizes(people):
    # by hand: p1 has 2 rows → 4 records; p2 1 eval-only row; p3 1 train-only row
    sizes = lambda b: (len(b.splits["forget"]), len(b.splits["retain"]))  # noqa: E731
    assert sizes(load_data(people, forget_ids=["p1"])) == (4, 2)
    assert sizes(load_data(people, forget_ids=["p1", "p2"])) == (5, 1)
    assert sizes(load_data(people, forget_ids=["p2"], retain_ids=["p3"])) == (1, 1)  # p1 on neither side
    b = load_data(people, forget_ids=["p2"], retain_ids=["p3"])
    assert b.retain_ids == {"p3"} and {r.profile_id for r in b.splits["retain"]} == {"p3"}
    # without ids, own data is everyone on the retain side (enough to fine-tune on)
    b = load_data(people)
    assert b.forget_ids == set() and sizes(b) == (0, 6)


def test_forget_ids_from_a_file(people, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("# people who asked to be forgotten\np1\np2, p1  # twice\n\n")
    assert parse_ids(str(ids)) == ["p1", "p2"]
    assert parse_ids("p1, p3,") == ["p1", "p3"]
    assert load_data(people, forget_ids=parse_ids(str(ids))).forget_ids == {"p1", "p2"}


@pytest.mark.parametrize("row, field", [
    ({"person_id": "p9", "question": "Q?"}, "answer"),
    ({"person_id": "p9", "question": "Q?", "answer": "  "}, "answer"),
    ({"question": "Q?", "answer": "A."}, "person_id"),
    ({"person_id": "p9", "question": "", "answer": "A."}, "question"),
    ({"person_id": "p9", "question": "Q?", "options": ["a", "b"], "answer_index": 5}, "answer_index"),
    ({"person_id": "p9", "question": "Q?", "options": ["a"], "answer_index": 0}, "options"),
    ({"person_id": "p9", "question": "Q?", "options": ["a", "b"], "answer": "c"}, "answer"),
    ({"person_id": "p9", "question": "Q?", "answer": "A.", "task": "essay"}, "task"),
    ({"person_id": "p9", "question": "Q?", "answer": "A.", "phase": "later"}, "phase"),
    ({"person_id": "p9", "question": "Q?", "answer": "A.", "image": "img/missing.png"}, "image"),
])
def test_bad_row_names_file_row_and_field(people, row, field):
    path = _jsonl(people.parent / "bad.jsonl", ROWS[:2] + [row])
    with pytest.raises(DataError) as err:
        load_data(path, forget_ids=["p1"])
    msg = str(err.value)
    assert "\n" not in msg and f"{path} row 3" in msg and f"'{field}'" in msg, msg


def test_unknown_forget_id_is_an_error(people):
    with pytest.raises(DataError, match="unknown forget id.*nobody"):
        load_data(people, forget_ids=["p1", "nobody"])
    with pytest.raises(DataError, match="unknown retain id.*ghost"):
        load_data(people, forget_ids=["p1"], retain_ids=["ghost"])
    with pytest.raises(DataError, match="both name p1"):
        load_data(people, forget_ids=["p1"], retain_ids=["p1", "p2"])


def test_forget_ids_on_the_world(small_world):
    manifest = json.loads((small_world / "world.json").read_text())
    # two people the world's own forget_15 split keeps on the retain side
    chosen = manifest["ids"]["retain_85"][:2]
    everyone = manifest["ids"]["fictitious"]
    bundle = load_data(small_world, "forget_15", forget_ids=chosen)
    assert bundle.forget_ids == set(chosen) and bundle.retain_ids == set(everyone) - set(chosen)
    assert bundle.forget_split == "ids:" + ",".join(chosen)
    # exactly their records: everything the world holds about them in forget_15 + retain_85
    default = load_data(small_world, "forget_15")
    theirs = [r.id for name in ("forget", "retain") for r in default.splits[name] if r.profile_id in chosen]
    assert sorted(r.id for r in bundle.splits["forget"]) == sorted(theirs) and theirs
    assert len(bundle.splits["forget"]) + len(bundle.splits["retain"]) == \
        len(default.splits["forget"]) + len(default.splits["retain"])
    assert {r.split for r in bundle.splits["forget"]} == {"forget"}
    from mmunlearn.eval.evaluator import EvalConfig, split_records

    assert {r.profile_id for r in split_records(bundle, "test", EvalConfig())} == set(chosen)
    with pytest.raises(DataError, match="unknown forget id"):
        load_data(small_world, "forget_15", forget_ids=[manifest["ids"]["real"][0]])  # not a fictitious person


# ---------------------------------------------------------------------------------------------
# through the command line
# ---------------------------------------------------------------------------------------------


def _one_error_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_cli_bad_row_is_one_error_line(people, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", ROWS[:2] + [{"person_id": "p2", "question": "Job?"}] + ROWS[3:])
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["eval", "--model", "tiny-llava", "--data", str(path), "--forget-ids", "p1",
                                   "--out", str(out)])
    err = _one_error_line(res)
    assert str(path) in err and "row 3" in err and "'answer'" in err, err
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [
    (["--forget-ids", "p1,nobody"], "unknown forget id(s) nobody"),
    ([], "no one to forget: pass --forget-ids"),
    (["--retain-ids", "p2"], "--retain-ids needs --forget-ids"),
])
def test_cli_refuses_bad_ids(people, tmp_path, args, needle):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["unlearn", "--method", "graddiff", "--model", str(tmp_path / "no_model"),
                                   "--data", str(people), "--out", str(out), *args])
    assert needle in _one_error_line(res)
    assert not out.exists()


def test_cli_eval_on_own_data(people, tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--model", "tiny-llava", "--data", str(people), "--forget-ids", "p1",
                                   "--out", str(out), "--batch-size", "8"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    assert set(metrics) == {"forget", "retain"}
    assert metrics["forget"]["image+text"]["n"] == 1 and metrics["forget"]["text"]["n"] == 1
    assert metrics["retain"]["image+text"]["n"] == 1 and "text" not in metrics["retain"]  # p3 is train-only
    assert 0.0 <= metrics["forget"]["text"]["cls_acc"] <= 1.0
    # the splits own data does not have are skipped and said so, never scored as zeros
    assert set(summary["skipped"]) == {"test", "real", "understanding", "understanding_unseen"}
    assert summary["config"]["source"] == "own" and summary["config"]["forget_split"] == "ids:p1"
    assert len((out / "details.jsonl").read_text().splitlines()) == 3


# ---------------------------------------------------------------------------------------------
# --forget-ids on the benchmarks (fixtures in the released layouts: tests/fixtures_release.py)
# ---------------------------------------------------------------------------------------------


def test_forget_ids_on_mllmu(tmp_path):
    from fixtures_release import build_mllmu

    root = build_mllmu(tmp_path / "MLLMU-Bench")
    default = load_data(root, "forget_10")
    chosen = sorted(default.retain_ids)[:2]  # two people the release keeps on the retain side
    bundle = load_data(root, "forget_10", forget_ids=chosen)
    assert bundle.forget_ids == set(chosen) and bundle.retain_ids == (default.forget_ids | default.retain_ids) - set(chosen)
    # 8 records a person (as in test_loaders), 6 Test_Set questions a person — now the chosen people's
    assert len(bundle.splits["forget"]) == 16 and {r.profile_id for r in bundle.splits["forget"]} == set(chosen)
    assert len(bundle.splits["retain"]) == 18 * 8
    assert len(bundle.splits["test"]) == 12 and {r.profile_id for r in bundle.splits["test"]} == set(chosen)
    assert len(bundle.splits["real"]) == len(default.splits["real"])
    with pytest.raises(DataError, match="unknown forget id"):
        load_data(root, "forget_10", forget_ids=["c0"])  # a celebrity is not a forgettable person here


def test_forget_ids_on_clear(tmp_path):
    from fixtures_release import build_clear

    root = build_clear(tmp_path / "CLEAR")
    default = load_data(root, "forget_10")
    person = sorted(default.retain_ids)[0]
    bundle = load_data(root, "forget_10", forget_ids=[person])
    assert bundle.forget_ids == {person}
    for side, other in (("forget", "retain"), ("forget_faces", "retain_faces")):
        pooled = default.splits.get(side, []) + default.splits.get(other, [])
        assert sorted(r.id for r in bundle.splits[side]) == sorted(r.id for r in pooled if r.profile_id == person)
        assert person not in {r.profile_id for r in bundle.splits[other]}
    assert bundle.splits["forget"] and bundle.splits["forget_faces"]


# ---- any size: schedules and batches fitted to the data (issue #28) ------------------------------------------

def _bundle_of(stage1: int, stage2: int):
    """A bundle with `stage1` "real" records and `stage2` fine-tune records (their content does not matter)."""
    from mmunlearn.data.record import Record
    from mmunlearn.data.store import DataBundle

    def recs(n, split):
        return [Record(id=f"{split}{i}", profile_id=f"p{i % 3}", question="q?", answer="a.", task="generation",
                       modality="text", split=split) for i in range(n)]

    splits = {"finetune": recs(stage2, "finetune")}
    if stage1:
        splits["pretrain"] = recs(stage1, "pretrain")
    return DataBundle("world", Path("."), "forget_10", splits)


def test_the_schedule_is_the_default_worlds_recipe_scaled_to_the_records():
    from mmunlearn.train.finetune import scaled_schedule

    # the default world (world.json: 3,962 pretrain and 13,188 finetune records) reaches every cap
    assert scaled_schedule(_bundle_of(3962, 13188), 16) == {"vision_warmup_steps": 900, "stage1_steps": 400,
                                                            "stage2_steps": 5000}
    # 300 records at batch 16: 40 passes = ceil(40 × 300 / 16) = 750 steps; stage 0 no longer than stage 2
    assert scaled_schedule(_bundle_of(0, 300), 16) == {"vision_warmup_steps": 750, "stage1_steps": 0,
                                                       "stage2_steps": 750}
    # 5 records (examples/people.jsonl): the batch is 5, 40 passes = 40 steps, raised to the floor of 200
    assert scaled_schedule(_bundle_of(0, 5), 16) == {"vision_warmup_steps": 200, "stage1_steps": 0,
                                                     "stage2_steps": 200}
    # 100 real-people records at batch 16: ceil(40 × 100 / 16) = 250 stage-1 steps; values given are kept
    assert scaled_schedule(_bundle_of(100, 300), 16, stage0_steps=0, stage2_steps=7) == {
        "vision_warmup_steps": 0, "stage1_steps": 250, "stage2_steps": 7}


def test_batches_are_cut_to_what_the_records_fill():
    from mmunlearn.train.finetune import fit_finetune_batch

    assert fit_finetune_batch(16, 13188, 1) == 16
    assert fit_finetune_batch(16, 5, 1) == 5
    assert fit_finetune_batch(16, 5, 2) == 2  # two processes: 2 records each, 4 per global batch
    with pytest.raises(ValueError, match="cannot fill a global batch on 4 processes"):
        fit_finetune_batch(16, 3, 4)


def test_own_data_journey_fits_its_batches_and_labels_the_forget_people(people, tmp_path, untrained_llava):
    """`finetune --forget-ids` labels who the forget people are (its eval has a forget row); unlearning with a
    batch the forget records cannot fill runs with the batch they fill, says so, and logs it."""
    out = tmp_path / "mine"
    res = CliRunner().invoke(app, ["finetune", "--data", str(people), "--forget-ids", "p1", "--out", str(out),
                                   "--stage0-steps", "0", "--stage2-steps", "2", "--max-records", "8"])
    assert res.exit_code == 0, res.output
    log = json.loads((out / "train_log.json").read_text())
    # 3 training rows (p2's is eval-only): batch 16 cut to 3; the schedule as given
    assert log["batch_size"] == 3 and log["stage2_steps"] == 2 and log["vision_warmup"] is None
    assert "forget" in json.loads((out / "eval" / "summary.json").read_text())["metrics"]
    run = tmp_path / "forgot"
    res = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(untrained_llava), "--data",
                                   str(people), "--forget-ids", "p1", "--out", str(run), "--steps", "1", "--no-eval"])
    assert res.exit_code == 0, res.output
    # p1 has 2 training records (both modalities GA forgets): batch 8 → 2
    assert "batch size 8 is more than the 2 forget records fill on 1 process(es) for ga: using 2" in res.stderr
    assert json.loads((run / "unlearn_log.json").read_text())["batch_size"] == 2
