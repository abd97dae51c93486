"""The HTML report (`mmunlearn report DIR --out page.html`), opened in headless Chromium.

Chromium (Debian's `chromium` package) is required, not optional: CI installs it in .ci/run, and a
missing browser fails these tests rather than skipping them.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmunlearn.bench import BenchConfig
from mmunlearn.cli import app
from mmunlearn.report.tables import COLUMNS, aggregate_rows, csv_text, markdown_table, numbers_from_summary

SPLITS = ("forget", "test", "retain", "real", "understanding_forget", "understanding_retain")
FORGET_PEOPLE = ["p0", "p1", "p2"]


@pytest.fixture
def runner():
    return CliRunner()


def _chromium() -> str:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        pytest.fail("chromium is not installed (Debian: apt-get install -y chromium); the HTML report test needs it")
    return exe


def _chromium_run(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=10000", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


class _Cells(HTMLParser):
    """<body> attributes and every <td>/<img> of a page: attrs and text."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict = {}
        self.cells: list[tuple[dict, str]] = []
        self.images: list[dict] = []
        self._td: dict | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.body = dict(attrs)
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag == "td":
            self._td, self._text = dict(attrs), []

    def handle_data(self, data):
        if self._td is not None:
            self._text.append(data)

    def handle_endtag(self, tag):
        if tag == "td" and self._td is not None:
            self.cells.append((self._td, "".join(self._text).strip()))
            self._td = None


