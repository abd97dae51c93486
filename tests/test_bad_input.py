"""Bad input is one `error:` line and exit code 2, before --out is created or touched (issue #28): every case
here was measured wrong once (exit 0 with a no-op model, a bare Python message, a run.json left behind that made
the retry refuse, a StopIteration, no line number, "does not exist" for a file)."""

from __future__ import annotations

import os
import stat

import pytest
from typer.testing import CliRunner

from mmunlearn.cli import app

OWN = """{"person_id": "p1", "question": "Where was p1 born?", "answer": "In Norrow."}
{"person_id": "p2", "question": "Where was p2 born?", "answer": "In Brisk."}
{"person_id": "p3", "question": "Where was p3 born?", "answer": "In Tollhaven."}
"""


def one_error(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture()
def own_file(tmp_path):
    path = tmp_path / "people.jsonl"
    path.write_text(OWN)
    return path


def _unlearn(model, data, out, *extra, ids=("--forget-split", "forget_15")):
    return CliRunner().invoke(app, ["unlearn", "--method", "graddiff", "--model", str(model), "--data", str(data),
                                    *ids, "--out", str(out), "--no-eval", *extra])


@pytest.mark.parametrize("extra,needle", [
    (["--steps", "-1"], "--steps must be greater than 0 (got -1)"),
    (["--steps", "0"], "--steps must be greater than 0 (got 0)"),
    (["--lr", "-1"], "--lr must be greater than 0 (got -1)"),
    (["--scope", "foo"], "--scope must be one of full, lora, vision, language (got 'foo')"),
    (["--batch-size", "0"], "--batch-size must be greater than 0 (got 0)"),
    (["--max-records", "-3"], "--max-records must be 0 or more (got -3)"),
    (["--set", "beta"], "--set expects KEY=VALUE"),
    (["--log-with", "nosuchtracker"], "--log-with must be one of accelerate's trackers"),
    (["--preset", "huge"], "--preset must be one of auto, tiny, real (got 'huge')"),
    (["--mixed-precision", "fp8"], "unknown mixed precision 'fp8'"),
    # a method's own options, checked when its config is made (the last --method given wins)
    (["--method", "viker", "--set", "k=0"], "viker k must be ≥ 1, got 0"),
    (["--method", "smfa", "--set", "sculpt=nope"], "smfa sculpt must be one of"),
    (["--method", "mmunlearner", "--set", "mask_slices=-1"], "mmunlearner mask_slices must be ≥ 0"),
    (["--method", "mmunlearner", "--set", "mask_slices=x"], "option mask_slices expects a number (got 'x')"),
    (["--method", "vkd-paper", "--set", "vkd_distance=l1"], "vkd vkd_distance must be one of ('mse', 'sq_l2')"),
    (["--method", "vkd", "--set", "augment=2"], "vkd augment is a probability in [0, 1], got 2"),
    (["--method", "vkd", "--set", "forget_loss=strangers"], "vkd forget_loss must be one of ('ga', 'npo', 'stranger')"),
    (["--method", "vkd", "--set", "keep_visible_loss=mse"], "vkd keep_visible_loss must be one of ('nll', 'kl')"),
])
def test_unlearn_refuses_bad_options_before_out_exists(untrained_llava, small_world, tmp_path, extra, needle):
    out = tmp_path / "run"
    one_error(_unlearn(untrained_llava, small_world, out, *extra), needle)
    assert not out.exists()


def test_forgetting_everyone_is_refused_and_the_retry_is_not(untrained_llava, own_file, tmp_path):
    out = tmp_path / "run"
    one_error(_unlearn(untrained_llava, own_file, out, ids=("--forget-ids", "p1,p2,p3")),
              "--forget-ids names everyone (3 people)")
    assert not out.exists()  # no run.json left behind: the corrected command is not refused
    res = _unlearn(untrained_llava, own_file, out, "--steps", "1", ids=("--forget-ids", "p1,p2"))
    assert res.exit_code == 0, res.output


def test_eval_refuses_batch_size_zero_and_leaves_no_folder(untrained_llava, small_world, tmp_path):
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--model", str(untrained_llava), "--data", str(small_world),
                                   "--forget-split", "forget_15", "--out", str(out), "--batch-size", "0"])
    one_error(res, "--batch-size must be greater than 0 (got 0)")
    assert not out.exists()


