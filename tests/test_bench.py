import json

from typer.testing import CliRunner

from mmunlearn.bench import BenchConfig, bench_jobs, run_bench
from mmunlearn.cli import app
from mmunlearn.report.tables import aggregate_rows, markdown_table, replace_between_markers


def test_aggregate_mean_and_std():
    rows = [{"method": "ga", "seed": 0, "forget_it": 0.2}, {"method": "ga", "seed": 1, "forget_it": 0.4},
            {"method": "npo", "seed": 0, "forget_it": 0.1}]
    agg = aggregate_rows(rows)
    assert [a["method"] for a in agg] == ["ga", "npo"]
    assert abs(agg[0]["forget_it"]["mean"] - 0.3) < 1e-9 and abs(agg[0]["forget_it"]["std"] - 0.1414) < 1e-3
    table = markdown_table(agg)
    assert "0.30 ± 0.14" in table and "| npo |" in table


def test_readme_markers_are_replaced_and_required():
    text = "a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nb"
    assert replace_between_markers(text, "bench", "new") == "a\n<!-- bench:start -->\nnew\n<!-- bench:end -->\nb"
    try:
        replace_between_markers("no markers", "bench", "x")
    except ValueError as exc:
        assert "markers" in str(exc)
    else:
        raise AssertionError("missing markers must be an error")


def test_bench_runs_methods_and_seeds_and_writes_results(tuned_small, small_world, tmp_path):
    bundle, vanilla, _ = tuned_small
    out = tmp_path / "bench"
    cfg = BenchConfig(model=str(vanilla), methods=["ga", "npo"], seeds=[0, 1], steps=30, max_records=120,
                      attacks=True, relearn_ratios=(50.0,), relearn_steps=5)
    results = run_bench(bundle, cfg, out, progress=lambda msg: None)
    assert [r["method"] for r in results["rows"]] == ["vanilla", "ga", "ga", "npo", "npo"]
    assert (out / "results.csv").read_text().startswith("method,n_seeds")
    saved = json.loads((out / "results.json").read_text())
    agg = {a["method"]: a for a in saved["aggregated"]}
    assert agg["ga"]["forget_it"]["n"] == 2
    assert agg["vanilla"]["forget_txt"]["mean"] > agg["ga"]["forget_txt"]["mean"]
    assert {"AG", "leak_text", "mia_auc"} <= set(agg["ga"])
    # the vanilla model never forgot: its text probe leaks; GA's does not
    assert agg["vanilla"]["leak_text"]["mean"] > agg["ga"]["leak_text"]["mean"] + 0.3
    # finished runs are reused
    again = run_bench(bundle, cfg, out, progress=lambda msg: None)
    assert again["rows"] == results["rows"]

    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:start -->\n<!-- bench:end -->\n")
    res = CliRunner().invoke(app, ["report", str(out / "results.json"), "--readme", str(readme)])
    assert res.exit_code == 0, res.output
    assert "| ga |" in readme.read_text()


