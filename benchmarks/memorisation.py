"""The memorisation block of docs/concepts/tiny-models.md, from fine-tune run folders.

Each `--run LABEL=DIR` is a `mmunlearn finetune` folder (its `train_log.json`, `run.json` and
`eval/summary.json`); its world's counts are read from the `--data` folder recorded in `run.json`. The
block holds one row per run (steps, wall time, how much of the machine the run had, accuracies), the
targets of issue #2 checked against the last run, and that run's full evaluation summary.

    mmunlearn world --out runs/world
    mmunlearn finetune --data runs/world --model tiny-llava --out runs/vanilla
    mmunlearn world --out runs/world-small --profiles 6 --real 4 --holdout 3 --seed 0
    mmunlearn finetune --data runs/world-small --model tiny-llava --out runs/vanilla-small \\
        --stage1-steps 200 --stage2-steps 1600 --batch-size 16 --lr 2e-3
    python benchmarks/memorisation.py --run "6 people + 4 real (the test world)=runs/vanilla-small" \\
        --run "default: 100 + 30 real=runs/vanilla" --readme docs/concepts/tiny-models.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# issue #2: what a tiny model must reach on the default world
TARGETS = {"forget/retain, both modalities": 0.95, "transformed photos": 0.80, "understanding": 0.90}
TARGET_MINUTES = 10.0
COLUMNS = (("forget", "image+text", "forget img"), ("forget", "text", "forget txt"),
           ("retain", "image+text", "retain img"), ("retain", "text", "retain txt"),
           ("real", "image+text", "real img"), ("real", "text", "real txt"),
           ("test", "image+text", "test img (transformed)"), ("understanding", "image+text", "understanding"))


def read_run(folder: Path) -> dict:
    """train_log.json + eval/summary.json of a fine-tune folder; one clear error when one is missing."""
    out = {}
    for key, name in (("log", "train_log.json"), ("summary", "eval/summary.json")):
        path = folder / name
        if not path.is_file():
            raise SystemExit(f"error: {path} is missing: run `mmunlearn finetune … --out {folder}` (with its evaluation)")
        out[key] = json.loads(path.read_text())
    run = folder / "run.json"
    out["run"] = json.loads(run.read_text()) if run.is_file() else {}
    return out


def cell(summary: dict, split: str, modality: str) -> str:
    vals = summary["metrics"].get(split, {}).get(modality, {})
    if "cls_acc" not in vals:
        return "—"
    return f"{vals['cls_acc']:.2f} ({vals.get('cls_acc_loglik', float('nan')):.2f})"


def steps_text(log: dict) -> str:
    warm = (log.get("vision_warmup") or {}).get("steps", 0)
    parts = [warm, log["stage1_steps"], log["stage2_steps"]]
    return " + ".join(f"{p:,}" for p in parts if p) + " steps"


def share_text(log: dict) -> str:
    """CPU time over wall time × threads: 1.00 when the run had its cores to itself."""
    if "cpu_time_s" not in log or not log.get("wall_time_s"):
        return "—"
    threads = max(1, log.get("threads", 1))
    share = log["cpu_time_s"] / (log["wall_time_s"] * threads)
    return f"{share:.2f} of {threads} thread{'s' if threads > 1 else ''}"


def targets_text(summary: dict, log: dict) -> str:
    m = summary["metrics"]

    def acc(split: str, modality: str) -> float:
        return m.get(split, {}).get(modality, {}).get("cls_acc", float("nan"))

    fr = [acc(s, mod) for s in ("forget", "retain") for mod in ("image+text", "text")]
    checks = [
        (f"forget/retain ≥ {TARGETS['forget/retain, both modalities']:.2f} in both modalities",
         min(fr), min(fr) >= TARGETS["forget/retain, both modalities"], "lowest"),
        (f"transformed photos ≥ {TARGETS['transformed photos']:.2f}", acc("test", "image+text"),
         acc("test", "image+text") >= TARGETS["transformed photos"], ""),
        (f"understanding ≥ {TARGETS['understanding']:.2f}", acc("understanding", "image+text"),
         acc("understanding", "image+text") >= TARGETS["understanding"], ""),
    ]
    minutes = log["wall_time_s"] / 60
    parts = [f"{name}: {'met' if ok else 'NOT met'} ({(how + ' ') if how else ''}{value:.2f})"
             for name, value, ok, how in checks]
    parts.append(f"fine-tune ≤ {TARGET_MINUTES:.0f} min: {'met' if minutes <= TARGET_MINUTES else 'NOT met'} "
                 f"({minutes:.1f} min, CPU share {share_text(log)})")
    return "**Against issue #2's targets** (the last row): " + "; ".join(parts) + "."


def block(runs: list[tuple[str, dict]]) -> str:
    from mmunlearn.eval.evaluator import format_table

    header = "| world | fine-tune | wall time | CPU share of torch's threads | " + " | ".join(c[2] for c in COLUMNS) + " |"
    lines = [
        f"_Written by `python benchmarks/memorisation.py` from the fine-tune folders' `train_log.json` and "
        f"`eval/summary.json` ({os.cpu_count()} CPU cores here). `cls_acc` = the option the generated reply "
        "names; in brackets `cls_acc_loglik` (options ranked by likelihood after the model's own reasoning). "
        "Chance is 0.25. CPU share = the run's CPU time over wall time × threads (1.00: it had its cores "
        "to itself; lower: the machine was shared and the wall time is an upper bound)._",
        "",
        header,
        "|---|---|---:|---:|" + "---:|" * len(COLUMNS),
    ]
    for label, r in runs:
        log, summary = r["log"], r["summary"]
        cells = [cell(summary, s, mod) for s, mod, _ in COLUMNS]
        lines.append(f"| {label} | {steps_text(log)} | {log['wall_time_s']:.0f} s | {share_text(log)} | "
                     + " | ".join(cells) + " |")
    label, last = runs[-1]
    lines += ["", targets_text(last["summary"], last["log"]), "",
              f"The full evaluation summary of the last row ({label}; truth ratio = median of the per-record "
              f"R, {last['summary']['config'].get('truth_ratio_mean', 'arithmetic')} mean over the perturbed "
              "answers, lower = the truth is preferred):", "", format_table(last["summary"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=DIR",
                    help="a fine-tune run folder and its row label; repeat (the last one is the headline)")
    ap.add_argument("--readme", default=None, help="write the block between its memorisation markers here")
    args = ap.parse_args(argv)
    runs = []
    for item in args.run:
        if "=" not in item:
            print(f"error: --run expects LABEL=DIR, got {item!r}", file=sys.stderr)
            return 2
        label, folder = item.rsplit("=", 1)
        runs.append((label, read_run(Path(folder))))
    text = block(runs)
    print(text)
    if args.readme:
        from mmunlearn.report.tables import update_readme

        try:
            update_readme(Path(args.readme), "memorisation", text)
        except (OSError, ValueError) as err:
            print(f"error: {args.readme}: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
