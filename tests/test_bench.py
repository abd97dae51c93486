import json

from typer.testing import CliRunner

from mmunlearn.bench import BenchConfig, run_bench
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