def open_in_chromium(page: Path, tmp: Path) -> _Cells:
    """Load the page in headless Chromium: every image decoded (the page's own script says so), a screenshot."""
    dom = _chromium_run(page, tmp, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _Cells()
    parsed.feed(dom.stdout)
    assert parsed.images, "the page has no images"
    assert parsed.body.get("data-images-ok") == "yes", (parsed.body, dom.stderr[-2000:])
    assert parsed.body.get("data-images") == f"{len(parsed.images)}/{len(parsed.images)}"
    shot = tmp / "screenshot.png"
    res = _chromium_run(page, tmp, f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars")
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:  # not a blank page
        assert im.size == (1280, 2400) and len(im.convert("L").getcolors(1 << 16) or []) > 20
    return parsed


def _cell(parsed: _Cells, **attrs: str) -> str:
    found = [text for a, text in parsed.cells if all(a.get(f"data-{k}") == v for k, v in attrs.items())]
    assert len(found) == 1, (attrs, found)
    return found[0]


# ----------------------------------------------------------------------------- a bench written by hand

def _summary(rng: random.Random, level: float) -> dict:
    metrics = {}
    for split in SPLITS:
        mods = ("image+text",) if split in ("test",) or split.startswith("understanding") else ("image+text", "text")
        base = level if split in ("forget", "test", "understanding_forget") else 0.9
        metrics[split] = {mod: {"cls_acc": round(min(1.0, max(0.0, base + rng.uniform(-0.1, 0.1))), 4),
                                "rougeL_f1": round(rng.uniform(0.2, 0.8), 4), "refusal_rate": 0.0,
                                "degenerate_rate": 0.0, "n": 12} for mod in mods}
    return {"metrics": metrics, "config": {}, "timing": {}}


def _details(rng: random.Random, level: float) -> list[dict]:
    rows = []
    for pid in FORGET_PEOPLE + ["r0", "r1"]:
        split = "forget" if pid in FORGET_PEOPLE else "retain"
        for mod in ("image+text", "text"):
            for k in range(4):
                rows.append({"id": f"{pid}-{mod}-{k}", "profile_id": pid, "split": split, "modality": mod,
                             "task": "classification", "scores": {"cls_acc": float(rng.random() < level)}})
    return rows


def _write_eval(folder: Path, summary: dict, details: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "details.jsonl").write_text("".join(json.dumps(d) + "\n" for d in details))
    (folder / "summary.json").write_text(json.dumps(summary))


def _relearn(rng: random.Random, before: float, floor: bool) -> dict:
    after = {"10": round(min(1.0, before + rng.uniform(0.1, 0.3)), 3), "50": round(min(1.0, before + 0.4), 3)}
    out = {"attack": "relearn", "before": before, "after": after, "AG": sum(after.values()) / 2 - before, "floor": None}
    if floor:
        out["floor"] = {"before": 0.25, "after": {"10": 0.3, "50": 0.45}}
    return out


def make_bench(out: Path, methods=("ga", "npo"), seeds=(0, 1), trials: bool = True) -> dict:
    """A bench folder in `mmunlearn bench`'s layout, its numbers drawn at random (the table is built by
    the same functions the bench uses)."""
    rng = random.Random(7)
    _write_eval(out / "vanilla" / "eval", _summary(rng, 0.95), _details(rng, 0.95))
    (out / "vanilla" / "attacks.json").write_text(json.dumps({"relearn": _relearn(rng, 0.9, False)}))
    rows = [{"method": "vanilla", "seed": None,
             **numbers_from_summary(json.loads((out / "vanilla" / "eval" / "summary.json").read_text()))}]
    for i, method in enumerate(methods):
        for seed in seeds:
            run = out / method / f"seed{seed}"
            level = 0.2 + 0.3 * i
            _write_eval(run / "eval", _summary(rng, level), _details(rng, level))
            losses = [{"step": s, "loss": 2.0 - 0.1 * s + rng.uniform(0, 0.1), "nll_forget": -0.1 * s,
                       "lr": 1e-4, "time_s": s * 0.1} for s in range(10)]
            (run / "unlearn_log.json").write_text(json.dumps({"method": method, "losses": losses,
                                                              "wall_time_s": 3.5 + seed, "trainable_params": 1000}))
            (run / "attacks.json").write_text(json.dumps({"relearn": _relearn(rng, level, floor=True)}))
            rows.append({"method": method, "seed": seed,
                         **numbers_from_summary(json.loads((run / "eval" / "summary.json").read_text())),
                         "wall_time_s": 3.5 + seed, "trainable_params": 1000})
    if trials:
        (out / "tune" / "ga").mkdir(parents=True)
        (out / "tune" / "ga" / "trials.jsonl").write_text("".join(
            json.dumps({"method": "ga", "params": {"lr": lr}, "forget_it": rng.random(), "retain_it": rng.random(),
                        "forget_txt": rng.random(), "retain_txt": rng.random()}) + "\n" for lr in (1e-5, 1e-4, 1e-3)))
    aggregated = aggregate_rows(rows)
    results = {"config": {**BenchConfig(model="runs/vanilla", methods=list(methods), seeds=list(seeds)).__dict__,
                          "data": str(out / "no-world"), "forget_split": "forget_10"},
               "rows": rows, "aggregated": aggregated, "table_markdown": markdown_table(aggregated),
               "timing": {"total_s": 12.0}}
    (out / "results.csv").write_text(csv_text(aggregated))
    (out / "results.json").write_text(json.dumps(results))
    return results


def test_bench_page_in_chromium(tmp_path, runner):
    bench = tmp_path / "bench"
    make_bench(bench)
    page = tmp_path / "report.html"
    res = runner.invoke(app, ["report", str(bench), "--out", str(page)])
    assert res.exit_code == 0, res.output
    assert str(page) in res.output
    html = page.read_text()
    assert "<img" in html and 'src="data:image/png;base64,' in html and "http" not in html.split("<body")[1]
    parsed = open_in_chromium(page, tmp_path)
    # trade-off, 2 per-split bars, relearning curves, loss curves
    assert len(parsed.images) == 5

    # the table holds the numbers of the result files, read here from every run's summary.json
    fmt = {c: f for c, _, f in COLUMNS}
    for method in ("vanilla", "ga", "npo"):
        runs = [bench / "vanilla"] if method == "vanilla" else [bench / method / f"seed{s}" for s in (0, 1)]
        for col, (split, mod) in {"forget_it": ("forget", "image+text"), "forget_txt": ("forget", "text"),
                                  "retain_it": ("retain", "image+text"), "test_it": ("test", "image+text")}.items():
            vals = [json.loads((r / "eval" / "summary.json").read_text())["metrics"][split][mod]["cls_acc"]
                    for r in runs]
            mean = sum(vals) / len(vals)
            text = _cell(parsed, method=method, col=col)
            assert text.split(" ± ")[0] == fmt[col].format(mean), (method, col, text, vals)
            if len(vals) > 1:
                std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
                assert text.split(" ± ")[1] == fmt[col].format(std)
        times = [json.loads((r / "unlearn_log.json").read_text())["wall_time_s"] for r in runs] if method != "vanilla" \
            else None
        if times:
            assert _cell(parsed, method=method, col="wall_time_s").startswith(f"{sum(times) / len(times):.1f}")

    # per person: the forget people's accuracy from details.jsonl, leaks marked
    for method, runs in (("ga", [bench / "ga" / f"seed{s}" for s in (0, 1)]), ("vanilla", [bench / "vanilla"])):
        rows = [json.loads(line) for r in runs for line in (r / "eval" / "details.jsonl").read_text().splitlines()]
        for pid in FORGET_PEOPLE:
            vals = [d["scores"]["cls_acc"] for d in rows
                    if d["profile_id"] == pid and d["split"] == "forget" and d["modality"] == "image+text"]
            cells = [(a, t) for a, t in parsed.cells if a.get("data-model") == method
                     and a.get("data-modality") == "image+text"]
            assert f"{sum(vals) / len(vals):.2f}" in [t for _, t in cells]
    assert not any("r0" in t for _, t in parsed.cells), "retain people are not in the per-person table"
    assert "still leak" in html and "tuning trials" in html
    # the markdown table is still printed by the plain command, and --readme still writes it
    res = runner.invoke(app, ["report", str(bench / "results.json")])
    assert res.exit_code == 0 and res.output.strip() == json.loads((bench / "results.json").read_text())[
        "table_markdown"].strip()
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:start -->\n<!-- bench:end -->\n")
    res = runner.invoke(app, ["report", str(bench), "--readme", str(readme)])
    assert res.exit_code == 0, res.output
    assert "| ga |" in readme.read_text()


def test_report_bad_input_is_one_error_line(tmp_path, runner):
    res = runner.invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and res.output.strip().startswith("error:") and len(res.output.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and "neither a bench folder" in res.output
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    res = runner.invoke(app, ["report", str(tmp_path / "broken"), "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and res.output.startswith("error:") and "not valid JSON" in res.output
    assert not (tmp_path / "r.html").exists()


# ----------------------------------------------------------------------------- a real run folder

def test_run_folder_page_from_a_real_unlearn_run(tuned_small, small_world, tmp_path, runner):
    """`unlearn` (a couple of steps) and `eval` (two splits, subsampled) write the files; the page reads those."""
    bundle, vanilla, _ = tuned_small
    run = tmp_path / "graddiff"
    res = runner.invoke(app, ["unlearn", "--method", "graddiff", "--model", str(vanilla), "--data", str(small_world),
                              "--forget-split", "forget_15", "--steps", "2", "--batch-size", "4", "--out", str(run),
                              "--no-eval"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", "--model", str(run), "--data", str(small_world), "--forget-split", "forget_15",
                              "--out", str(run / "eval"), "--splits", "forget,retain", "--max-records", "24"])
    assert res.exit_code == 0, res.output
    page = tmp_path / "run.html"
    res = runner.invoke(app, ["report", str(run), "--out", str(page)])
    assert res.exit_code == 0, res.output
    assert "| graddiff |" in res.output  # the run's row as a Markdown table
    parsed = open_in_chromium(page, tmp_path)
    assert len(parsed.images) == 2  # per-split bars, loss curves
    summary = json.loads((run / "eval" / "summary.json").read_text())
    checked = 0
    for split, mods in summary["metrics"].items():
        for mod, vals in mods.items():
            for metric in ("cls_acc", "rougeL_f1"):
                if isinstance(vals.get(metric), (int, float)):
                    text = _cell(parsed, split=split, modality=mod, metric=metric)
                    assert text == f"{vals[metric]:.2f}", (split, mod, metric, text)
                    checked += 1
    assert checked >= 4
    for col, (split, mod) in {"forget_it": ("forget", "image+text"), "forget_txt": ("forget", "text"),
                              "retain_it": ("retain", "image+text"), "retain_txt": ("retain", "text")}.items():
        value = summary["metrics"][split][mod].get("cls_acc")
        if value is not None:
            assert _cell(parsed, method="graddiff", col=col) == f"{value:.2f}"
    log = json.loads((run / "unlearn_log.json").read_text())
    assert log["losses"] and "Loss curves" in page.read_text()
    assert _cell(parsed, method="graddiff", col="wall_time_s") == f"{log['wall_time_s']:.1f}"
    people = set(re.findall(r'data-person="([^"]+)"', page.read_text()))
    rows = [json.loads(line) for line in (run / "eval" / "details.jsonl").read_text().splitlines()]
    forget_with_cls = {d["profile_id"] for d in rows if d["split"] == "forget" and "cls_acc" in d["scores"]}
    assert people == forget_with_cls and people <= set(bundle.forget_ids) and people
    names = {p["profile_id"]: p["name"] for p in json.loads((small_world / "profiles.json").read_text())}
    texts = {text for _, text in parsed.cells}
    assert all(f"{pid} ({names[pid]})" in texts for pid in people)  # names from the world's profiles.json
