"""benchmarks/memorisation.py writes the docs' memorisation block from run files (numbers by hand here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def memo():
    spec = importlib.util.spec_from_file_location("memorisation_bench", ROOT / "benchmarks" / "memorisation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, wall: float, cpu: float, threads: int, forget_img: float, test_img: float) -> Path:
    (folder / "eval").mkdir(parents=True)
    log = {"vision_warmup": {"steps": 900}, "stage1_steps": 400, "stage2_steps": 5000, "wall_time_s": wall,
           "cpu_time_s": cpu, "threads": threads}
    cells = {("forget", "image+text"): forget_img, ("forget", "text"): 1.0, ("retain", "image+text"): 0.98,
             ("retain", "text"): 1.0, ("real", "image+text"): 0.93, ("real", "text"): 1.0,
             ("test", "image+text"): test_img, ("understanding", "image+text"): 0.97}
    metrics: dict = {}
    for (split, mod), acc in cells.items():
        metrics.setdefault(split, {})[mod] = {"cls_acc": acc, "cls_acc_loglik": 0.5, "truth_ratio": 0.8}
    (folder / "train_log.json").write_text(json.dumps(log))
    (folder / "eval" / "summary.json").write_text(json.dumps({"metrics": metrics,
                                                              "config": {"truth_ratio_mean": "geometric"}}))
    return folder


def test_block_rows_targets_and_markers(memo, tmp_path):
    # 600 s wall, 900 s CPU on 2 threads → share 900 / 1200 = 0.75; 10.0 min meets "≤ 10 min"
    a = _run(tmp_path / "a", wall=600.0, cpu=900.0, threads=2, forget_img=0.99, test_img=0.90)
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- memorisation:start -->\nold\n<!-- memorisation:end -->\nafter\n")
    assert memo.main(["--run", f"default world={a}", "--readme", str(page)]) == 0
    text = page.read_text()
    assert "\nold\n" not in text and text.startswith("before\n") and text.endswith("after\n")
    row = next(line for line in text.splitlines() if line.startswith("| default world |"))
    assert "| 900 + 400 + 5,000 steps | 600 s | 0.75 of 2 threads | 0.99 (0.50) | 1.00 (0.50) | 0.98 (0.50) |" in row
    assert "0.90 (0.50) | 0.97 (0.50) |" in row
    assert "transformed photos ≥ 0.80: met (0.90)" in text
    assert "forget/retain ≥ 0.95 in both modalities: met (lowest 0.98)" in text
    assert "fine-tune ≤ 10 min: met (10.0 min, CPU share 0.75 of 2 threads)" in text
    assert "geometric mean" in text and "| forget | image+text | 0.990 |" in text


def test_a_missed_target_is_said(memo, tmp_path, capsys):
    b = _run(tmp_path / "b", wall=660.0, cpu=660.0, threads=1, forget_img=0.90, test_img=0.70)
    assert memo.main(["--run", f"w={b}"]) == 0
    out = capsys.readouterr().out
    assert "forget/retain ≥ 0.95 in both modalities: NOT met (lowest 0.90)" in out
    assert "transformed photos ≥ 0.80: NOT met (0.70)" in out
    assert "fine-tune ≤ 10 min: NOT met (11.0 min, CPU share 1.00 of 1 thread)" in out


def test_missing_files_and_markers_are_one_error(memo, tmp_path, capsys):
    with pytest.raises(SystemExit, match="error: .*train_log.json is missing"):
        memo.main(["--run", f"x={tmp_path / 'nothing'}"])
    a = _run(tmp_path / "a", wall=1.0, cpu=1.0, threads=1, forget_img=1.0, test_img=1.0)
    page = tmp_path / "nomarkers.md"
    page.write_text("no markers\n")
    assert memo.main(["--run", f"x={a}", "--readme", str(page)]) == 2
    assert "markers" in capsys.readouterr().err and page.read_text() == "no markers\n"
    assert memo.main(["--run", "no-equals-sign"]) == 2
