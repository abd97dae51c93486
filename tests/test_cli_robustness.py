"""Bad inputs and interrupted runs: the CLI exits non-zero with one clear line on stderr, no traceback,
and leaves no summary.json behind."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mmunlearn.cli import app

FORGET = "forget_15"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def world_copy(small_world, tmp_path):
    dst = tmp_path / "world"
    shutil.copytree(small_world, dst)
    return dst


@pytest.fixture(scope="module")
def model_dir(untrained_llava):
    """A model folder for the commands' mechanics (errors, interruptions, what is written when): untrained."""
    return untrained_llava


def _rewrite_rows(path: Path, edit) -> None:
    table = pq.read_table(path)
    rows = table.to_pylist()
    edit(rows)
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), path)


def _assert_one_line_error(result, *needles: str, code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    # A run that failed mid-way may have drawn progress bars first; the error is one last line.
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    err = lines[-1] if lines else ""
    assert err.startswith("error: "), result.stderr
    assert sum("error" in line.lower() for line in lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    return err


def _relearn(model, data, out, *extra):
    return ["attack", "relearn", "--model", str(model), "--data", str(data), "--forget-split", FORGET,
            "--out", str(out), *extra]


def _probe(model, data, out, *extra):
    return ["attack", "probe", "--model", str(model), "--data", str(data), "--forget-split", FORGET,
            "--out", str(out), *extra]


# ---------------------------------------------------------------------------------------------
# data problems
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [_relearn, _probe])
def test_missing_data_folder(runner, model_dir, tmp_path, command):
    out = tmp_path / "out"
    res = runner.invoke(app, command(model_dir, tmp_path / "no_such_world", out))
    _assert_one_line_error(res, "no_such_world", "does not exist", code=2)
    assert not out.exists()


def test_corrupt_image_in_world_parquet(runner, model_dir, world_copy, tmp_path):
    path = world_copy / "data" / "test.parquet"

    def corrupt(rows):
        row = next(r for r in rows if r["image"] is not None)
        row["image"] = {"bytes": b"\x89PNG\r\n\x1a\n not really a png", "path": None}

    _rewrite_rows(path, corrupt)
    out = tmp_path / "out"
    res = runner.invoke(app, _probe(model_dir, world_copy, out))
    _assert_one_line_error(res, "test.parquet", "corrupt image", code=2)
    assert not (out / "summary.json").exists()


def test_record_without_an_answer(runner, model_dir, world_copy, tmp_path):
    path = world_copy / "data" / f"{FORGET}.parquet"

    def drop_answer(rows):
        next(r for r in rows if r["task"] == "generation")["answer"] = ""

    _rewrite_rows(path, drop_answer)
    out = tmp_path / "out"
    res = runner.invoke(app, _relearn(model_dir, world_copy, out))
    _assert_one_line_error(res, f"{FORGET}.parquet", "without an answer", code=2)
    assert not (out / "summary.json").exists()


def test_forget_split_absent(runner, model_dir, small_world, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["attack", "relearn", "--model", str(model_dir), "--data", str(small_world),
                              "--forget-split", "forget_40", "--out", str(out)])
    _assert_one_line_error(res, "forget_40", "not in", code=2)
    assert not out.exists()


def test_forget_retain_overlap(runner, model_dir, world_copy, tmp_path):
    manifest = json.loads((world_copy / "world.json").read_text())
    manifest["ids"]["retain_85"].append(manifest["ids"][FORGET][0])
    (world_copy / "world.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    res = runner.invoke(app, _probe(model_dir, world_copy, out))
    _assert_one_line_error(res, "overlap", manifest["ids"][FORGET][0], code=2)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# model and output problems
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, needle", [
    ({"model_type": "bert"}, "unknown model family 'bert'"),
    ("{ this is not json", "config.json"),
    ([1, 2, 3], "config.json"),
])
def test_model_of_unknown_family(runner, small_world, tmp_path, config, needle):
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    out = tmp_path / "out"
    for command in (_relearn, _probe):
        res = runner.invoke(app, command(bad, small_world, out))
        _assert_one_line_error(res, needle, code=2)
        assert not out.exists()


def test_missing_floor_model(runner, model_dir, small_world, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, _relearn(model_dir, small_world, out, "--floor-model", str(tmp_path / "no_floor")))
    _assert_one_line_error(res, "no_floor", code=2)
    assert not out.exists()


