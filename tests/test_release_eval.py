"""`mmunlearn eval` end to end on copies of the released CLEAR (+ TOFU) and MLLMU-Bench layouts
(tests/fixtures_release.py), with a tiny untrained model: the pipeline, not the scores, is under test.
Cell sizes are counted by hand from the fixtures (see tests/test_clear_release.py, tests/test_loaders.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fixtures_release import build_clear, build_mllmu, build_tofu, corpus
from mmunlearn.cli import app

CLEAR_SPLITS = "forget,forget_faces,retain,retain_faces,real,real_world"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from mmunlearn.models.loader import build_tiny

    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny("tiny-llava", corpus()).save(out)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("release_data")
    return {"clear": build_clear(base / "CLEAR"), "tofu": build_tofu(base / "TOFU"),
            "mllmu": build_mllmu(base / "MLLMU-Bench")}


@pytest.fixture
def runner():
    return CliRunner()


def cells(summary: dict) -> dict[str, dict[str, int]]:
    return {split: {mod: vals["n"] for mod, vals in mods.items()} for split, mods in summary["metrics"].items()}


def warning_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


def assert_one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum("error" in line.lower() for line in lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def run_eval(runner, model, data_dir, out, split, *extra):
    return runner.invoke(app, ["eval", "--model", str(model), "--data", str(data_dir), "--forget-split", split,
                               "--out", str(out), *extra])


# ------------------------------------------------------------------------------------------------
# CLEAR
# ------------------------------------------------------------------------------------------------


def test_clear_eval_end_to_end(runner, tiny_model, data, tmp_path):
    res = run_eval(runner, tiny_model, data["clear"], tmp_path / "out", "forget10", "--splits", CLEAR_SPLITS)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["source"] == "clear"
    # captioning and face → name recognition apart; real_faces apart from real_world; no text side for
    # the real sets without TOFU
    assert cells(summary) == {
        "forget": {"image+text": 5, "text": 60}, "forget_faces": {"image+text": 5},
        "retain": {"image+text": 3, "text": 40}, "retain_faces": {"image+text": 3},
        "real": {"image+text": 2}, "real_world": {"image+text": 2},
    }
    m = summary["metrics"]
    for split in ("forget", "forget_faces", "retain", "retain_faces", "real", "real_world"):
        assert "truth_ratio" in m[split]["image+text"] and "rougeL_f1" in m[split]["image+text"], split
    assert "truth_ratio" not in m["forget"]["text"] and "truth_ratio" not in m["retain"]["text"]
    assert "rougeL_f1" in m["forget"]["text"]
    warnings = warning_lines(res)
    assert len(warnings) == 1 and "no --tofu folder" in warnings[0] and "truth_ratio" in warnings[0]
    details = [json.loads(line) for line in (tmp_path / "out" / "details.jsonl").read_text().splitlines()]
    assert len(details) == 5 + 60 + 5 + 3 + 40 + 3 + 2 + 2


def test_clear_eval_with_tofu(tiny_model, data, tmp_path, capsys):
    """The --tofu path through the same functions the CLI calls (load_data → evaluate → write_results)."""
    from mmunlearn.data.store import load_data
    from mmunlearn.eval.evaluator import EvalConfig, evaluate, write_results
    from mmunlearn.models.loader import load_model

    bundle = load_data(data["clear"], "forget10", tofu=data["tofu"])
    cfg = EvalConfig(splits=tuple(CLEAR_SPLITS.split(",")), max_new_tokens_generation=8, progress=False)
    summary, details = evaluate(load_model(tiny_model), bundle, cfg)
    write_results(tmp_path / "out", summary, details)
    assert cells(summary) == {
        "forget": {"image+text": 5, "text": 60}, "forget_faces": {"image+text": 5},
        "retain": {"image+text": 3, "text": 40}, "retain_faces": {"image+text": 3},
        "real": {"image+text": 2, "text": 2}, "real_world": {"image+text": 2, "text": 3},
    }
    m = summary["metrics"]
    for split, mod in (("forget", "text"), ("retain", "text"), ("real", "text"), ("real_world", "text")):
        assert "truth_ratio" in m[split][mod], (split, mod)
    forget_text = [d for d in details if d["split"] == "forget" and d["modality"] == "text"]
    assert all("truth_ratio" in d["scores"] for d in forget_text)
    retain_text = [d for d in details if d["split"] == "retain" and d["modality"] == "text"]
    assert sum("truth_ratio" in d["scores"] for d in retain_text) == 8
    assert bundle.notes == {"retain/text": "truth_ratio over 8 of 40 questions: the others are not in TOFU's retain_perturbed"}
    assert "warning" not in capsys.readouterr().err


def test_clear_eval_missing_text_side_warns(runner, tiny_model, tmp_path):
    root = build_clear(tmp_path / "CLEAR", plus_tofu=False)
    res = run_eval(runner, tiny_model, root, tmp_path / "out", "forget01", "--splits", "forget,retain")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert cells(summary) == {"forget": {"image+text": 2}, "retain": {"image+text": 3}}
    missing = [w for w in warning_lines(res) if "text side missing" in w]
    assert len(missing) == 1 and "forget01+tofu, retain99+tofu" in missing[0]


@pytest.mark.parametrize("edit, needles", [
    (lambda root: pq.write_table(pq.read_table(p := root / "forget10_perturbed" / "train-00000-of-00001.parquet")
                                 .drop_columns(["perturbed_names"]), p), ["forget10_perturbed", "'perturbed_names'"]),
    (lambda root: shutil.rmtree(root / "real_world"), ["real_world"]),
    (lambda root: (root / "forget10" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 not parquet"),
     ["forget10", "not a readable parquet file"]),
])
def test_clear_bad_input_is_one_error_line(runner, tiny_model, data, tmp_path, edit, needles):
    root = Path(shutil.copytree(data["clear"], tmp_path / "CLEAR"))
    edit(root)
    res = run_eval(runner, tiny_model, root, tmp_path / "out", "forget10")
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_clear_unknown_forget_split(runner, tiny_model, data, tmp_path):
    assert_one_line_error(run_eval(runner, tiny_model, data["clear"], tmp_path / "out", "forget20"),
                          "forget01, forget05, forget10")


# --- these need `--tofu` on `mmunlearn eval` and the bundle's notes in summary.json (cli.py) --------


def test_clear_eval_cli_tofu_flag(runner, tiny_model, data, tmp_path):
    res = run_eval(runner, tiny_model, data["clear"], tmp_path / "out", "forget05", "--tofu", str(data["tofu"]),
                   "--splits", CLEAR_SPLITS)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert cells(summary) == {
        "forget": {"image+text": 4, "text": 40}, "forget_faces": {"image+text": 4},
        "retain": {"image+text": 3, "text": 60}, "retain_faces": {"image+text": 3},
        "real": {"image+text": 2, "text": 2}, "real_world": {"image+text": 2, "text": 3},
    }
    assert "truth_ratio" in summary["metrics"]["forget"]["text"] and not warning_lines(res)
    assert summary["notes"] == {"retain/text": "truth_ratio over 8 of 60 questions: the others are not in TOFU's retain_perturbed"}


def test_clear_summary_says_why_text_truth_ratio_is_absent(runner, tiny_model, data, tmp_path):
    res = run_eval(runner, tiny_model, data["clear"], tmp_path / "out", "forget01", "--splits", "forget,real")
    assert res.exit_code == 0, res.output
    notes = json.loads((tmp_path / "out" / "summary.json").read_text())["notes"]
    assert set(notes) == {"forget/text", "retain/text", "real/text", "real_world/text"}
    assert notes["forget/text"].startswith("truth_ratio absent") and "--tofu" in notes["forget/text"]


def test_clear_bad_tofu_folder_is_one_error_line(runner, tiny_model, data, tmp_path):
    tofu = Path(shutil.copytree(data["tofu"], tmp_path / "TOFU"))
    (tofu / "retain_perturbed.json").unlink()
    res = run_eval(runner, tiny_model, data["clear"], tmp_path / "out", "forget10", "--tofu", str(tofu))
    assert_one_line_error(res, "retain_perturbed")


# ------------------------------------------------------------------------------------------------
# MLLMU-Bench
# ------------------------------------------------------------------------------------------------


def test_mllmu_eval_end_to_end(runner, tiny_model, data, tmp_path):
    res = run_eval(runner, tiny_model, data["mllmu"], tmp_path / "out", "forget_5", "--splits",
                   "forget,test,retain,real", "--max-records", "12")
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["config"]["source"] == "mllmu"
    m = summary["metrics"]
    # forget_5 = one person: 3 image+text and 3 text questions (classification, generation, cloze)
    assert {mod: v["n"] for mod, v in m["forget"].items()} == {"image+text": 3, "text": 3}
    assert {mod: v["n"] for mod, v in m["test"].items()} == {"image+text": 3, "text": 3}
    for split in ("forget", "test"):
        for mod in ("image+text", "text"):
            assert {"cls_acc", "cls_acc_loglik", "rougeL_f1", "cloze_acc"} <= set(m[split][mod]), (split, mod)
    # MLLMU-Bench's own strict reading is cls_acc there; ours beside it, recomputed here from the rows
    assert summary["config"]["cls_acc_parser"] == "mllmu-strict"
    from mmunlearn.eval.metrics import mllmu_strict_option

    rows = [json.loads(line) for line in (tmp_path / "out" / "details.jsonl").read_text().splitlines()]
    for split in ("forget", "test"):
        for mod in ("image+text", "text"):
            cls = [r for r in rows if r["split"] == split and r["modality"] == mod and r["task"] == "classification"]
            letters = [r["reference"][0] for r in cls]  # "B. Tollhaven": the correct letter first
            # four options each: the strict parser needs only how many there are
            strict = sum(mllmu_strict_option(r["generated"], [""] * 4) == a for r, a in zip(cls, letters)) / len(cls)
            assert m[split][mod]["cls_acc"] == pytest.approx(strict), (split, mod)
            assert "cls_acc_ours" in m[split][mod]
    assert sum(v["n"] for v in m["retain"].values()) == 12 and sum(v["n"] for v in m["real"].values()) == 12
    assert not warning_lines(res)


@pytest.mark.parametrize("edit, needles", [
    (lambda root: shutil.rmtree(root / "Test_Set"), ["Test_Set"]),
    (lambda root: pq.write_table(pq.read_table(p := root / "ft_Data" / "train-00000-of-00001.parquet")
                                 .drop_columns(["metadata"]), p), ["ft_Data", "'metadata'"]),
])
def test_mllmu_bad_input_is_one_error_line(runner, tiny_model, data, tmp_path, edit, needles):
    root = Path(shutil.copytree(data["mllmu"], tmp_path / "M"))
    edit(root)
    res = run_eval(runner, tiny_model, root, tmp_path / "out", "forget_5")
    assert_one_line_error(res, *needles)
