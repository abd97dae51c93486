"""`unlearn --eval-every N --select-by RULE`: the rule language, and that the saved model is the kept step's."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.train.selection import Constraint, RuleError, choose, parse_rule

FORGET = "forget_15"


# ---- the rule language ------------------------------------------------------------------------------

def test_parse_valid_rules():
    rule = parse_rule("min:forget/image+text/cls_acc, retain/image+text/cls_acc>=0.9,retain/text/rougeL_f1 > 0.25")
    assert rule.objective == "min" and rule.key == "forget/image+text/cls_acc"
    assert rule.constraints == (Constraint("retain/image+text/cls_acc", ">=", 0.9),
                                Constraint("retain/text/rougeL_f1", ">", 0.25))
    assert rule.splits == ("forget", "retain")
    assert str(rule) == "min:forget/image+text/cls_acc,retain/image+text/cls_acc>=0.9,retain/text/rougeL_f1>0.25"
    assert parse_rule("max:understanding_retain/image+text/cls_acc").splits == ("understanding",)
    last = parse_rule("last,retain/text/cls_acc<=1e0")
    assert last.key is None and last.constraints[0].value == 1.0


@pytest.mark.parametrize("text, needle", [
    ("", "empty rule"),
    ("min:forget/image+text/cls_acc,", "empty item"),
    ("best:forget/image+text/cls_acc", "must start with min:KEY, max:KEY or last"),
    ("forget/image+text/cls_acc", "must start with"),
    ("min:forget/cls_acc", "not a split/modality/metric key"),
    ("min:forget/image+text/cls_acc,retain/text/cls_acc=0.9", "not a constraint"),
    ("min:forget/image+text/cls_acc,retain/text/cls_acc>=high", "not a constraint"),
    ("min:forget/image+text/cls_acc,retain/text/cls_acc>=1.2.3", "not a number"),
    ("min:forget/image+text/cls_acc,retain/text/cls_acc>=nan", "not a constraint"),
    ("min:holdout/image+text/cls_acc", "unknown split 'holdout'"),
    ("min:forget/video/cls_acc", "unknown modality 'video'"),
    ("min:forget/image+text/accuracy", "unknown metric 'accuracy'"),
    ("max:retain/text/forget_quality", "unknown metric 'forget_quality'"),
])
def test_malformed_rules_are_refused(text, needle):
    with pytest.raises(RuleError, match=None) as err:
        parse_rule(text)
    assert needle in str(err.value) and str(err.value).startswith("--select-by")


def test_identity_keys_are_tunes_only_and_ranked_on_the_unseen_photos():
    text = "min:test/image+text/cls_acc&identity/image+text/top5,identity/image+text/median_rank>=20"
    with pytest.raises(RuleError, match="only `mmunlearn tune`"):
        parse_rule(text)  # unlearn --select-by: its evaluations have no ranking
    rule = parse_rule(text, allow_relative=True)
    assert rule.objective_keys == ("test/image+text/cls_acc", "identity/image+text/top5")
    assert rule.splits == ("test",)  # the ranking reads the unseen photos' questions
    for bad in ("min:identity/text/top5", "min:identity/image+text/cls_acc"):
        with pytest.raises(RuleError, match="identity keys are identity/image\\+text/METRIC"):
            parse_rule(bad, allow_relative=True)


def _evals(*values, key=("retain", "text", "cls_acc"), other=None):
    rows = []
    for i, v in enumerate(values):
        metrics = {key[0]: {key[1]: {key[2]: v}}}
        if other:
            metrics["forget"] = {"text": {"cls_acc": other[i]}}
        rows.append({"step": 2 * (i + 1), "metrics": metrics})
    return rows


def test_choose_objective_ties_constraints_and_fallback():
    assert choose(parse_rule("max:retain/text/cls_acc"), _evals(0.5, 0.9, 0.9, 0.1))[0] == 1  # tie: earliest
    assert choose(parse_rule("min:retain/text/cls_acc"), _evals(0.5, 0.9, 0.2, 0.2))[0] == 2
    rule = parse_rule("min:forget/text/cls_acc,retain/text/cls_acc>=0.8")
    idx, reason = choose(rule, _evals(0.9, 0.85, 0.5, 0.9, other=[0.9, 0.5, 0.0, 0.6]))
    assert idx == 1 and "prefers step 4" in reason  # step 6 forgets more but breaks the constraint
    idx, reason = choose(rule, _evals(0.1, 0.2, other=[0.5, 0.4]))
    assert idx == 1 and reason.startswith("no evaluation met")  # nothing meets it: the last step
    assert choose(parse_rule("last,retain/text/cls_acc>=0.5"), _evals(0.9, 0.6, 0.3))[0] == 1
    assert choose(None, _evals(0.9, 0.1))[0] == 1
    # incremental: the choice over every prefix is where an engine snapshots, so it holds the final choice
    rows = _evals(0.3, 0.8, 0.2, 0.8, 0.9, 0.1)
    rule = parse_rule("max:retain/text/cls_acc")
    picks = {choose(rule, rows[: n + 1])[0] for n in range(len(rows)) if choose(rule, rows[: n + 1])[0] == n}
    assert choose(rule, rows)[0] in picks


# ---- the CLI refuses before training -----------------------------------------------------------------

@pytest.mark.parametrize("extra, needle", [
    (["--eval-every", "2", "--select-by", "best:retain/text/cls_acc"], "must start with min:KEY"),
    (["--eval-every", "2", "--select-by", "max:retain/text/accuracy"], "unknown metric 'accuracy'"),
    (["--eval-every", "2", "--select-by", "max:holdout/text/cls_acc"], "unknown split 'holdout'"),
    (["--select-by", "max:retain/text/cls_acc"], "--select-by needs --eval-every"),
    (["--eval-every", "2", "--eval-splits", "forget,nope"], "unknown split(s) nope"),
    (["--eval-every", "2", "--eval-records", "1", "--select-by", "max:retain/text/cloze_acc"], "cannot be measured"),
])
def test_cli_refuses_bad_selection_before_training(tuned_small, small_world, tmp_path, extra, needle):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(tuned_small[1]), "--data",
                                   str(small_world), "--out", str(out), "--forget-split", FORGET, "--steps", "2",
                                   "--no-eval", *extra])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert not out.exists()


def test_multi_stage_method_is_refused(tuned_small, small_world, tmp_path):
    from mmunlearn.methods.base import get_method
    from mmunlearn.train.unlearn import UnlearnConfig, check_selection

    with pytest.raises(ValueError, match="single-stage"):
        check_selection(UnlearnConfig(method="smfa", eval_every=2), get_method("smfa"), 1)
    with pytest.raises(ValueError, match="one process only"):
        check_selection(UnlearnConfig(method="ga", eval_every=2), get_method("ga"), 2)


# ---- runs -------------------------------------------------------------------------------------------

def _unlearn(model, data, out, steps, *extra):
    res = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(model), "--data", str(data),
                                   "--out", str(out), "--forget-split", FORGET, "--steps", str(steps),
                                   "--batch-size", "4", "--lr", "1e-3", "--no-eval", *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "unlearn_log.json").read_text())


def test_select_by_keeps_the_preferred_step_exactly(tuned_small, small_world, tmp_path):
    """Gradient ascent wears retain down, so `max:retain/...` prefers the earliest evaluation (ties go to
    the earliest): the saved weights must be those of a plain run of exactly that many steps, which
    also proves the evaluations did not change what training drew."""
    key = "retain/image+text/cls_acc_loglik"
    log = _unlearn(tuned_small[1], small_world, tmp_path / "kept", 6, "--eval-every", "2", "--eval-records", "8",
                   "--eval-splits", "retain", "--select-by", f"max:{key}")
    steps = [e["step"] for e in log["evaluations"]]
    values = [e["metrics"]["retain"]["image+text"]["cls_acc_loglik"] for e in log["evaluations"]]
    assert steps == [2, 4, 6]
    assert values[0] == max(values), values  # what makes the preference predictable
    sel = log["selection"]
    assert sel["kept_step"] == 2 and sel["last_step"] == 6 and sel["met_rule"] is True, sel
    assert sel["rule"] == f"max:{key}" and "prefers step 2" in sel["reason"]
    assert [row["step"] for row in log["losses"]] == [0, 5]  # training itself ran all 6 steps

    _unlearn(tuned_small[1], small_world, tmp_path / "two", 2)
    kept = load_file(tmp_path / "kept" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model.safetensors")
    assert kept.keys() == two.keys()
    for name in kept:
        assert torch.equal(kept[name], two[name]), name


def test_eval_every_without_rule_logs_and_keeps_the_last(tuned_small, small_world, tmp_path):
    import importlib.util

    tensorboard = importlib.util.find_spec("tensorboard") is not None
    log = _unlearn(tuned_small[1], small_world, tmp_path / "run", 3, "--eval-every", "2", "--eval-records", "8",
                   "--eval-splits", "retain", *(["--log-with", "tensorboard"] if tensorboard else []))
    assert [e["step"] for e in log["evaluations"]] == [2, 3]  # every 2 steps and after the last
    for e in log["evaluations"]:
        assert e["metrics"]["retain"]["image+text"]["n"] > 0 and "forget" not in e["metrics"]
    sel = log["selection"]
    assert sel["kept_step"] == 3 and sel["rule"] is None and sel["met_rule"] is None
    assert sel["reason"] == "no --select-by: the last step is kept"
    if tensorboard:  # the evaluations reach the tracker too, at the step they followed
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(tmp_path / "run" / "logs" / "unlearn"))
        events.Reload()
        tag = "eval/retain/image+text/cls_acc_loglik"
        got = {e.step: e.value for e in events.Scalars(tag)}
        assert got == pytest.approx({e["step"]: e["metrics"]["retain"]["image+text"]["cls_acc_loglik"]
                                     for e in log["evaluations"]})