def test_a_non_empty_out_is_left_untouched(untrained_llava, small_world, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    res = CliRunner().invoke(app, ["eval", "--model", str(untrained_llava), "--data", str(small_world),
                                   "--forget-split", "forget_15", "--out", str(out)])
    line = one_error(res, "is not empty; pass --overwrite to replace it")
    assert "--resume" not in line  # eval has no --resume: the message offers what the command has
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


def test_empty_and_malformed_own_data_name_the_file_and_line(untrained_llava, tmp_path):
    empty, bad = tmp_path / "empty.jsonl", tmp_path / "bad.jsonl"
    empty.write_text("")
    bad.write_text(OWN.splitlines()[0] + "\n" + '{"person_id": "p2", "question": oops}\n')
    for data, needle in ((empty, f"{empty}: the file is empty"),
                         (bad, f"{bad} line 2: not valid JSON (Expecting value at column 33)")):
        out = tmp_path / "run"
        one_error(_unlearn(untrained_llava, data, out, ids=("--forget-ids", "p1")), needle)
        assert not out.exists()


def test_a_model_path_that_is_a_file_says_so(small_world, tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"not a folder")
    out = tmp_path / "run"
    one_error(_unlearn(model, small_world, out), f"{model} is a file, not a model folder")
    assert not out.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_results_follow_the_umask(untrained_llava, small_world, tmp_path, umask, mode):
    """Results are written through a temporary file (atomic), yet with the permissions open() would give."""
    out = tmp_path / "eval"
    old = os.umask(umask)
    try:
        res = CliRunner().invoke(app, ["eval", "--model", str(untrained_llava), "--data", str(small_world),
                                       "--forget-split", "forget_15", "--out", str(out), "--splits", "forget",
                                       "--max-records", "4"])
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("summary.json", "details.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    run = tmp_path / "run"  # a trained model too: safetensors writes its file 0600 whatever the umask
    old = os.umask(umask)
    try:
        res = _unlearn(untrained_llava, small_world, run, "--steps", "1", "--batch-size", "2")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "run.json", "config.json"):
        assert stat.S_IMODE((run / name).stat().st_mode) == mode, name


def test_debug_shows_the_traceback_anywhere_on_the_line(small_world, tmp_path, monkeypatch):
    from mmunlearn import cli

    monkeypatch.setitem(cli._DEBUG, "on", False)
    args = ["unlearn", "--method", "graddiff", "--model", str(tmp_path / "none"), "--data", str(small_world),
            "--forget-split", "forget_15", "--out", str(tmp_path / "run"), "--steps", "-1"]
    plain = CliRunner().invoke(app, args)
    one_error(plain, "--steps must be greater than 0")
    assert "Traceback" not in plain.stderr
    # `--debug` after the command name: main() takes it out (typer wants it first) and switches it on
    argv = cli._debug_flag_anywhere(["mmunlearn", *args, "--debug"])
    assert argv == ["mmunlearn", *args] and cli._DEBUG["on"]
    debug = CliRunner().invoke(app, argv[1:])
    assert debug.exit_code == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "error: --steps must be greater than 0 (got -1)"


def test_an_unexpected_failure_is_one_line_with_the_way_to_see_more(small_world, tmp_path, monkeypatch):
    import mmunlearn.workflow as workflow
    from mmunlearn import cli

    monkeypatch.setitem(cli._DEBUG, "on", False)  # restored afterwards: --debug below switches it on

    def broken(**kwargs):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(workflow, "eval_run", broken)
    res = CliRunner().invoke(app, ["eval", "--model", "x", "--data", str(small_world), "--out", str(tmp_path / "e")])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "error: RuntimeError: something inside broke (run again with --debug for the traceback)"]
    debug = CliRunner().invoke(app, ["--debug", "eval", "--model", "x", "--data", str(small_world), "--out",
                                     str(tmp_path / "e")])
    assert isinstance(debug.exception, RuntimeError)  # --debug lets the traceback through


def test_unlearn_names_a_tiny_builder_as_what_it_is(small_world, tmp_path):
    """A builder name is not a trained model: the message says how to make one (it used to offer the very name
    it refused)."""
    out = tmp_path / "run"
    one_error(_unlearn("tiny-llava", small_world, out),
              "tiny-llava is a tiny builder, not a trained model: this command needs a model folder "
              "(make one with `mmunlearn finetune --model tiny-llava --data DATA --out DIR`)")
    assert not out.exists()


@pytest.mark.parametrize("option,needle", [
    ("forget_loss=stranger", "vkd forget_loss=stranger draws never-seen people for the synthetic world only"),
    ("keep_visible=1", "vkd keep_visible needs the forget people's visible-feature photo questions"),
])
def test_vkd_options_this_data_cannot_serve_are_refused_before_out_exists(untrained_llava, own_file, tmp_path,
                                                                          option, needle):
    out = tmp_path / "run"
    one_error(_unlearn(untrained_llava, own_file, out, "--method", "vkd", "--set", option,
                       ids=("--forget-ids", "p1")), needle)
    assert not out.exists()  # no run.json left behind