def test_bench_relearn_runs_the_floor_once_and_reports_the_gap_over_it(tuned_small, tmp_path):
    """--floor-model: the floor's relearning runs once per bench folder; each row's "relearn over floor" is
    the mean over ratios of its probe accuracy after relearning minus the floor's. With the vanilla model as
    its own floor the same seeded relearning gives a gap of exactly 0."""
    bundle, vanilla, _ = tuned_small
    out = tmp_path / "bench"
    cfg = BenchConfig(model=str(vanilla), methods=["ga"], seeds=[0], steps=20, max_records=60, attacks=True,
                      relearn_ratios=(25.0, 50.0), relearn_steps=3, floor_model=str(vanilla), keep_models=True)
    results = run_bench(bundle, cfg, out, progress=lambda msg: None)
    floor = json.loads((out / "floor" / "relearn.json").read_text())
    assert floor["model"] == str(vanilla) and floor["split"]["mode"] == "facts"
    assert sorted(floor["after"]) == ["25", "50"]
    rows = {r["method"]: r for r in results["rows"]}
    assert rows["vanilla"]["relearn_over_floor"] == 0.0
    ga = json.loads((out / "ga" / "seed0" / "attacks.json").read_text())["relearn"]
    expected = ((ga["after"]["25"] - floor["after"]["25"]) + (ga["after"]["50"] - floor["after"]["50"])) / 2
    assert rows["ga"]["relearn_over_floor"] == expected
    assert rows["ga"]["AG"] == ga["AG"] and rows["ga"]["AG_gen"] == ga["AG_cls_acc"] is not None
    # other relearn settings: the stored attack is rerun (its model was kept), the floor too
    cfg.relearn_ratios = (50.0,)
    again = run_bench(bundle, cfg, out, progress=lambda msg: None)
    assert json.loads((out / "ga" / "seed0" / "attacks.json").read_text())["relearn"]["config"]["ratios"] == [50.0]
    assert sorted(json.loads((out / "floor" / "relearn.json").read_text())["after"]) == ["50"]
    assert {r["method"]: r for r in again["rows"]}["vanilla"]["relearn_over_floor"] == 0.0


def test_bench_workers_run_each_method_and_seed_in_a_process_of_their_own(tuned_small, tmp_path):
    import os

    bundle, vanilla, _ = tuned_small
    cfg = BenchConfig(model=str(vanilla), methods=["ga"], seeds=[0, 1], steps=4, max_records=24, workers=2)
    results = run_bench(bundle, cfg, tmp_path / "bench", progress=lambda msg: None)
    assert [(r["method"], r["seed"]) for r in results["rows"]] == [("vanilla", None), ("ga", 0), ("ga", 1)]
    pids = {r["worker_pid"] for r in results["rows"][1:]}
    assert pids and os.getpid() not in pids  # the runs ran in worker processes, not in this one
    for seed in (0, 1):
        log = json.loads((tmp_path / "bench" / "ga" / f"seed{seed}" / "unlearn_log.json").read_text())
        assert log["config"]["seed"] == seed and log["config"]["steps"] == 4


def test_bench_jobs_put_the_tuned_block_first_and_give_the_defaults_their_own_seeds(tmp_path):
    """--default-seeds: the tuned rows run on every seed, the defaults' block on the seeds given (the budget's
    choice); without it, both blocks run on --seeds."""
    tuned = {"ga": {"lr": 1e-4, "steps": 15, "method_args": {}}}
    cfg = BenchConfig(model="m", methods=["ga", "npo"], seeds=[0, 1, 2], tuned=tuned, default_seeds=[0])
    jobs = [(label, folder.name, seed) for _, label, folder, _, seed in bench_jobs(cfg, tmp_path)]
    assert jobs == [("ga (tuned)", "ga@tuned", 0), ("ga (tuned)", "ga@tuned", 1), ("ga (tuned)", "ga@tuned", 2),
                    ("ga", "ga", 0), ("npo", "npo", 0)]
    cfg.default_seeds = None
    assert len(bench_jobs(cfg, tmp_path)) == 3 + 2 * 3


def test_bench_cli_refuses_default_seeds_without_a_tune(tmp_path, small_world):
    res = CliRunner().invoke(app, ["bench", "--model", "tiny-llava", "--data", str(small_world), "--out",
                                   str(tmp_path / "b"), "--default-seeds", "0"])
    assert res.exit_code == 2
    assert "error: --default-seeds needs --tuned" in res.output
    assert not (tmp_path / "b").exists()


