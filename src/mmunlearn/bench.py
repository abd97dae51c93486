"""`mmunlearn bench`: every method × seed → unlearn → evaluate (→ attacks) → one results table.

Each run lives in OUT/METHOD/seedN with its own model, logs and summaries; a run whose summary
already exists is reused, so an interrupted bench continues where it stopped. The table is built
from those files only (report/tables.py), and written atomically as results.json and results.csv.
"""

from __future__ import annotations

import json
import logging
import os
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
    batch_size: int = 8  # per process (cut to what the forget records fill: train/unlearn.fit_batch)
    max_records: int = 0  # per eval split (0: all)
    reference_summary: str | None = None
    attacks: bool = False
    # relearning: the four ratios of the attack's protocol, on held-out (person, fact) pairs ("facts": the
    # attack never teaches a probed fact), AG on log-likelihood and on generated letters
    relearn_ratios: tuple[float, ...] = (5.0, 10.0, 25.0, 50.0)
    relearn_steps: int = 20
    relearn_split: str = "facts"
    # a retain-only model (`mmunlearn retain-model`): the same relearning on it is what the attack data
    # alone teaches; "relearn over floor" = mean over ratios of (after − the floor's after)
    floor_model: str | None = None
    keep_models: bool = False
    method_args: dict[str, dict] = field(default_factory=dict)
    # {method: {"lr", "steps", "method_args"}} from a tuned.json (tune.py): each such method also gets
    # "METHOD (tuned)" rows, run in OUT/METHOD@tuned/seedN, before the defaults' block
    tuned: dict[str, dict] = field(default_factory=dict)
    tuned_from: str | None = None
    workers: int = 1  # runs side by side, each in a process of its own with one torch thread
    # the defaults' block on these seeds only (None: `seeds`), so that the tuned rows get the seeds the budget has
    default_seeds: list[int] | None = None
    log_with: str | None = None  # each run's losses to this tracker, under its own OUT/METHOD/seedN/logs


def _eval_cfg(cfg: BenchConfig) -> EvalConfig:
    return EvalConfig(max_records_per_split=cfg.max_records, reference_summary=cfg.reference_summary, progress=False)


def _vanilla_row(bundle: DataBundle, cfg: BenchConfig, out: Path, floor_after: dict[str, float] | None = None) -> dict:
    run = out / "vanilla"
    summary_path = run / "eval" / "summary.json"
    if not summary_path.is_file():
        summary, details = evaluate(load_model(cfg.model), bundle, _eval_cfg(cfg))
        write_results(run / "eval", summary, details)
    summary = json.loads(summary_path.read_text())
    row = {"method": "vanilla", "seed": None, **numbers_from_summary(summary)}
    if cfg.attacks:
        row.update(_attack_numbers(cfg.model, bundle, cfg, run, floor_after))
    return row


def _relearn_cfg(cfg: BenchConfig):
    from .eval.attacks.relearn import RelearnConfig

    return RelearnConfig(ratios=tuple(cfg.relearn_ratios), steps=cfg.relearn_steps, split=cfg.relearn_split,
                         generate=True)


def _same_relearn(summary: dict | None, cfg: BenchConfig) -> bool:
    """Whether a stored relearn summary was run as this bench asks (ratios, steps, split, generated AG)."""
    if not summary:
        return False
    stored = summary.get("config", {})
    return (stored.get("ratios") == sorted(float(r) for r in cfg.relearn_ratios)
            and stored.get("steps") == cfg.relearn_steps and stored.get("split") == cfg.relearn_split
            and stored.get("generate") is True)


def _floor_after(bundle: DataBundle, cfg: BenchConfig, out: Path) -> dict[str, float] | None:
    """The retain-only model's probe accuracy after relearning, per ratio: run once per bench folder."""
    if not cfg.floor_model:
        return None
    from .eval.attacks.relearn import relearn_attack

    path = out / "floor" / "relearn.json"
    stored = json.loads(path.read_text()) if path.is_file() else None
    if not _same_relearn(stored, cfg) or stored.get("model") != str(cfg.floor_model):
        summary, _ = relearn_attack(str(cfg.floor_model), bundle, _relearn_cfg(cfg))
        stored = {**summary, "model": str(cfg.floor_model)}
        atomic_write_json(path, stored)
    return stored["after"]


