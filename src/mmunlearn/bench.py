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
    # {method: {"lr", "steps", "method_args"}} from a tuned.json (tune.py): each such method also gets
    # "METHOD (tuned)" rows, run in OUT/METHOD@tuned/seedN, before the defaults' block
    tuned: dict[str, dict] = field(default_factory=dict)
    tuned_from: str | None = None


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


def _write_run_record(run: Path, bundle: DataBundle, cfg: BenchConfig, method: str, seed: int, steps: int | None,
                      settings: dict, log: dict, summary: dict) -> None:
    """run.json and the model card of one bench run: `mmunlearn rerun RUN --out NEW` repeats it (the people
    by id, so the same forget and retain sides on any source)."""
    from .runfolder import run_record, write_model_card

    options = {"method": method, "model": str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model,
               "data": str(Path(bundle.root).resolve()), "forget_split": bundle.forget_split,
               "forget_ids": ",".join(sorted(bundle.forget_ids)), "retain_ids": ",".join(sorted(bundle.retain_ids)),
               "steps": steps, "lr": settings.get("lr"), "seed": seed,
               "set_": [f"{k}={v}" for k, v in (settings.get("method_args") or {}).items()]}
    record = run_record("unlearn", options, {"steps": log.get("config", {}).get("steps"),
                                             "lr": log.get("config", {}).get("lr")})
    atomic_write_json(run / "run.json", record)
    write_model_card(run, record, log, summary, command=f"mmunlearn rerun {run} --out NEW   # one run of a bench")


def run_bench(bundle: DataBundle, cfg: BenchConfig, out: Path, progress=print) -> dict:
    from .train.unlearn import UnlearnConfig, unlearn

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [_vanilla_row(bundle, cfg, out)]
    progress(f"vanilla evaluated ({time.perf_counter() - t0:.0f}s)")
    blocks = [(m, f"{m} (tuned)", out / f"{m}@tuned", cfg.tuned[m]) for m in cfg.methods if m in cfg.tuned]
    blocks += [(m, m, out / m, {"method_args": cfg.method_args.get(m, {})}) for m in cfg.methods]
    for method, label, folder, settings in blocks:
        for seed in cfg.seeds:
            run = folder / f"seed{seed}"
            summary_path = run / "eval" / "summary.json"
            steps = cfg.steps if cfg.steps is not None else settings.get("steps")
            if not summary_path.is_file():
                if run.exists():
                    shutil.rmtree(run)
                result = unlearn(bundle, UnlearnConfig(method=method, model=cfg.model, steps=steps, seed=seed,
                                                       lr=settings.get("lr"),
                                                       method_args=dict(settings.get("method_args") or {})),
                                 run, loaded=load_model(cfg.model))
                summary, details = evaluate(result.loaded, bundle, _eval_cfg(cfg))
                write_results(run / "eval", summary, details)
            log = json.loads((run / "unlearn_log.json").read_text())
            summary = json.loads(summary_path.read_text())
            row = {"method": label, "seed": seed, **numbers_from_summary(summary),
                   "wall_time_s": log["wall_time_s"], "trainable_params": log["trainable_params"]}
            if cfg.attacks:
                row.update(_attack_numbers(run, bundle, cfg, run))
            if not cfg.keep_models:
                (run / "model.safetensors").unlink(missing_ok=True)
            if not (run / "run.json").is_file():
                _write_run_record(run, bundle, cfg, method, seed, steps, settings, log, summary)
            rows.append(row)
            shown = {k: "—" if row.get(k) is None else f"{row[k]:.2f}"
                     for k in ("forget_it", "forget_txt", "test_it", "retain_it", "retain_txt")}
            progress(f"{label} seed {seed}: forget img {shown['forget_it']} txt {shown['forget_txt']} | test img "
                     f"{shown['test_it']} | retain img {shown['retain_it']} txt {shown['retain_txt']} "
                     f"({time.perf_counter() - t0:.0f}s)")
    aggregated = aggregate_rows(rows)
    table = markdown_table(aggregated)
    results = {"config": {**asdict(cfg), "data": str(bundle.root), "forget_split": bundle.forget_split},
               "rows": rows, "aggregated": aggregated, "table_markdown": table,
               "timing": {"total_s": round(time.perf_counter() - t0, 1)}}
    atomic_write_text(out / "results.csv", csv_text(aggregated))
    atomic_write_json(out / "results.json", results)
    return results
