import json
import math

import pytest
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.eval import evaluator as E
from mmunlearn.eval.evaluator import EvalConfig, evaluate, write_results
from mmunlearn.models.loader import load_model

METRICS = {"cls_acc", "cls_acc_loglik", "cls_acc_strict", "rougeL_f1", "rougeL_recall", "cloze_acc", "truth_ratio",
           "truth_ratio_forget_score", "truth_ratio_retain_score", "prob", "prob_options", "degenerate_rate",
           "refusal_rate"}


def test_a_model_that_always_says_B_scores_chance(tuned_small, monkeypatch):
    bundle, vanilla, _ = tuned_small
    loaded = load_model(vanilla)
    monkeypatch.setattr(E, "generate", lambda loaded, recs, **kw: ["B" for _ in recs])
    monkeypatch.setattr(E, "option_token_logprobs",
                        lambda loaded, recs, **kw: [[[-5.0], [-1.0], [-5.0], [-5.0]] for _ in recs])
    recs = [r for r in bundle.eval("retain") if r.task == "classification"]
    rows = E.score_records(loaded, recs, EvalConfig(progress=False), "retain")
    agg = E.aggregate(rows)
    total = sum(agg[m]["n"] for m in agg)
    acc = sum(agg[m]["cls_acc"] * agg[m]["n"] for m in agg) / total
    acc_ll = sum(agg[m]["cls_acc_loglik"] * agg[m]["n"] for m in agg) / total
    assert acc == pytest.approx(0.25, abs=0.02) and acc_ll == pytest.approx(0.25, abs=0.02)


def test_summary_schema_and_details(tuned_small, tmp_path):
    bundle, vanilla, _ = tuned_small
    summary, details = evaluate(load_model(vanilla), bundle, EvalConfig(progress=False))
    m = summary["metrics"]
    assert {"forget", "test", "retain", "real", "understanding", "understanding_forget", "understanding_retain",
            "understanding_unseen", "understanding_unseen_forget", "understanding_unseen_retain"} <= set(m)
    assert set(m["forget"]) == {"image+text", "text"}
    assert set(m["test"]) == {"image+text", "text"}
    for split, mods in m.items():
        for mod, vals in mods.items():
            assert set(vals) - {"n"} <= METRICS, (split, mod)
    # metrics that do not apply are absent, never 0
    assert "cloze_acc" not in m["understanding"]["image+text"]
    assert "truth_ratio" not in m["understanding"]["image+text"]
    assert "cloze_acc" not in m["test"]["image+text"]
    assert {"cls_acc", "cls_acc_loglik", "rougeL_f1", "cloze_acc", "truth_ratio", "degenerate_rate"} <= set(m["forget"]["text"])
    # the memorised vanilla model knows its people (chance 0.25; the forget split is one person, so a
    # single question moves it by ~0.17) and speaks fluently
    assert m["forget"]["text"]["cls_acc"] >= 0.6 and m["retain"]["image+text"]["cls_acc"] >= 0.8
    assert m["forget"]["text"]["truth_ratio"] < 1.0
    # the world is not MLLMU-Bench: cls_acc is our reading, the strict one beside it
    assert summary["config"]["cls_acc_parser"] == "ours" and summary["config"]["truth_ratio_mean"] == "geometric"
    assert 0.0 <= m["forget"]["text"]["cls_acc_strict"] <= 1.0
    assert 0.0 <= m["forget"]["text"]["truth_ratio_forget_score"] <= 1.0
    assert m["retain"]["text"]["degenerate_rate"] <= 0.10
    assert {"config", "timing"} <= set(summary) and summary["timing"]["total_s"] > 0
    assert len(details) == sum(v["n"] for s in ("forget", "test", "retain", "real", "understanding",
                                                "understanding_unseen") for v in m[s].values())
    d = details[0]
    assert {"id", "split", "modality", "task", "question", "reference", "generated", "scores"} <= set(d)
    write_results(tmp_path, summary, details)
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == json.loads(json.dumps(m))
    assert len((tmp_path / "details.jsonl").read_text().splitlines()) == len(details)


def test_results_are_written_atomically(tmp_path, monkeypatch):
    import mmunlearn.data.store as store

    def broken_dump(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(store.json, "dumps", broken_dump)
    with pytest.raises(RuntimeError):
        write_results(tmp_path, {"metrics": {}}, [])
    assert not (tmp_path / "summary.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_eval_cli_with_forget_quality(tuned_small, small_world, tmp_path):
    """forget_quality against a hand-written reference whose text truth ratios (1000, 2000, 3000) lie above every
    one of the run's: two fully separated samples of n and m, whose exact two-sided KS p-value is 2 / C(n + m, m)
    (of the C(n + m, m) equally likely orderings only "all of one, then all of the other" reach D = 1)."""
    _, vanilla, _ = tuned_small
    ref = tmp_path / "ref"
    ref.mkdir()
    reference = [1000.0, 2000.0, 3000.0]
    rows = [{"split": "forget", "modality": "text", "scores": {"truth_ratio": v}} for v in reference]
    rows.append({"split": "retain", "modality": "image+text", "scores": {"truth_ratio": 0.5}})  # not forget: unread
    (ref / "details.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (ref / "summary.json").write_text(json.dumps({"metrics": {}, "config": {"truth_ratio_mean": "geometric"}}))
    runner = CliRunner()
    args = ["eval", "--model", str(vanilla), "--data", str(small_world), "--forget-split", "forget_15",
            "--splits", "forget", "--out", str(tmp_path / "b")]
    res = runner.invoke(app, args + ["--reference-summary", str(ref / "summary.json")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    details = [json.loads(line) for line in (tmp_path / "b" / "details.jsonl").read_text().splitlines()]
    mine = [d["scores"]["truth_ratio"] for d in details
            if d["split"] == "forget" and d["modality"] == "text" and "truth_ratio" in d["scores"]]
    # the samples are separated: measured 6 ratios of 0.08-2.9 (a paraphrased answer is not always preferred),
    # 340 times below the reference's least
    assert mine and max(mine) < min(reference), mine
    n, m = len(mine), len(reference)  # measured n = 6: 2 / C(9, 3) = 1/42
    assert summary["metrics"]["forget"]["text"]["forget_quality"] == pytest.approx(2 / math.comb(n + m, m))
    # the reference has no image+text truth ratios: no forget_quality there rather than a made-up one
    assert "forget_quality" not in summary["metrics"]["forget"].get("image+text", {})
    again = runner.invoke(app, args)
    assert again.exit_code != 0 and "not empty" in again.output