def _attack_numbers(model_dir: str | Path, bundle: DataBundle, cfg: BenchConfig, run: Path,
                    floor_after: dict[str, float] | None = None) -> dict:
    from .eval.attacks.probe import ProbeConfig, run_probe
    from .eval.attacks.rank import RankConfig, run_rank
    from .eval.attacks.relearn import relearn_attack

    path = run / "attacks.json"
    # Identity ranking on the forget people's unseen photos, strangers' baseline included (no retain photos).
    rank_cfg = RankConfig(retain_people=0)
    data = json.loads(path.read_text()) if path.is_file() else {}
    has_model = any(Path(model_dir).glob("*.safetensors"))
    if "probe" not in data or ("rank" not in data and has_model):
        loaded = load_model(model_dir)
        data.setdefault("probe", run_probe(loaded, bundle, ProbeConfig())[0])
        if "rank" not in data:
            data["rank"], _ = run_rank(loaded, bundle, rank_cfg)
        atomic_write_json(path, data)
    if not _same_relearn(data.get("relearn"), cfg) and has_model:  # missing, or run with other settings
        data["relearn"], _ = relearn_attack(str(model_dir), bundle, _relearn_cfg(cfg))
        atomic_write_json(path, data)
    probes = data["probe"].get("probes", {})
    mia = (data["probe"].get("mia") or {}).get("forget_vs_holdout", {})
    # a relearn run with other settings whose model is gone is not this bench's number: absent, not stale
    relearn = data["relearn"] if _same_relearn(data.get("relearn"), cfg) else {}
    over_floor = None
    if floor_after and relearn:
        gaps = [relearn["after"][k] - floor_after[k] for k in floor_after if k in relearn.get("after", {})]
        over_floor = sum(gaps) / len(gaps) if gaps else None
    return {"AG": relearn.get("AG"), "AG_gen": relearn.get("AG_cls_acc"), "relearn_over_floor": over_floor,
            "leak_text": (probes.get("text_only") or {}).get("leak"),
            "mia_auc": mia.get("loss_auc"), **rank_numbers(data.get("rank"))}


def rank_numbers(rank: dict | None) -> dict[str, float | None]:
    """The bench's identity columns from a rank attack's summary: the forget people's top-5 share and median rank
    on their unseen photos, and where the same model puts their names on never-seen strangers' photos (a
    forgotten face's rank)."""
    forget = ((rank or {}).get("groups") or {}).get("forget") or {}
    strangers = (rank or {}).get("forget_names_on_strangers") or {}
    return {"rank_top5": forget.get("top5"), "rank_median": forget.get("median_rank"),
            "rank_strangers_median": strangers.get("median_rank")}


def _write_run_record(run: Path, bundle: DataBundle, cfg: BenchConfig, method: str, seed: int, steps: int | None,
                      settings: dict, log: dict, summary: dict) -> None:
    """run.json and the model card of one bench run: `mmunlearn rerun RUN --out NEW` repeats it (the people
    by id, so the same forget and retain sides on any source)."""
    from .runfolder import run_record, write_model_card

    options = {"method": method, "model": str(Path(cfg.model).resolve()) if Path(cfg.model).exists() else cfg.model,
               "data": str(Path(bundle.root).resolve()), "forget_split": bundle.forget_split,
               "forget_ids": ",".join(sorted(bundle.forget_ids)), "retain_ids": ",".join(sorted(bundle.retain_ids)),
               "steps": steps, "lr": settings.get("lr"), "seed": seed, "batch_size": cfg.batch_size,
               "set_items": [f"{k}={v}" for k, v in (settings.get("method_args") or {}).items()]}
    record = run_record("unlearn", options, {"steps": log.get("config", {}).get("steps"),
                                             "lr": log.get("config", {}).get("lr")})
    atomic_write_json(run / "run.json", record)
    write_model_card(run, record, log, summary, command=f"mmunlearn rerun {run} --out NEW   # one run of a bench")


