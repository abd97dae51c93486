"""`mmunlearn bench`: every method × seed → unlearn → evaluate (→ attacks) → one results table.

Each run lives in OUT/METHOD/seedN with its own model, logs and summaries; a run whose summary
already exists is reused, so an interrupted bench continues where it stopped. The table is built
from those files only (report/tables.py), and written atomically as results.json and results.csv.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data.store import DataBundle, atomic_write_json, atomic_write_text
from .eval.evaluator import EvalConfig, evaluate, write_results
from .models.loader import load_model
from .report.tables import aggregate_rows, csv_text, markdown_table, numbers_from_summary


@dataclass
class BenchConfig:
    model: str
    methods: list[str]
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int | None = None  # None: each method's default
    max_records: int = 0  # per eval split (0: all)
    reference_summary: str | None = None
    attacks: bool = False
    relearn_ratios: tuple[float, ...] = (10.0, 50.0)
    relearn_steps: int = 20
    keep_models: bool = False
    method_args: dict[str, dict] = field(default_factory=dict)


def _eval_cfg(cfg: BenchConfig) -> EvalConfig:
    return EvalConfig(max_records_per_split=cfg.max_records, reference_summary=cfg.reference_summary, progress=False)


def _vanilla_row(bundle: DataBundle, cfg: BenchConfig, out: Path) -> dict:
    run = out / "vanilla"
    summary_path = run / "eval" / "summary.json"
    if not summary_path.is_file():
        summary, details = evaluate(load_model(cfg.model), bundle, _eval_cfg(cfg))
        write_results(run / "eval", summary, details)
    summary = json.loads(summary_path.read_text())
    row = {"method": "vanilla", "seed": None, **numbers_from_summary(summary)}
    if cfg.attacks:
        row.update(_attack_numbers(cfg.model, bundle, cfg, run))
    return row


def _attack_numbers(model_dir: str | Path, bundle: DataBundle, cfg: BenchConfig, run: Path) -> dict:
    from .eval.attacks.probe import ProbeConfig, run_probe
    from .eval.attacks.rank import RankConfig, run_rank
    from .eval.attacks.relearn import RelearnConfig, relearn_attack

    path = run / "attacks.json"
    # Identity ranking on the forget people's unseen photos, strangers' baseline included (no retain photos).
    rank_cfg = RankConfig(retain_people=0)
    if not path.is_file():
        loaded = load_model(model_dir)
        probe, _ = run_probe(loaded, bundle, ProbeConfig())
        rank, _ = run_rank(loaded, bundle, rank_cfg)
        relearn, _ = relearn_attack(str(model_dir), bundle,
                                    RelearnConfig(ratios=cfg.relearn_ratios, steps=cfg.relearn_steps, generate=False))
        atomic_write_json(path, {"probe": probe, "relearn": relearn, "rank": rank})
    data = json.loads(path.read_text())
    if "rank" not in data and any(Path(model_dir).glob("*.safetensors")):  # written before the rank attack
        data["rank"], _ = run_rank(load_model(model_dir), bundle, rank_cfg)
        atomic_write_json(path, data)
    probes = data["probe"].get("probes", {})
    mia = (data["probe"].get("mia") or {}).get("forget_vs_holdout", {})
    rank = ((data.get("rank") or {}).get("groups") or {}).get("forget") or {}
    return {"AG": data["relearn"].get("AG"),
            "leak_text": (probes.get("text_only") or {}).get("leak"),
            "mia_auc": mia.get("loss_auc"),
            "rank_top5": rank.get("top5"), "rank_median": rank.get("median_rank")}


def run_bench(bundle: DataBundle, cfg: BenchConfig, out: Path, progress=print) -> dict:
    from .train.unlearn import UnlearnConfig, unlearn

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [_vanilla_row(bundle, cfg, out)]
    progress(f"vanilla evaluated ({time.perf_counter() - t0:.0f}s)")
    for method in cfg.methods:
        for seed in cfg.seeds:
            run = out / method / f"seed{seed}"
            summary_path = run / "eval" / "summary.json"
            if not summary_path.is_file():
                if run.exists():
                    shutil.rmtree(run)
                result = unlearn(bundle, UnlearnConfig(method=method, model=cfg.model, steps=cfg.steps, seed=seed,
                                                       method_args=cfg.method_args.get(method, {})),
                                 run, loaded=load_model(cfg.model))
                summary, details = evaluate(result.loaded, bundle, _eval_cfg(cfg))
                write_results(run / "eval", summary, details)
            log = json.loads((run / "unlearn_log.json").read_text())
            row = {"method": method, "seed": seed, **numbers_from_summary(json.loads(summary_path.read_text())),
                   "wall_time_s": log["wall_time_s"], "trainable_params": log["trainable_params"]}
            if cfg.attacks:
                row.update(_attack_numbers(run, bundle, cfg, run))
            if not cfg.keep_models:
                (run / "model.safetensors").unlink(missing_ok=True)
            rows.append(row)
            progress(f"{method} seed {seed}: forget img {row['forget_it']:.2f} txt {row['forget_txt']:.2f} | "
                     f"retain img {row['retain_it']:.2f} txt {row['retain_txt']:.2f} ({time.perf_counter() - t0:.0f}s)")
    aggregated = aggregate_rows(rows)
    table = markdown_table(aggregated)
    results = {"config": {**asdict(cfg), "data": str(bundle.root), "forget_split": bundle.forget_split},
               "rows": rows, "aggregated": aggregated, "table_markdown": table,
               "timing": {"total_s": round(time.perf_counter() - t0, 1)}}
    atomic_write_text(out / "results.csv", csv_text(aggregated))
    atomic_write_json(out / "results.json", results)
    return results