@pytest.mark.parametrize("args, needle", [(["--ratios", "5,abc"], "--ratios"), (["--ratios", "0,10"], "--ratios"),
                                          (["--steps", "0"], "--steps"), (["--scope", "all"], "--scope")])
def test_bad_relearn_options(runner, model_dir, small_world, tmp_path, args, needle):
    out = tmp_path / "out"
    res = runner.invoke(app, _relearn(model_dir, small_world, out, *args))
    _assert_one_line_error(res, needle, code=2)
    assert not out.exists()


@pytest.mark.parametrize("command", [_relearn, _probe])
def test_non_empty_out_without_overwrite(runner, model_dir, small_world, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    res = runner.invoke(app, command(model_dir, small_world, out))
    _assert_one_line_error(res, "not empty", "--overwrite", code=2)
    assert (out / "notes.txt").read_text() == "keep me" and not (out / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# interrupted runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("exc, code, needle", [(KeyboardInterrupt, 130, "interrupted"),
                                               ("nonfinite", 2, "loss became nan")])
def test_interrupted_relearn_leaves_no_summary(runner, model_dir, small_world, tmp_path, monkeypatch, exc, code,
                                               needle):
    import mmunlearn.eval.attacks.relearn as relearn
    from mmunlearn.train.loop import NonFiniteLossError

    real = relearn.relearn_once
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second ratio: the first one has already finished
            raise KeyboardInterrupt if exc is KeyboardInterrupt else NonFiniteLossError(
                "relearn: loss became nan at step 3; stopped — lower --lr or check the data")
        return real(*args, **kwargs)

    monkeypatch.setattr(relearn, "relearn_once", flaky)
    out = tmp_path / "out"
    res = runner.invoke(app, _relearn(model_dir, small_world, out, "--ratios", "10,50", "--steps", "2"))
    _assert_one_line_error(res, needle, code=code)
    assert len(calls) == 2
    assert (out / "config.json").is_file()  # the run had started
    assert not (out / "summary.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_interrupted_probe_leaves_no_summary(runner, model_dir, small_world, tmp_path, monkeypatch):
    import mmunlearn.eval.attacks.probe as probe

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(probe, "membership_inference", boom)
    out = tmp_path / "out"
    res = runner.invoke(app, _probe(model_dir, small_world, out))
    _assert_one_line_error(res, "interrupted", code=130)
    assert not (out / "summary.json").exists()


# ---------------------------------------------------------------------------------------------
# the happy paths write what the error paths must not
# ---------------------------------------------------------------------------------------------


def test_attack_relearn_cli_writes_summary_last(runner, model_dir, small_world, tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, _relearn(model_dir, small_world, out, "--ratios", "10,50", "--steps", "3",
                                      "--floor-model", str(model_dir)))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    config = json.loads((out / "config.json").read_text())
    details = [json.loads(line) for line in (out / "details.jsonl").read_text().splitlines()]
    assert set(summary["recovery"]) == {"10", "50"} and summary["budget"]["steps"] == 3
    assert summary["floor"] is not None and set(summary["floor"]["after"]) == {"10", "50"}
    assert config["command"] == "attack relearn" and config["ratios"] == [10.0, 50.0]
    assert {d["model"] for d in details} == {"target", "floor"}
    assert "AG" in res.stdout
    # a second run into the same folder needs --overwrite
    again = runner.invoke(app, _relearn(model_dir, small_world, out, "--ratios", "10", "--steps", "1"))
    _assert_one_line_error(again, "not empty", code=2)
    assert json.loads((out / "summary.json").read_text()) == summary


def test_attack_probe_cli(runner, tuned_small, small_world, tmp_path):
    """On the fine-tuned fixture: the membership attack tells the forget people from strangers."""
    out = tmp_path / "out"
    res = runner.invoke(app, _probe(tuned_small[1], small_world, out))
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attack"] == "probe" and summary["mia"]["forget_vs_holdout"]["loss_auc"] > 0.5
    assert (out / "details.jsonl").is_file() and (out / "config.json").is_file()
    assert "leak" in res.stdout


def test_real_process_prints_one_line(small_world, model_dir, tmp_path):
    """Through `python -m mmunlearn`, not only CliRunner: stderr is exactly one error line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "mmunlearn", *_relearn(model_dir, small_world, tmp_path / "out",
                                                                        "--forget-split", "forget_77")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "forget_77" in proc.stderr and "Traceback" not in proc.stderr
