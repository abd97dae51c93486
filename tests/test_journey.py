"""The user's journey, as a new user takes it: the quick demo in a real process on a fresh folder, and every
command line of README.md, docs/getting-started.md and docs/own-data.md executed as written.

A documented command is a test. The harness runs each `mmunlearn ...` line of those pages' bash blocks in one
shared folder (examples/ copied in), in page order, each distinct line once, through the real command line
parser (README.md copied in too, for the command that writes its table). It changes a line in two ways only,
both printed in a failure: size overrides appended (a 6-person world,
short schedules, one method; the last value of a repeated option wins), and the two placeholder paths of the
"your own model" example replaced by a tiny model and a local MLLMU-Bench-layout folder. `mmunlearn demo` is the
one line it leaves to `test_quick_demo_runs_end_to_end` (the same command with --quick, in a subprocess).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from fixtures_release import build_mllmu

ROOT = Path(__file__).resolve().parents[1]
PAGES = ("README.md", "docs/getting-started.md", "docs/own-data.md")
PLACEHOLDERS = {"/models/llava-1.5-7b-hf": "runs/vanilla", "/data/MLLMU-Bench": "mllmu"}
STAGES = ["--stage0-steps", "20", "--stage1-steps", "10", "--stage2-steps", "40", "--max-records", "16"]


def documented_commands(page: Path) -> list[str]:
    """Every `mmunlearn ...` command line of a page's ```bash blocks (continuation lines joined, comments cut)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("mmunlearn "):
                    commands.append(re.sub(r"\s+", " ", part))
    return commands


def test_documented_commands_are_found():
    """The parser sees the journey: the pages' commands, every subcommand the README teaches among them."""
    readme = documented_commands(ROOT / "README.md")
    assert readme[0] == "mmunlearn demo"
    verbs = {shlex.split(c)[1] for c in readme}
    assert {"world", "finetune", "retain-model", "unlearn", "eval", "attack", "tune", "bench", "report",
            "methods"} <= verbs, verbs
    own = documented_commands(ROOT / "docs/own-data.md")
    assert own[0] == "mmunlearn finetune --data examples/people.jsonl --forget-ids p1,p2 --out runs/mine"
    assert any("--forget-ids p1,p2" in c for c in own)


def _overrides(argv: list[str], cwd: Path) -> list[str]:
    """What the harness appends to a documented command: sizes only."""
    verb = argv[1] if argv[1] != "attack" else "attack " + argv[2]
    if verb == "world":
        return ["--profiles", "6", "--real", "4", "--holdout", "3"]
    if verb in ("finetune", "retain-model"):
        return STAGES
    if verb == "unlearn":
        return ["--steps", "3"]
    if verb == "eval":
        return ["--max-records", "16"]
    if verb == "attack relearn":
        return ["--steps", "2", "--ratios", "50"]
    if verb == "tune":
        manifest = json.loads((cwd / "runs/world/world.json").read_text())
        reported = {p for k, ids in manifest["ids"].items() if k.startswith("forget_") for p in ids}
        free = [p for p in manifest["ids"]["fictitious"] if p not in reported]
        return ["--methods", "ga", "--trials", "1", "--max-records", "8", "--workers", "1",
                "--tune-forget-ids", free[0], "--tune-retain-ids", free[1]]
    if verb == "bench":
        return ["--methods", "ga", "--seeds", "1", "--steps", "2", "--max-records", "8", "--workers", "1",
                "--relearn-ratios", "50", "--relearn-steps", "2"]
    return []


def _run(argv: list[str], cwd: Path):
    from mmunlearn.cli import app

    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, argv)
    finally:
        os.chdir(old)