def test_report_tuned_only_writes_vanilla_and_the_tuned_rows(tmp_path):
    def cell(mean):
        return {"mean": mean, "std": 0.0, "n": 1}

    aggregated = [{"method": m, "n_seeds": 1, "forget_it": cell(v)}
                  for m, v in (("vanilla", 0.97), ("ga (tuned)", 0.78), ("ga", 0.0))]
    results = {"config": {"data": "w", "forget_split": "forget_10", "seeds": [0], "tuned_from": "t/tuned.json"},
               "aggregated": aggregated, "table_markdown": markdown_table(aggregated), "rows": []}
    (tmp_path / "results.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:start -->\n<!-- bench:end -->\n")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "results.json"), "--readme", str(readme), "--tuned-only"])
    assert res.exit_code == 0, res.output
    text = readme.read_text()
    assert "| ga (tuned) | 0.78 |" in text and "| vanilla | 0.97 |" in text
    assert "| ga |" not in text and "defaults' rows and the other columns are left out" in text


def test_bench_row_reads_the_attacks_of_a_finished_run_with_the_strangers_median(tmp_path):
    """A finished run's attacks.json is read, not redone: the identity columns come from the rank attack's
    forget group and its strangers' baseline, relearning over the floor is the mean gap per ratio."""
    from mmunlearn.bench import _attack_numbers

    cfg = BenchConfig(model="m", methods=[], attacks=True)
    relearn = {"AG": 0.25, "AG_cls_acc": 0.5, "after": {"5": 0.6, "50": 0.9},
               "config": {"ratios": sorted(float(r) for r in cfg.relearn_ratios), "steps": cfg.relearn_steps,
                          "split": cfg.relearn_split, "generate": True}}
    rank = {"groups": {"forget": {"top5": 0.3, "median_rank": 13}},
            "forget_names_on_strangers": {"median_rank": 71, "top5": 0.02}}
    (tmp_path / "attacks.json").write_text(json.dumps({
        "probe": {"probes": {"text_only": {"leak": 0.4}}, "mia": {"forget_vs_holdout": {"loss_auc": 0.7}}},
        "rank": rank, "relearn": relearn}))
    # no model in the folder: anything missing would have to be computed, and cannot be
    numbers = _attack_numbers(tmp_path, None, cfg, tmp_path, floor_after={"5": 0.5, "50": 0.5})
    assert numbers["rank_top5"] == 0.3 and numbers["rank_median"] == 13
    assert numbers["rank_strangers_median"] == 71
    assert abs(numbers["relearn_over_floor"] - 0.25) < 1e-12  # ((0.6 - 0.5) + (0.9 - 0.5)) / 2
    assert numbers["AG"] == 0.25 and numbers["leak_text"] == 0.4 and numbers["mia_auc"] == 0.7


def test_tuned_only_table_leads_with_the_identity_columns():
    """The README's table: unseen photos, name rank beside the strangers' rank and relearning over the floor
    first, then what the person bar keeps; time and parameter counts stay on the benchmarks page."""
    from mmunlearn.report.tables import tuned_rows

    def cell(mean):
        return {"mean": mean, "std": 0.0, "n": 1}

    row = {"test_it": cell(0.5), "rank_top5": cell(0.3), "rank_median": cell(13), "rank_strangers_median": cell(71),
           "relearn_over_floor": cell(0.1), "forget_it": cell(0.2), "wall_time_s": cell(9.0)}
    aggregated = [{"method": "vanilla", **row}, {"method": "vkd (tuned)", **row}, {"method": "vkd", **row}]
    table = tuned_rows({"aggregated": aggregated})["table_markdown"]
    header = table.splitlines()[0]
    assert header == ("| method | test cls (img) | name rank top-5 | name rank median | name rank median (strangers) "
                      "| relearn over floor | forget cls (img) |")
    assert "| vkd (tuned) | 0.50 | 0.30 | 13 | 71 | +0.10 | 0.20 |" in table
    assert "| vkd |" not in table and "time (s)" not in table


