"""`mmunlearn tune`: the tuning population, the selection rule, pruning, and the readers of tuned.json
(`bench --tuned`, `unlearn --config`)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.train.selection import RuleError, parse_rule, resolve_relative
from mmunlearn.tune import TuneConfig, choose_trial, run_tune

runner = CliRunner()


# ---- the tuning population -------------------------------------------------------------------------
def test_world_tuning_population_is_outside_every_reported_split(tmp_path):
    from mmunlearn.data.store import load_data, save_world, world_tune_ids
    from mmunlearn.data.world import WorldConfig, build_world, tune_population

    world = build_world(WorldConfig(profiles=60, real=2, holdout=2, seed=3, train_phrasings=1))
    forget, retain = world.ids["tune_forget"], world.ids["tune_retain"]
    assert len(forget) == len(retain) == 10 and not set(forget) & set(retain)
    assert not (set(forget) | set(retain)) & set(world.ids["forget_15"])
    # a world written before the tuning population existed gets the same people from its ids
    old_ids = {k: v for k, v in world.ids.items() if not k.startswith("tune_")}
    assert tune_population(old_ids, 3) == (forget, retain)
    save_world(world, tmp_path / "w")
    bundle = load_data(tmp_path / "w", "forget_10")
    tune = set(forget) | set(retain)
    assert world_tune_ids(bundle.manifest) == (forget, retain)
    assert len(bundle.retain_ids) == 60 - 6 - 20  # forget_10 of 60 people is 6; the tuning people leave
    assert not {r.profile_id for r in bundle.splits["retain"]} & tune
    # people chosen by id may be anyone, a tuning person included
    chosen = load_data(tmp_path / "w", forget_ids=[forget[0]])
    assert chosen.forget_ids == {forget[0]} and set(retain) <= chosen.retain_ids
    # small worlds have none (they would lose their retain side)
    assert tune_population(build_world(WorldConfig(profiles=6, real=1, holdout=1)).ids, 0) == ([], [])


def test_tuning_bundles_train_and_score_on_the_tuning_people_only(small_world):
    from mmunlearn.tune import tuning_bundles

    train, score = tuning_bundles(small_world, ["p000"], ["p001"])
    people = lambda recs: {r.profile_id for r in recs}  # noqa: E731
    assert people(train.splits["forget"]) == {"p000"}
    # the reported forget person (p002, every forget_N of this world) is on neither side
    assert people(train.splits["retain"]) == {"p001", "p003", "p004", "p005"}
    assert people(score.splits["retain"]) == {"p001"} and score.retain_ids == {"p001"}
    assert people(score.splits["understanding"]) == {"p000", "p001"}


def test_trials_are_scored_only_on_the_questions_the_rule_reads(small_world):
    from mmunlearn.tune import DEFAULT_RULE, scoring_sample, tuning_bundles

    _, score = tuning_bundles(small_world, ["p000"], ["p001"])
    sample = scoring_sample(score, parse_rule(DEFAULT_RULE, allow_relative=True), 3, 100)
    groups = lambda recs: {(r.profile_id, r.modality, r.task) for r in recs}  # noqa: E731
    # the rule: test cls (both modalities) of the forget person, retain cls (both) of the kept person,
    # understanding cls of the kept person's photos, degenerate replies of forget text answers
    assert groups(sample.splits["test"]) == {("p000", "image+text", "classification"), ("p000", "text", "classification")}
    assert groups(sample.splits["retain"]) == {("p001", "image+text", "classification"), ("p001", "text", "classification")}
    assert groups(sample.splits["understanding"]) == {("p001", "image+text", "classification")}
    assert groups(sample.splits["forget"]) == {("p000", "text", "cloze"), ("p000", "text", "generation")}
    assert set(sample.splits) == {"forget", "test", "retain", "understanding"}
    # at most 3 per (split, modality, task), all evaluation phrasings, the same 3 every time
    for split, recs in sample.splits.items():
        for group in groups(recs):
            available = [r for r in score.eval(split) if (r.profile_id, r.modality, r.task) == group]
            n = sum((r.profile_id, r.modality, r.task) == group for r in recs)
            assert n == min(3, len(available)) and all(r.phase == "eval" for r in recs)
    again = scoring_sample(score, parse_rule(DEFAULT_RULE, allow_relative=True), 3, 100)
    assert [r.id for r in again.splits["retain"]] == [r.id for r in sample.splits["retain"]]


# ---- the rule ----------------------------------------------------------------------------------------
def test_relative_constraints_and_mean_objectives():
    rule = parse_rule("min:test/image+text/cls_acc&test/text/cls_acc,retain/text/cls_acc>=0.95x", allow_relative=True)
    assert rule.objective_keys == ("test/image+text/cls_acc", "test/text/cls_acc")
    vanilla = {"retain": {"text": {"cls_acc": 0.8}}}
    resolved = resolve_relative(rule, vanilla)
    assert resolved.constraints[0].value == pytest.approx(0.76) and not resolved.constraints[0].relative
    with pytest.raises(RuleError, match="relative"):
        parse_rule("min:forget/text/cls_acc,retain/text/cls_acc>=0.95x")  # --select-by has no vanilla


def test_choose_trial_feasible_first_then_objective_then_time():
    def trial(n, objective, feasible, margin, wall, state="complete"):
        return {"number": n, "objective": objective, "feasible": feasible, "margin": margin, "wall_time_s": wall,
                "state": state}

    trials = [trial(0, 0.10, False, 0.3, 1.0), trial(1, 0.40, True, 0.0, 9.0), trial(2, 0.40, True, 0.0, 5.0),
              trial(3, 0.60, True, 0.0, 1.0), trial(4, None, False, None, 1.0, state="pruned")]
    best, why = choose_trial(trials)
    assert best["number"] == 2 and "meeting every constraint" in why  # 0.40 beats 0.60; tie → faster
    best, why = choose_trial([trial(0, 0.1, False, 0.5, 1.0), trial(1, 0.3, False, 0.2, 1.0)])
    assert best["number"] == 1 and "closest" in why
    assert choose_trial([trial(0, None, False, None, 1.0, state="pruned")])[0] is None


# ---- a tune, end to end on the small world ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned_ga(tuned_small, small_world, tmp_path_factory):
    """Three GA trials tuning p000 (kept: p001) — never the reported forget person p002 — the second
    one poisoned with a NaN loss. Also returns the people of every record the evaluator scored during the tune
    and of every forget record a trial unlearned, as seen by the evaluator and the trainer themselves."""
    from mmunlearn.eval import evaluator as E
    from mmunlearn.methods.ga import GradientAscent
    from mmunlearn.train import unlearn as U

    _, vanilla, _ = tuned_small
    out = tmp_path_factory.mktemp("tune") / "t"
    original = GradientAscent.loss
    calls = {"n": 0}
    seen = {"scored": set(), "unlearned": set()}

    def poisoned(self, ctx, step):
        terms = original(self, ctx, step)
        if step == 0:
            calls["n"] += 1
        if calls["n"] == 2 and step == 3:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    def scored(loaded, records, *args, **kwargs):
        seen["scored"] |= {r.profile_id for r in records}
        return score_records(loaded, records, *args, **kwargs)

    def unlearned(bundle, *args, **kwargs):
        seen["unlearned"] |= {r.profile_id for r in bundle.splits["forget"]}
        return unlearn(bundle, *args, **kwargs)

    score_records, unlearn = E.score_records, U.unlearn
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GradientAscent, "loss", poisoned)
        mp.setattr(E, "score_records", scored)
        mp.setattr(U, "unlearn", unlearned)
        result = run_tune(small_world, TuneConfig(model=str(vanilla), methods=["ga"], trials=3, eval_records=16,
                                                  budget=480), out, ["p000"], ["p001"], progress=lambda msg: None)
    return out, result, seen


def test_a_rule_reading_identity_ranks_vanilla_and_every_trial_and_selects_on_it(tuned_small, small_world, tmp_path,
                                                                              monkeypatch):
    """`identity/image+text/…` keys (issue #32): the rank attack runs on vanilla and after each trial, on the
    tuning forget person's unseen photos only, and its numbers are what the objective and constraints read. The
    ranking is replaced by hand-set numbers (the attack itself is tested in test_rank_attack): vanilla top-5 1.0,
    then 0.6 and 0.2 for the two trials; the objective is their mean with unseen-photo accuracy, so the second
    trial wins unless its accuracy exceeds the first's by 0.8. A rule without identity keys never ranks."""
    import mmunlearn.eval.attacks.rank as R
    from mmunlearn.methods.ga import GradientAscent

    _, vanilla, _ = tuned_small
    ranked = []
    top5 = iter([1.0, 0.6, 0.2])

    def fake_rank(loaded, bundle, cfg):
        ranked.append((cfg.photos, cfg.retain_people, cfg.holdout, sorted(bundle.forget_ids)))
        t = next(top5)
        return {"groups": {"forget": {"top1": t / 2, "top5": t, "mrr": t / 3, "median_rank": 10 - 5 * t}}}, []

    monkeypatch.setattr(R, "run_rank", fake_rank)
    monkeypatch.setattr(GradientAscent, "search_space", {"steps": ("int", 1, 2)})
    rule = "min:test/image+text/cls_acc&identity/image+text/top5,identity/image+text/median_rank>=1"
    cfg = TuneConfig(model=str(vanilla), methods=["ga"], trials=2, eval_records=8, budget=16, rule=rule)
    result = run_tune(small_world, cfg, tmp_path / "t", ["p000"], ["p001"], progress=lambda msg: None)
    assert ranked == [("test", 0, False, ["p000"])] * 3  # vanilla, then each trial
    assert result["vanilla"]["identity/image+text/top5"] == 1.0
    rows = result["trials"]
    assert [r["numbers"]["identity/image+text/top5"] for r in rows] == [0.6, 0.2]
    assert [r["numbers"]["identity/image+text/median_rank"] for r in rows] == [7.0, 9.0]
    for r in rows:
        assert r["objective"] == pytest.approx((r["numbers"]["test/image+text/cls_acc"] + r["numbers"][
            "identity/image+text/top5"]) / 2)
    assert result["methods"]["ga"]["trial"] == 1

    ranked.clear()
    run_tune(small_world, TuneConfig(model=str(vanilla), methods=["ga"], trials=1, eval_records=8, budget=16),
             tmp_path / "plain", ["p000"], ["p001"], progress=lambda msg: None)
    assert ranked == []


def test_tune_scores_only_the_tuning_people_prunes_nan_and_records_every_trial(tuned_ga, small_world):
    from mmunlearn.data.store import load_data

    out, result, seen = tuned_ga
    saved = json.loads((out / "tuned.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["tune_forget"] == ["p000"] and saved["tune_retain"] == ["p001"]
    # what the evaluator itself scored (vanilla and every trial) and what the trials unlearned, as the evaluator
    # and the trainer saw them: the tuning people only, so never the reported forget person (read from the world)
    # nor the retain people p003-p005
    reported = load_data(small_world, "forget_15")
    assert seen["scored"] == {"p000", "p001"} and seen["unlearned"] == {"p000"}
    assert reported.forget_ids == {"p002"} and not seen["scored"] & reported.forget_ids
    trials = saved["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2]
    assert [t["state"] for t in trials] == ["complete", "pruned", "complete"]
    assert "step 3" in trials[1]["why"]
    # the choice follows the rule, recomputed here from the recorded trials
    done = [t for t in trials if t["state"] == "complete"]
    feasible = [t for t in done if t["feasible"]]
    pool = feasible or done
    key = (lambda t: (t["objective"], t["wall_time_s"])) if feasible else (lambda t: (t["margin"], t["objective"]))
    assert saved["methods"]["ga"]["trial"] == min(pool, key=key)["number"]
    chosen = next(t for t in trials if t["number"] == saved["methods"]["ga"]["trial"])
    assert saved["methods"]["ga"]["lr"] == chosen["lr"] and saved["methods"]["ga"]["steps"] == chosen["steps"]
    # the compute budget: 480 samples at batch 8 → GA's steps in [15, 60], each trial's samples recorded
    assert saved["budget"]["samples"] == 480 and saved["budget"]["top_steps"] == {"ga": 60}
    assert all(15 <= t["steps"] <= 60 and t["trained_samples"] == 8 * t["steps"] for t in trials)
    assert saved["methods"]["ga"]["trained_samples"] == 8 * chosen["steps"]
    # the trials trained on p000 as the forget person, with p002 (the reported forget person) on neither side
    log = json.loads((out / "trials" / "ga" / "trial0" / "unlearn_log.json").read_text())
    assert log["config"]["lr"] == trials[0]["lr"] and log["config"]["steps"] == trials[0]["steps"]
    assert not list((out / "trials").rglob("*.safetensors"))  # trial models are not kept


def test_an_interrupted_tune_keeps_finished_methods(tuned_small, small_world, tmp_path, monkeypatch):
    """Ctrl-C in the second method's training: the first method's choice is on disk, and the rerun tunes only
    the second (counted: no GA step is taken again). Searches of 3-4 steps: what is kept matters here, not what
    is found."""
    import mmunlearn.tune as T
    from mmunlearn.methods.ga import GradientAscent
    from mmunlearn.methods.graddiff import GradDiff

    _, vanilla, _ = tuned_small
    cfg = TuneConfig(model=str(vanilla), methods=["ga", "graddiff"], trials=1, eval_records=4)
    tuned, ga_loss, graddiff_loss = [], GradientAscent.loss, GradDiff.loss
    ga_steps = {"n": 0}

    def counted(name, ctx, progress=None):
        tuned.append(name)
        return tune_method(name, ctx, progress)

    def counted_ga(self, ctx, step):
        ga_steps["n"] += 1
        return ga_loss(self, ctx, step)

    def interrupted(self, ctx, step):
        if step == 2:
            raise KeyboardInterrupt
        return graddiff_loss(self, ctx, step)

    tune_method = T.tune_method
    monkeypatch.setattr(T, "tune_method", counted)
    monkeypatch.setattr(GradientAscent, "search_space", {"steps": ("int", 3, 4)})
    monkeypatch.setattr(GradDiff, "search_space", {**GradDiff.search_space, "steps": ("int", 3, 4)})
    monkeypatch.setattr(GradientAscent, "loss", counted_ga)
    monkeypatch.setattr(GradDiff, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_tune(small_world, cfg, tmp_path / "t", ["p000"], ["p001"], progress=lambda msg: None)
    assert tuned == ["ga", "graddiff"] and ga_steps["n"] > 0
    first = json.loads((tmp_path / "t" / "tuned.json").read_text())
    assert set(first["methods"]) == {"ga"} and {t["method"] for t in first["trials"]} == {"ga"}

    monkeypatch.setattr(GradDiff, "loss", graddiff_loss)
    tuned.clear()
    ga_steps["n"] = 0
    msgs = []
    again = run_tune(small_world, cfg, tmp_path / "t", ["p000"], ["p001"], progress=msgs.append, resume=True)
    assert tuned == ["graddiff"] and ga_steps["n"] == 0 and "ga: already tuned" in msgs
    assert again["methods"]["ga"] == first["methods"]["ga"] and set(again["methods"]) == {"ga", "graddiff"}
    assert [t["method"] for t in again["trials"]] == ["ga", "graddiff"]
    assert again["timing"]["resumed"] == ["ga"]  # its wall time covers graddiff only, and the report says so


def test_set_fixes_a_method_option_in_every_trial_and_leaves_it_out_of_the_search(tuned_small, small_world, tmp_path,
                                                                                monkeypatch):
    """`tune --set alpha=7.5`: GradDiff searches alpha over [0.3, 10] by default; with it fixed, optuna is never asked
    for alpha, every trial trains with 7.5 (read from the method's own config inside its loss), tuned.json's choice
    carries it for `unlearn --config` and `bench --tuned`, and the table says it once, above the rows."""
    import optuna

    from mmunlearn.methods.graddiff import GradDiff
    from mmunlearn.report.tuning import tune_table

    _, vanilla, _ = tuned_small
    asked, alphas, loss = [], set(), GradDiff.loss
    suggest_float = optuna.trial.Trial.suggest_float

    def recorded_suggest(self, name, *args, **kwargs):
        asked.append(name)
        return suggest_float(self, name, *args, **kwargs)

    def recorded_loss(self, ctx, step):
        alphas.add(self.cfg.alpha)
        return loss(self, ctx, step)

    monkeypatch.setattr(optuna.trial.Trial, "suggest_float", recorded_suggest)
    monkeypatch.setattr(GradDiff, "loss", recorded_loss)
    monkeypatch.setattr(GradDiff, "search_space", {**GradDiff.search_space, "steps": ("int", 2, 3)})
    cfg = TuneConfig(model=str(vanilla), methods=["graddiff"], trials=2, eval_records=4, budget=64, fixed={"alpha": 7.5})
    result = run_tune(small_world, cfg, tmp_path / "t", ["p000"], ["p001"], progress=lambda msg: None)
    assert asked == ["lr", "lr"] and alphas == {7.5}  # lr searched in both trials, alpha in neither
    assert [t["method_args"] for t in result["trials"]] == [{"alpha": 7.5}] * 2
    assert result["methods"]["graddiff"]["method_args"] == {"alpha": 7.5}
    table = tune_table(result)
    assert "_Every trial also used alpha 7.5 (`--set`, not searched)._" in table
    assert "alpha 7.5" not in table.split("| method |", 1)[1]  # not repeated on each row


def test_tune_resume_refuses_other_fixed_options(untrained_llava, small_world, tmp_path):
    """`--set` options are settings like any other: a resume with other ones is refused in one line, before any
    model work; a tuned.json from before `--set` fixed nothing, and resumes without it."""
    out = tmp_path / "r"
    out.mkdir()
    from dataclasses import asdict

    old = asdict(TuneConfig(model=str(untrained_llava), methods=["graddiff"], trials=3))
    del old["fixed"]  # a tuned.json from before --set: it fixed nothing
    (out / "tuned.json").write_text(json.dumps({"config": old, "methods": {}, "trials": [], "timing": {}}))
    base = ["tune", "--model", str(untrained_llava), "--data", str(small_world), "--out", str(out), "--methods",
            "graddiff", "--trials", "3", "--resume"]
    res = runner.invoke(app, base + ["--set", "alpha=2"])
    assert res.exit_code == 2 and "other settings (fixed)" in res.output
    res = runner.invoke(app, base)  # nothing fixed either time: passes the check, stops at the 6-person world
    assert res.exit_code == 2 and "too small for a tuning population" in res.output, res.output


def test_workers_tune_methods_in_processes_of_their_own(tuned_small, small_world, tmp_path):
    import os

    _, vanilla, _ = tuned_small
    result = run_tune(small_world, TuneConfig(model=str(vanilla), methods=["ga", "graddiff"], trials=1,
                                              eval_records=8, workers=2, budget=64),
                      tmp_path / "t", ["p000"], ["p001"], progress=lambda msg: None)
    pids = {t["method"]: t["pid"] for t in result["trials"]}
    assert set(pids) == {"ga", "graddiff"} and set(result["methods"]) == {"ga", "graddiff"}
    assert os.getpid() not in pids.values()  # both searches ran in worker processes
    assert result["timing"]["workers"] == 2 and result["timing"]["cpu_s"] > 0


def test_unlearn_config_reads_the_tuned_settings_and_flags_override(tuned_ga, tuned_small, small_world, tmp_path):
    out, result, _ = tuned_ga
    _, vanilla, _ = tuned_small
    chosen = result["methods"]["ga"]
    base = ["unlearn", "--method", "ga", "--model", str(vanilla), "--data", str(small_world), "--forget-split",
            "forget_15", "--no-eval", "--config", str(out / "tuned.json")]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "a" / "unlearn_log.json").read_text())["config"]
    assert cfg["lr"] == chosen["lr"] and cfg["steps"] == chosen["steps"]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "b"), "--steps", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "b" / "unlearn_log.json").read_text())["config"]["steps"] == 2
    res = runner.invoke(app, [*base[:-1], str(out / "tuned.json"), "--method", "npo", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "no settings for 'npo'" in res.output


def test_unlearn_config_yaml_and_typed_set(untrained_llava, small_world, tmp_path):
    vanilla = untrained_llava
    config = tmp_path / "npo.yaml"
    config.write_text("lr: 0.0002\nsteps: 2\nset:\n  beta: 0.3\n")
    base = ["unlearn", "--method", "npo", "--model", str(vanilla), "--data", str(small_world), "--forget-split",
            "forget_15", "--no-eval", "--config", str(config)]
    res = runner.invoke(app, base + ["--out", str(tmp_path / "a"), "--set", "retain_term=false"])
    assert res.exit_code == 0, res.output
    log = json.loads((tmp_path / "a" / "unlearn_log.json").read_text())
    assert log["config"]["lr"] == 0.0002 and log["config"]["steps"] == 2
    assert log["config"]["method_args"] == {"beta": 0.3, "retain_term": False}
    config.write_text("lr: 0.0002\nwarmup: 3\n")
    res = runner.invoke(app, base + ["--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "unknown key(s) warmup" in res.output and not (tmp_path / "b").exists()


def test_bench_tuned_rows_come_first_and_use_the_tuned_settings(tuned_small, small_world, tmp_path):
    from mmunlearn.bench import BenchConfig, run_bench

    bundle, vanilla, _ = tuned_small
    cfg = BenchConfig(model=str(vanilla), methods=["ga"], seeds=[0], steps=None, max_records=24,
                      tuned={"ga": {"lr": 3e-4, "steps": 3, "method_args": {}}})
    results = run_bench(bundle, cfg, tmp_path / "bench", progress=lambda msg: None)
    assert [r["method"] for r in results["rows"]] == ["vanilla", "ga (tuned)", "ga"]
    tuned_log = json.loads((tmp_path / "bench" / "ga@tuned" / "seed0" / "unlearn_log.json").read_text())
    assert tuned_log["config"]["lr"] == 3e-4 and tuned_log["steps_run"] == 3
    default_log = json.loads((tmp_path / "bench" / "ga" / "seed0" / "unlearn_log.json").read_text())
    assert default_log["steps_run"] == 60  # GA's default
    # each bench run records how to repeat it, and `rerun` repeats it without the bench
    run = tmp_path / "bench" / "ga@tuned" / "seed0"
    assert "no weights" in (run / "README.md").read_text()
    res = runner.invoke(app, ["rerun", str(run), "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "unlearn_log.json").read_text())
    assert again["config"]["lr"] == 3e-4 and again["steps_run"] == 3
    losses = lambda log: [{k: v for k, v in row.items() if k != "time_s"} for row in log["losses"]]  # noqa: E731
    assert losses(again) == losses(tuned_log)  # same seed, same people, same steps


def test_bench_refuses_to_report_on_the_tuning_seed(tuned_ga, tuned_small, small_world, tmp_path):
    out, _, _ = tuned_ga
    _, vanilla, _ = tuned_small
    res = runner.invoke(app, ["bench", "--model", str(vanilla), "--data", str(small_world), "--methods", "ga",
                              "--seeds", "0,100", "--tuned", str(out / "tuned.json"), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "tuning seed 100" in res.output


def test_tune_cli_refuses_bad_input_in_one_line(untrained_llava, small_world, tmp_path):
    vanilla = untrained_llava
    base = ["tune", "--model", str(vanilla), "--data", str(small_world), "--out", str(tmp_path / "t")]
    res = runner.invoke(app, base + ["--methods", "ga", "--tune-forget-ids", "p000"])
    assert res.exit_code == 2 and "go together" in res.output
    res = runner.invoke(app, base + ["--methods", "ga", "--rule", "min:forget/text/bogus"])
    assert res.exit_code == 2 and "unknown metric" in res.output
    res = runner.invoke(app, base + ["--methods", "ga", "--budget", "-8"])
    assert res.exit_code == 2 and "--budget" in res.output
    res = runner.invoke(app, base + ["--methods", "ga"])  # 6 people: no tuning population
    assert res.exit_code == 2 and "too small for a tuning population" in res.output
    # --set: an option a tuned method lacks (the method named), lr or steps (what a tune searches), a value the
    # method cannot run with
    for methods, item, said in (("npo,graddiff", "beta=0.2", "method 'graddiff' has no option(s) beta"),
                                ("graddiff", "lr=0.1", "lr is searched"), ("vkd", "forget_loss=bogus", "forget_loss")):
        res = runner.invoke(app, base + ["--methods", methods, "--set", item])
        assert res.exit_code == 2 and said in res.output, item
    assert not (tmp_path / "t").exists()  # nothing half-written


def test_tune_out_is_fresh_unless_resume_with_the_same_settings_or_overwrite(untrained_llava, small_world, tmp_path):
    """tune's --out follows every command's convention: a non-empty folder is refused; --resume continues only the
    tune made with the same settings (the worker count aside) and names what differs; --overwrite leaves the
    folder as it was when the data fails its checks. Each refusal comes before any model work."""
    out = tmp_path / "t"
    out.mkdir()
    old_cfg = {"model": str(untrained_llava), "methods": ["ga"], "trials": 3, "seed": 100, "eval_records": 64,
               "rule": None, "batch_size": 8, "workers": 1, "budget": 0}
    from mmunlearn.tune import DEFAULT_RULE

    old_cfg["rule"] = DEFAULT_RULE
    (out / "tuned.json").write_text(json.dumps({"config": old_cfg, "methods": {}, "trials": [], "timing": {}}))
    base = ["tune", "--model", str(untrained_llava), "--data", str(small_world), "--out", str(out), "--methods", "ga"]
    res = runner.invoke(app, base)
    assert res.exit_code == 2 and "is not empty" in res.output and "--resume" in res.output
    res = runner.invoke(app, base + ["--trials", "5", "--seed", "7", "--resume"])
    assert res.exit_code == 2 and "other settings (seed, trials)" in res.output
    res = runner.invoke(app, base + ["--resume", "--overwrite"])
    assert res.exit_code == 2 and "exclude each other" in res.output
    # the same settings (2 workers now) pass the resume check and stop at the 6-person world; so does --overwrite,
    # which has not emptied the folder
    for flag in (["--trials", "3", "--workers", "2", "--resume"], ["--overwrite"]):
        res = runner.invoke(app, base + flag)
        assert res.exit_code == 2 and "too small for a tuning population" in res.output, res.output
        assert json.loads((out / "tuned.json").read_text())["config"] == old_cfg


def test_tune_report_table_and_plot_from_a_hand_made_tuned_json(tmp_path):
    """`mmunlearn report tuned.json`: every trial a row (the chosen one bold, ✓ where it met the rule),
    the plot written, and the table pasted between `tune` markers."""
    numbers = lambda x, y: {"test/image+text/cls_acc": x, "test/text/cls_acc": 0.5,  # noqa: E731
                            "retain/image+text/cls_acc": y, "retain/text/cls_acc": 1.0,
                            "understanding_retain/image+text/cls_acc": 1.0, "forget/text/degenerate_rate": 0.0}
    trial = lambda n, x, y, ok, state="complete": {  # noqa: E731
        "method": "npo", "number": n, "lr": 1e-4, "steps": 20, "method_args": {"beta": 0.2}, "state": state,
        "objective": None if state == "pruned" else (x + 0.5) / 2, "feasible": ok, "margin": 0.0 if ok else 0.1,
        "numbers": None if state == "pruned" else numbers(x, y), "wall_time_s": 3.0}
    tuned = {"format": "mmunlearn-tuned/1", "config": {"trials": 3, "seed": 100, "eval_records": 96,
                                                      "methods": ["npo", "kl"]},
             "rule": "r", "rule_resolved": "r'", "tune_forget": ["a"], "tune_retain": ["b"],
             "vanilla": numbers(0.9, 1.0), "trials": [trial(0, 0.2, 0.5, False), trial(1, 0.4, 0.97, True),
                                                      trial(2, 0, 0, False, "pruned")],
             "methods": {"npo": {"trial": 1, "numbers": numbers(0.4, 0.97), "lr": 1e-4, "steps": 20,
                                 "method_args": {"beta": 0.2}}},
             "timing": {"total_s": 600, "cpu_s": 1140, "workers": 2}, "questions": {"test": 128, "retain": 128}}
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps(tuned))
    page = tmp_path / "tuning.md"
    page.write_text("x\n<!-- tune:start -->\nold\n<!-- tune:end -->\n")
    res = runner.invoke(app, ["report", str(path), "--readme", str(page), "--name", "tune",
                              "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "old" not in text and "Whole tune: 10 min wall on 2 worker processes, 19 min of CPU." in text
    assert "96 questions per split, modality and task the rule reads (test 128, retain 128)" in text
    assert "Tuned so far: 1 of 2 methods; not yet: kl." in text  # an interrupted tune says so
    assert "| **npo** | **1** | lr 0.0001, 20 steps, beta 0.2 | 0.40 | 0.50 | 0.97 |" in text
    assert "| ✓ (chosen) |" in text and "| pruned |" in text
    assert "| vanilla | | | 0.90 | 0.50 | 1.00 |" in text
    # a resumed tune: its wall time is the last run's only, and says so; the searches summed by hand
    tuned["methods"]["kl"] = {**tuned["methods"]["npo"]}
    tuned["timing"] = {"npo": 240.0, "kl": 180.0, "total_s": 300, "cpu_s": 540, "workers": 2, "resumed": ["npo"]}
    path.write_text(json.dumps(tuned))
    res = runner.invoke(app, ["report", str(path)])
    assert res.exit_code == 0, res.output
    assert ("Whole tune: resumed; its last run tuned 1 method(s) (kl) in 5 min wall on 2 worker processes, 9 min "
            "of CPU; npo came from earlier runs. Every method's search summed: 7 min, one worker process each."
            in res.output.replace("\n", " ")), res.output
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["report", str(path), "--out", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "--plot" in res.output


def test_trained_samples_sum_every_stage_and_the_budget_gives_the_steps_back():
    """By hand, at a global batch of 8: GA 60 steps = 480 samples; SMFA (one forgetting adapter, then the anchor
    as long) 2 × 60 × 8 = 960; smfa-paper (one adapter per modality, then the anchor) 3 × 60 × 8 = 1,440; SMFA
    with a 10-step anchor (60 + 10) × 8 = 560. A budget of 1,920 samples gives back 240, 120, 80 and 230 steps."""
    from mmunlearn.methods.base import get_method

    def make(name, **args):
        cls = get_method(name)
        return cls(cls.make_config(args))

    ga, smfa, paper, anchored = make("ga"), make("smfa"), make("smfa-paper"), make("smfa", anchor_steps=10)
    assert [m.trained_samples(60, 8) for m in (ga, smfa, paper, anchored)] == [480, 960, 1440, 560]
    assert [m.steps_within(1920, 8) for m in (ga, smfa, paper, anchored)] == [240, 120, 80, 230]
    assert ga.steps_within(7, 8) == 1  # never no steps at all


def test_every_method_searches_within_the_same_compute_budget(small_world):
    """One budget of 1,920 samples at batch 8: every method's steps top out where its stages fill it (GA 240,
    SMFA 120, smfa-paper 80, VKD 240 where its default is 480) and start at a quarter of that; no top trains more
    than the budget nor leaves a whole step of it unused."""
    from mmunlearn.data.store import load_data
    from mmunlearn.methods.base import get_method, registry
    from mmunlearn.tune import TuneConfig, TuneContext

    bundle = load_data(small_world, "forget_15")
    ctx = TuneContext("unused", TuneConfig(model="unused", methods=[], batch_size=8), None, None, None, bundle,
                      bundle, parameters=2_000_000, budget=1920)
    tops = {}
    for name in registry():
        kind, low, top, scale = ctx.space(name)["steps"]
        method = get_method(name)(get_method(name).make_config({}))
        assert kind == "int" and scale == "log" and low == min(top, max(4, top // 4)), name
        assert method.trained_samples(top, 8) <= 1920 < method.trained_samples(top + 1, 8), name
        tops[name] = top
    assert (tops["ga"], tops["smfa"], tops["smfa-paper"], tops["vkd"]) == (240, 120, 80, 240)
    assert get_method("vkd").default_steps == 480  # the budget, not its default, bounds it


def test_the_default_budget_is_the_mean_of_the_methods_default_schedules(small_world, monkeypatch):
    """Two methods registered: GA's 60 steps (480 samples at batch 8) and smfa-paper's 400 a stage over three
    stages (9,600): the default budget is their mean, 5,040 samples (630 batches)."""
    import mmunlearn.methods.base as base
    from mmunlearn.data.store import load_data
    from mmunlearn.methods.ga import GradientAscent
    from mmunlearn.methods.smfa import SMFAPaper
    from mmunlearn.tune import TuneConfig, TuneContext, default_budget

    bundle = load_data(small_world, "forget_15")
    monkeypatch.setattr(base, "registry", lambda: {"ga": GradientAscent, "smfa-paper": SMFAPaper})
    ctx = TuneContext("unused", TuneConfig(model="unused", methods=[], batch_size=8), None, None, None, bundle,
                      bundle, parameters=2_000_000)
    assert (GradientAscent.default_steps, SMFAPaper.default_steps) == (60, 400)
    assert default_budget(ctx) == 5040


def test_the_tuned_settings_are_checked_on_the_reported_people_by_hand(tmp_path):
    """`mmunlearn report tuned.json --bench B`: VKD chose 0.31 on the tuning people's unseen photos and 1.00 on
    their retain photos; the bench's VKD (tuned) row has 0.51 ± 0.06 and 0.85 ± 0.07: |0.31 − 0.51| = 0.20 and
    |1.00 − 0.85| = 0.15 exceed 2σ (0.12, 0.14) → ✗, and 0.85 misses the rule's 0.95 × vanilla 0.94 = 0.893.
    GA: 0.61 → 0.64 ± 0.01 (|0.03| ≤ 2 × the 0.02 floor) and 0.95 → 0.93 ± 0.01, meeting 0.893 → ✓, met.
    KL was tuned but has no bench row: not checked."""
    cell = lambda mean, std=0.0: {"mean": mean, "std": std, "n": 3}  # noqa: E731
    keys = ("test/image+text/cls_acc", "test/text/cls_acc", "retain/image+text/cls_acc", "retain/text/cls_acc")
    numbers = lambda *v: dict(zip(keys, v))  # noqa: E731
    tuned = {"format": "mmunlearn-tuned/1", "config": {"trials": 2, "seed": 100, "eval_records": 64},
             "rule": "min:test/image+text/cls_acc&test/text/cls_acc,retain/image+text/cls_acc>=0.95x,"
                     "retain/text/cls_acc>=0.95x", "rule_resolved": "r", "tune_forget": ["a"], "tune_retain": ["b"],
             "vanilla": numbers(0.8, 1.0, 1.0, 1.0), "trials": [],
             "methods": {m: {"trial": 0, "numbers": n, "lr": 1e-4, "steps": 20, "method_args": {}}
                         for m, n in (("vkd", numbers(0.31, 1.0, 1.0, 1.0)), ("ga", numbers(0.61, 1.0, 0.95, 1.0)),
                                      ("kl", numbers(0.5, 1.0, 1.0, 1.0)))}}
    bench = {"config": {"forget_split": "forget_10"}, "table_markdown": "|x|", "aggregated": [
        {"method": "vanilla", "test_it": cell(0.97), "test_txt": cell(1.0), "retain_it": cell(0.94),
         "retain_txt": cell(1.0)},
        {"method": "vkd (tuned)", "test_it": cell(0.51, 0.06), "test_txt": cell(1.0), "retain_it": cell(0.85, 0.07),
         "retain_txt": cell(1.0)},
        {"method": "ga (tuned)", "test_it": cell(0.64, 0.01), "test_txt": cell(1.0), "retain_it": cell(0.93, 0.01),
         "retain_txt": cell(1.0)},
        {"method": "ga", "test_it": cell(0.9)}]}
    (tmp_path / "tuned.json").write_text(json.dumps(tuned))
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.json").write_text(json.dumps(bench))
    page = tmp_path / "tuning.md"
    page.write_text("<!-- tune:start -->\n<!-- tune:end -->\n")
    res = runner.invoke(app, ["report", str(tmp_path / "tuned.json"), "--bench", str(tmp_path / "bench"),
                              "--readme", str(page), "--name", "tune"])
    assert res.exit_code == 0, res.output
    text = page.read_text()
    assert "| method | unseen photos | paraphrased text | retain img | retain txt | rule on reported people |" in text
    assert ("| vkd | 0.31 → 0.51 ± 0.06 ✗ | 1.00 → 1.00 ± 0.00 ✓ | 1.00 → 0.85 ± 0.07 ✗ | 1.00 → 1.00 ± 0.00 ✓ | "
            "missed: retain_it 0.85 < 0.89 |") in text
    assert "| ga | 0.61 → 0.64 ± 0.01 ✓ | 1.00 → 1.00 ± 0.00 ✓ | 0.95 → 0.93 ± 0.01 ✓ | 1.00 → 1.00 ± 0.00 ✓ | met |" in text
    assert "| kl |" not in text and "1 of 2 methods hold on every key" in text
    # --bench belongs to a tuned.json, and must be a bench
    res = runner.invoke(app, ["report", str(tmp_path / "bench"), "--bench", str(tmp_path / "bench")])
    assert res.exit_code == 2 and "--bench goes with a tuned.json" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "tuned.json"), "--bench", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_tune_report_shows_the_identity_numbers_a_rule_read():
    """A tune whose rule read `identity/…` keys: its table gains those columns, after the usual ones, from each
    trial's numbers; a rule without them keeps the table as it was."""
    from mmunlearn.report.tuning import tune_table

    rule = "min:test/image+text/cls_acc&identity/image+text/top5,identity/image+text/median_rank>=2"
    numbers = {"test/image+text/cls_acc": 0.5, "identity/image+text/top5": 0.25, "identity/image+text/median_rank": 12}
    trial = {"method": "ga", "number": 0, "lr": 1e-3, "steps": 4, "method_args": {}, "state": "complete",
             "objective": 0.375, "feasible": True, "margin": 0.0, "numbers": numbers, "wall_time_s": 2.0}
    tuned = {"config": {"trials": 1, "seed": 100, "eval_records": 16, "batch_size": 8, "methods": ["ga"]},
             "rule": rule, "rule_resolved": rule, "tune_forget": ["p000"], "tune_retain": ["p001"],
             "vanilla": {"test/image+text/cls_acc": 0.9, "identity/image+text/top5": 1.0,
                         "identity/image+text/median_rank": 1},
             "methods": {"ga": {"trial": 0}}, "trials": [trial], "timing": {}}
    table = tune_table(tuned)
    assert "| underst. retain | degenerate | name top-5 | name rank median | meets rule |" in table
    assert "| vanilla | | | 0.90 | — | — | — | — | — | 1.00 | 1.00 | | |" in table
    assert "| 0.50 | — | — | — | — | — | 0.25 | 12.00 | ✓ (chosen) |" in table
    assert "name top-5" not in tune_table({**tuned, "rule": "min:test/image+text/cls_acc"})
    # every other key a rule of one's own judged gets its column too, labelled from the key, in the rule's order
    rule = "min:test/image+text/cls_acc,real/image+text/cls_acc>=0.9x,understanding_unseen_forget/image+text/cls_acc>=0.5"
    table = tune_table({**tuned, "rule": rule, "vanilla": {"real/image+text/cls_acc": 0.8}})
    assert "| degenerate | real img | underst. forget (unseen) img | meets rule |" in table
    assert "| vanilla | | | — | — | — | — | — | — | 0.80 | — | | |" in table
    assert "| 0.50 | — | — | — | — | — | — | — | ✓ (chosen) |" in table