def test_every_documented_command_runs(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")  # `report --readme README.md` writes into the copy
    build_mllmu(tmp_path / "mllmu")
    seen, failures, ran = set(), [], 0
    for page in PAGES:
        for line in documented_commands(ROOT / page):
            if line in seen or line == "mmunlearn demo":
                continue
            seen.add(line)
            for placeholder, local in PLACEHOLDERS.items():
                line = line.replace(placeholder, local)
            argv = shlex.split(line)
            full = argv[1:] + _overrides(argv, tmp_path)
            res = _run(full, tmp_path)
            ran += 1
            if res.exit_code != 0:
                failures.append(f"{page}: {line}\n  run as: mmunlearn {shlex.join(full)}\n  exit {res.exit_code}: "
                                f"{res.output[-1500:]}")
                if res.exception and not isinstance(res.exception, SystemExit):
                    failures[-1] += f"\n  {res.exception!r}"
    assert not failures, "\n\n".join(failures)
    assert ran >= 20  # README + getting started + own data, each distinct line once
    # what the journey left behind: the files the pages say each command writes
    for path in ("runs/world/world.json", "runs/vanilla/model.safetensors", "runs/vanilla/eval/summary.json",
                 "runs/retain/eval/summary.json", "runs/npo/run.json", "runs/npo/eval/summary.json",
                 "runs/npo-eval/summary.json", "runs/npo-relearn/summary.json", "runs/npo-probe/summary.json",
                 "runs/npo-rank/summary.json", "runs/tune/tuned.json", "runs/bench/results.json",
                 "runs/bench/report.html", "runs/mine/eval/summary.json", "runs/forgot/eval/summary.json",
                 "runs/npo-again/run.json", "runs/llava-eval/summary.json", "runs/llava-vkd/unlearn_log.json"):
        assert (tmp_path / path).is_file(), path


def test_quick_demo_runs_end_to_end(tmp_path):
    """`mmunlearn demo --quick` as a user types it, in a process of its own on a fresh folder: it ends with the
    report and a table of its stages; a second call reuses every stage (no run is trained again)."""
    out = tmp_path / "demo"
    # one torch thread, as the test workers run: the other worker keeps the second core busy (the demo's output
    # is the same at any thread count; its numbers are not asserted here)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    exe = [sys.executable, "-m", "mmunlearn", "demo", "--quick", "--out", str(out)]
    first = subprocess.run(exe, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "report.html").is_file() and str(out / "report.html") in first.stdout
    for stage in ("world", "vanilla model", "vanilla evaluation", "bench", "report", "total"):
        assert re.search(rf"^\s+{stage}\s+\d+\.\d s$", first.stdout, flags=re.M), (stage, first.stdout[-2000:])
    results = json.loads((out / "bench" / "results.json").read_text())
    assert [r["method"] for r in results["aggregated"]] == ["vanilla", "ga", "graddiff", "npo", "vkd"]
    # the fine-tune the user's command ran memorised the people, from the photo and from the name (the other
    # tests start from a shipped fixture, so this is where today's fine-tune code is held to it): measured 1.00
    # on each of these 9-15 questions, chance is 0.25
    vanilla = json.loads((out / "bench" / "vanilla" / "eval" / "summary.json").read_text())["metrics"]
    for split in ("forget", "retain"):
        for modality in ("image+text", "text"):
            assert vanilla[split][modality]["cls_acc"] >= 0.75, (split, modality, vanilla[split][modality])
    logs = {m: (out / "bench" / m / "seed0" / "unlearn_log.json") for m in ("ga", "graddiff", "npo", "vkd")}
    stamps = {m: p.stat().st_mtime_ns for m, p in logs.items()}
    assert all(json.loads(p.read_text())["steps_run"] == 20 for p in logs.values())
    again = subprocess.run(exe, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {m: p.stat().st_mtime_ns for m, p in logs.items()} == stamps  # reused, not trained again
    assert f"vanilla model: reused from the earlier demo in {out}" in again.stdout, again.stdout[-2000:]
    assert "fine-tuned" not in again.stdout and "fine-tuning" not in again.stderr


def test_demo_refuses_a_folder_holding_another_demo(tmp_path):
    from mmunlearn.cli import app

    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text(json.dumps({"quick": True, "world": {"profiles": 6}}))
    res = CliRunner().invoke(app, ["demo", "--out", str(out), "--methods", "ga"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [f"error: {out} holds a quick demo; use another --out or --overwrite"]
    assert sorted(p.name for p in out.iterdir()) == ["demo.json"]
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "d2"), "--methods", "nope"])
    assert res.exit_code == 2 and "unknown method(s) nope" in res.stderr
    assert not (tmp_path / "d2").exists()