def test_person_bar_names_each_miss_once_against_hand_set_bounds():
    """Issue #17's bar on hand-made rows: vanilla retain 0.80 → needs ≥ 0.76; real 0.80 → ≥ 0.72; understanding
    0.90 → ≥ 0.855; text 1.00 → ≥ 0.95."""
    from mmunlearn.report.tables import person_bar_misses

    vanilla = {"forget_it": 1.0, "test_it": 0.9, "forget_txt": 1.0, "test_txt": 1.0, "retain_it": 0.8,
               "real_it": 0.8, "und_forget": 0.9, "und_forget_unseen": 0.9, "degenerate": 0.0}
    meets = {"forget_it": 0.35, "test_it": 0.2, "forget_txt": 0.95, "test_txt": 1.0, "retain_it": 0.76,
             "real_it": 0.72, "und_forget": 0.86, "und_forget_unseen": 0.9, "degenerate": 0.1, "rank_top5": 0.1,
             "rank_median": 40, "rank_strangers_p10": 11}
    assert person_bar_misses(meets, vanilla) == []
    # aggregated cells read by their mean; each bound crossed by a hair, understanding twice but named once
    cells = {k: {"mean": v, "std": 0.0, "n": 3} for k, v in meets.items()}
    cells |= {"retain_it": {"mean": 0.75}, "und_forget": {"mean": 0.85}, "und_forget_unseen": {"mean": 0.85},
              "rank_top5": {"mean": 0.11}}
    assert person_bar_misses(cells, vanilla) == ["retain photos", "understanding", "name"]
    # a median rank below the strangers' 10th percentile misses the name even at top-5 0.10; no rank: not measured
    assert person_bar_misses({**meets, "rank_median": 10}, vanilla) == ["name"]
    no_rank = {k: v for k, v in meets.items() if not k.startswith("rank")}
    assert person_bar_misses({**no_rank, "forget_it": 0.36}, vanilla) == ["trained photos", "name (not measured)"]


def test_seed_sweep_table_rounds_shares_down_and_names_the_misses(tmp_path):
    """benchmarks/seed_sweep.py on hand-made summaries (no model): retain 0.92 against vanilla's 0.97 is 94.8 %,
    shown as 94 % and missed; the rank columns come from each run's rank/summary.json."""
    import base64
    import importlib.util
    import sys
    from pathlib import Path

    from mmunlearn.report.plots import identity_frontier

    bench_dir = Path(__file__).resolve().parent.parent / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location("seed_sweep", bench_dir / "seed_sweep.py")
        sweep = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sweep)
    finally:
        sys.path.remove(str(bench_dir))

    def summary(**cls):
        names = {"forget_it": ("forget", "image+text"), "forget_txt": ("forget", "text"),
                 "test_it": ("test", "image+text"), "test_txt": ("test", "text"),
                 "retain_it": ("retain", "image+text"), "real_it": ("real", "image+text"),
                 "und_forget": ("understanding_forget", "image+text"),
                 "und_forget_unseen": ("understanding_unseen_forget", "image+text")}
        metrics = {}
        for key, value in cls.items():
            split, mod = names[key]
            metrics.setdefault(split, {})[mod] = {"cls_acc": value, "degenerate_rate": 0.0}
        return {"metrics": metrics}

    base = dict(forget_it=1.0, forget_txt=1.0, test_it=0.9, test_txt=1.0, retain_it=0.97, real_it=0.9,
                und_forget=0.8, und_forget_unseen=0.8)
    run = tmp_path / "seed0"
    (run / "rank").mkdir(parents=True)
    (run / "rank" / "summary.json").write_text(json.dumps({
        "groups": {"forget": {"top5": 0.0, "median_rank": 80}},
        "forget_names_on_strangers": {"median_rank": 70, "rank_p10": 12}}))
    results = {"setting": [{"summary": summary(**{**base, "forget_it": 0.2, "test_it": 0.1, "retain_it": 0.92}),
                            "log": {"wall_time_s": 10.0}, "rank": sweep.rank_of(run)}]}
    rows = sweep.aggregated(results, summary(**base))
    line = next(line for line in sweep.table(rows).splitlines() if line.startswith("| setting"))
    assert "0.92 (94 %)" in line and line.endswith("| retain photos |")
    assert "| 80 | 70 |" in line  # median rank beside the strangers'
    assert base64.b64decode(identity_frontier(rows, numbered=True))[:4] == b"\x89PNG"
