"""`--log-with`: every loss term and the learning rate reach the tracker, equal to unlearn_log.json's."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.train.tracking import check_tracker

FORGET = "forget_15"


def test_check_tracker_names_and_missing_packages(monkeypatch):
    assert check_tracker(None) is None
    with pytest.raises(ValueError, match="must be one of accelerate's trackers: .*wandb.*trackio"):
        check_tracker("wandb2")
    # accelerate's own list decides which are installed (its get_available_trackers)
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ValueError, match=r"pip install tensorboard \(or pip install 'mmunlearn\[track\]'\)"):
        check_tracker("tensorboard")
    with pytest.raises(ValueError, match="--log-with wandb needs the wandb package"):
        check_tracker("wandb")


def test_missing_tracker_is_one_error_line_before_anything(untrained_llava, small_world, tmp_path, monkeypatch):
    import accelerate.tracking

    real = accelerate.tracking.get_available_trackers
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers",
                        lambda: [t for t in real() if str(getattr(t, "value", t)) != "trackio"])
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(untrained_llava), "--data",
                                   str(small_world), "--out", str(out), "--forget-split", FORGET, "--steps", "1",
                                   "--no-eval", "--log-with", "trackio"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --log-with trackio needs the trackio package"), lines
    assert not out.exists()


def test_tensorboard_scalars_equal_the_run_log(untrained_llava, small_world, tmp_path):
    # tensorboard is in the dev extra: a missing package fails this test rather than skipping it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["unlearn", "--method", "ga", "--model", str(untrained_llava), "--data",
                                   str(small_world), "--out", str(out), "--forget-split", FORGET, "--steps", "3",
                                   "--batch-size", "4", "--lr", "1e-3", "--no-eval", "--log-with", "tensorboard"])
    assert res.exit_code == 0, res.output
    log = json.loads((out / "unlearn_log.json").read_text())
    assert log["tracking"]["with"] == "tensorboard"
    events = EventAccumulator(str(out / "logs" / "unlearn"))
    events.Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    for term in ("loss", "nll_forget", "lr"):
        assert sorted(scalars[f"train/{term}"]) == [0, 1, 2], (term, scalars.keys())
    assert [row["step"] for row in log["losses"]] == [0, 2]  # the log keeps every 5th step and the last
    for row in log["losses"]:
        for term in ("loss", "nll_forget", "lr"):
            assert scalars[f"train/{term}"][row["step"]] == pytest.approx(row[term], rel=1e-6), (term, row)