def bench_run(bundle: DataBundle, cfg: BenchConfig, method: str, label: str, folder: Path, settings: dict,
              seed: int, floor_after: dict[str, float] | None = None) -> dict:
    """One method × seed: unlearn, evaluate (and attack) in FOLDER/seedN, unless its files exist → its row."""
    from .train.unlearn import UnlearnConfig, unlearn

    run = folder / f"seed{seed}"
    summary_path = run / "eval" / "summary.json"
    steps = cfg.steps if cfg.steps is not None else settings.get("steps")
    if not summary_path.is_file():
        if run.exists():
            shutil.rmtree(run)
        result = unlearn(bundle, UnlearnConfig(method=method, model=cfg.model, steps=steps, seed=seed,
                                               lr=settings.get("lr"), batch_size=cfg.batch_size,
                                               log_with=cfg.log_with,
                                               method_args=dict(settings.get("method_args") or {})),
                         run, loaded=load_model(cfg.model))
        summary, details = evaluate(result.loaded, bundle, _eval_cfg(cfg))
        write_results(run / "eval", summary, details)
    log = json.loads((run / "unlearn_log.json").read_text())
    summary = json.loads(summary_path.read_text())
    row = {"method": label, "seed": seed, **numbers_from_summary(summary),
           "wall_time_s": log["wall_time_s"], "trainable_params": log["trainable_params"]}
    if cfg.attacks:
        row.update(_attack_numbers(run, bundle, cfg, run, floor_after))
    if not cfg.keep_models:
        (run / "model.safetensors").unlink(missing_ok=True)
    if not (run / "run.json").is_file():
        _write_run_record(run, bundle, cfg, method, seed, steps, settings, log, summary)
    return row


_WORKER_BUNDLE: DataBundle | None = None


def _start_worker(bundle: DataBundle) -> None:
    from .tune import _one_thread

    global _WORKER_BUNDLE
    _WORKER_BUNDLE = bundle
    _one_thread()


def _worker_run(cfg: BenchConfig, *job) -> dict:
    row = bench_run(_WORKER_BUNDLE, cfg, *job)
    return {**row, "worker_pid": os.getpid()}


def bench_jobs(cfg: BenchConfig, out: Path) -> list[tuple[str, str, Path, dict, int]]:
    """(method, label, folder, settings, seed) of every run: the tuned block first, then the defaults'."""
    tuned = [(m, f"{m} (tuned)", out / f"{m}@tuned", cfg.tuned[m], cfg.seeds) for m in cfg.methods if m in cfg.tuned]
    default_seeds = cfg.seeds if cfg.default_seeds is None else cfg.default_seeds
    defaults = [(m, m, out / m, {"method_args": cfg.method_args.get(m, {})}, default_seeds) for m in cfg.methods]
    return [(method, label, folder, settings, seed)
            for method, label, folder, settings, seeds in tuned + defaults for seed in seeds]


def run_bench(bundle: DataBundle, cfg: BenchConfig, out: Path, progress=None) -> dict:
    """Every run of the bench (reusing finished ones) → results.json, results.csv; `progress`: where each
    run's line goes (default: the `mmunlearn` logger, INFO)."""
    progress = progress or logging.getLogger("mmunlearn").info
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    floor_after = _floor_after(bundle, cfg, out) if cfg.attacks else None
    rows = [_vanilla_row(bundle, cfg, out, floor_after)]
    progress(f"vanilla evaluated ({time.perf_counter() - t0:.0f}s)")
    jobs = bench_jobs(cfg, out)

    def show(row: dict) -> None:
        shown = {k: "—" if row.get(k) is None else f"{row[k]:.2f}"
                 for k in ("forget_it", "forget_txt", "test_it", "retain_it", "retain_txt")}
        progress(f"{row['method']} seed {row['seed']}: forget img {shown['forget_it']} txt {shown['forget_txt']} | "
                 f"test img {shown['test_it']} | retain img {shown['retain_it']} txt {shown['retain_txt']} "
                 f"({time.perf_counter() - t0:.0f}s)")

    if cfg.workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # every run in a process of its own (one torch thread each), the data sent once per worker;
        # rows keep the table's order
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_start_worker, initargs=(bundle,)) as pool:
            futures = [pool.submit(_worker_run, cfg, *job, floor_after) for job in jobs]
            for future in futures:
                rows.append(future.result())
                show(rows[-1])
    else:
        for job in jobs:
            rows.append(bench_run(bundle, cfg, *job, floor_after))
            show(rows[-1])
    aggregated = aggregate_rows(rows)
    table = markdown_table(aggregated)
    results = {"config": {**asdict(cfg), "data": str(bundle.root), "forget_split": bundle.forget_split},
               "rows": rows, "aggregated": aggregated, "table_markdown": table,
               "timing": {"total_s": round(time.perf_counter() - t0, 1)}}
    atomic_write_text(out / "results.csv", csv_text(aggregated))
    atomic_write_json(out / "results.json", results)
    return results
