"""`mmunlearn tune`: the same search, the same budget and the same selection rule for every method.

A method's settings are searched with optuna (TPE, seeded) over the space it declares
(`Method.search_space`: lr, steps and its own weights), `trials` per method. Every trial unlearns the
**tuning population** — people no reported run forgets or counts as retain (the world's
`tune_forget` / `tune_retain`, data/world.tune_population; `--tune-forget-ids/--tune-retain-ids` for
other data) — and is scored on a seeded evaluation subsample of those people only: the reported
forget set and the reported retain metrics are never looked at.

One rule chooses each method's trial (train/selection.py's language, `x` = × vanilla), DEFAULT_RULE:
the most forgetting on the tuning people's unseen photos and paraphrased questions, among trials that
keep ≥ 95 % of vanilla on the tuning retain people's photos and text and on their photos' understanding
and whose forget replies are not degenerate; ties go to the faster trial. When no trial qualifies the
one closest to qualifying is chosen and `tuned.json` says so. A trial whose loss turns NaN is pruned.

The result, `tuned.json`, holds every trial and each method's choice; `bench --tuned` and
`unlearn --config` read it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .data.store import DataBundle, atomic_write_json, load_data, world_tune_ids
from .eval.evaluator import EvalConfig, evaluate
from .train.selection import Rule, lookup, objective_value, parse_rule, resolve_relative

TUNED_FORMAT = "mmunlearn-tuned/1"
DEFAULT_RULE = ("min:test/image+text/cls_acc&test/text/cls_acc,"
                "retain/image+text/cls_acc>=0.95x,retain/text/cls_acc>=0.95x,"
                "understanding_retain/image+text/cls_acc>=0.95x,forget/text/degenerate_rate<=0.1")
TUNE_SPLITS = ("forget", "test", "retain", "understanding")


@dataclass
class TuneConfig:
    model: str
    methods: list[str]
    trials: int = 16
    seed: int = 100  # the tuning seed: reported runs use others (bench seeds 0, 1, 2)
    eval_records: int = 96  # per split, seeded (at 48 a retain photo constraint hung on one of ~8 answers)
    rule: str = DEFAULT_RULE
    batch_size: int = 8


def tuning_bundles(root: str | Path, forget_ids: list[str] | None = None,
                   retain_ids: list[str] | None = None) -> tuple[DataBundle, DataBundle]:
    """(bundle to unlearn on, bundle to score trials on) for the tuning population.

    Training: forget = the tuning forget people; retain = every other trained person except those any
    reported forget split holds. Scoring: the same forget people; retain = the tuning retain people."""
    base = load_data(root, keep_tune=True)  # everyone: the tuning people are chosen from all
    if forget_ids is None:
        if base.source != "world":
            raise ValueError(f"{root} has no tuning population: name one with --tune-forget-ids and "
                             "--tune-retain-ids (people no reported run forgets or counts as retain)")
        forget_ids, retain_ids = world_tune_ids(base.manifest)
        if not forget_ids:
            raise ValueError(f"{root}: the world is too small for a tuning population (fewer than 50 people); "
                             "name one with --tune-forget-ids and --tune-retain-ids")
    if not retain_ids:
        raise ValueError("the tuning population needs retain people too (--tune-retain-ids)")
    people = base.forget_ids | base.retain_ids
    unknown = sorted((set(forget_ids) | set(retain_ids)) - people)
    if unknown:
        raise ValueError(f"tuning people not in the data: {', '.join(unknown[:5])}")
    reported = set()
    if base.source == "world":
        reported = {p for name, ids in base.manifest.get("ids", {}).items() if name.startswith("forget_") for p in ids}
    train_retain = sorted(people - set(forget_ids) - (reported - set(retain_ids)))
    train = load_data(root, forget_ids=list(forget_ids), retain_ids=train_retain)
    scored = dict(train.splits)
    scored["retain"] = [r for r in train.splits.get("retain", []) if r.profile_id in set(retain_ids)]
    # only the tuning people's understanding questions, so a subsample spends every record on them
    tuning_people = set(forget_ids) | set(retain_ids)
    scored["understanding"] = [r for r in train.splits.get("understanding", []) if r.profile_id in tuning_people]
    score = replace(train, splits=scored, retain_ids=set(retain_ids))
    return train, score


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    """optuna suggestions for a declared space: ("log"|"float", lo, hi), ("int", lo, hi), ("cat", [..])."""
    out = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "log":
            out[name] = trial.suggest_float(name, spec[1], spec[2], log=True)
        elif kind == "float":
            out[name] = trial.suggest_float(name, spec[1], spec[2])
        elif kind == "int":
            out[name] = trial.suggest_int(name, spec[1], spec[2], log=len(spec) > 3 and spec[3] == "log")
        elif kind == "cat":
            out[name] = trial.suggest_categorical(name, list(spec[1]))
        else:
            raise ValueError(f"search space {name}: unknown kind {kind!r}")
    return out


def summary_numbers(metrics: dict, rule: Rule) -> dict[str, float | None]:
    return {k: lookup(metrics, k) for k in dict.fromkeys(rule.keys)}


def choose_trial(trials: list[dict]) -> tuple[dict | None, str]:
    """The finished trial the rule prefers: feasible first, then the objective, then the wall time.
    With none feasible, the smallest total constraint margin (closest to qualifying)."""
    done = [t for t in trials if t["state"] == "complete" and t["objective"] is not None]
    if not done:
        return None, "no trial finished"
    feasible = [t for t in done if t["feasible"]]
    if feasible:
        best = min(feasible, key=lambda t: (round(t["objective"], 6), t["wall_time_s"]))
        return best, "the most forgetting among the trials meeting every constraint (ties: the faster)"
    best = min(done, key=lambda t: (round(t["margin"], 6), round(t["objective"], 6), t["wall_time_s"]))
    return best, "no trial met every constraint: the one closest to meeting them"


def run_tune(data: str | Path, cfg: TuneConfig, out: Path, tune_forget: list[str] | None = None,
             tune_retain: list[str] | None = None, progress: Callable[[str], None] = print) -> dict:
    """Tune every method of `cfg.methods`; writes OUT/tuned.json (atomically, after each method)."""
    import optuna

    from .methods.base import get_method
    from .models.loader import load_model
    from .train.loop import NonFiniteLossError
    from .train.unlearn import UnlearnConfig, unlearn

    rule = parse_rule(cfg.rule, allow_relative=True)
    train_bundle, score_bundle = tuning_bundles(data, tune_forget, tune_retain)
    eval_cfg = EvalConfig(splits=TUNE_SPLITS, max_records_per_split=cfg.eval_records, seed=cfg.seed, progress=False)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    vanilla, _ = evaluate(load_model(cfg.model), score_bundle, eval_cfg)
    resolved = resolve_relative(rule, vanilla["metrics"])
    progress(f"vanilla on the tuning people: {json.dumps(summary_numbers(vanilla['metrics'], rule))}")
    result: dict[str, Any] = {
        "format": TUNED_FORMAT, "config": asdict(cfg), "data": str(data), "rule": cfg.rule,
        "rule_resolved": str(resolved), "tune_forget": sorted(train_bundle.forget_ids),
        "tune_retain": sorted(score_bundle.retain_ids), "vanilla": summary_numbers(vanilla["metrics"], rule),
        "methods": {}, "trials": [], "timing": {}}
    previous = out / "tuned.json"
    if previous.is_file():  # an interrupted tune continues: finished methods are kept
        old = json.loads(previous.read_text())
        if old.get("config") == result["config"] and old.get("rule") == cfg.rule:
            result["methods"], result["trials"], result["timing"] = old["methods"], old["trials"], old["timing"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in cfg.methods:
        if name in result["methods"]:
            progress(f"{name}: already tuned")
            continue
        method_cls = get_method(name)
        space = method_cls.tuning_space()
        trials: list[dict] = []
        started = time.perf_counter()

        def objective(trial, name=name, method_cls=method_cls, space=space, trials=trials):
            params = suggest(trial, space)
            lr, steps = params.pop("lr", None), params.pop("steps", None)
            run = out / "trials" / name / f"trial{trial.number}"
            row = {"method": name, "number": trial.number, "lr": lr, "steps": steps, "method_args": params,
                   "state": "complete", "objective": None, "feasible": False, "margin": None}
            t = time.perf_counter()
            try:
                res = unlearn(train_bundle, UnlearnConfig(method=name, model=cfg.model, steps=steps, lr=lr,
                                                          batch_size=cfg.batch_size, seed=cfg.seed,
                                                          method_args=params), run, loaded=load_model(cfg.model))
                summary, _ = evaluate(res.loaded, score_bundle, eval_cfg)
            except NonFiniteLossError as exc:
                row.update(state="pruned", why=str(exc), wall_time_s=round(time.perf_counter() - t, 1))
                trials.append(row)
                raise optuna.TrialPruned(str(exc)) from None
            finally:
                for f in run.glob("*.safetensors"):
                    f.unlink()
            metrics = summary["metrics"]
            value = objective_value(resolved, metrics)
            margins = [c.margin(metrics) for c in resolved.constraints]
            row.update(objective=value, feasible=all(m == 0 for m in margins), margin=round(sum(margins), 6),
                       numbers=summary_numbers(metrics, rule), wall_time_s=round(time.perf_counter() - t, 1))
            trials.append(row)
            for c, margin in zip(resolved.constraints, margins):  # ≤ 0: met (TPE samples near feasible trials)
                trial.set_constraint(str(c), margin)
            progress(f"{name} trial {trial.number}: objective {value if value is None else round(value, 3)} "
                     f"{'feasible' if row['feasible'] else 'infeasible'} ({row['wall_time_s']}s)")
            return math.inf if value is None else value

        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(6, cfg.trials))
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.optimize(objective, n_trials=cfg.trials, catch=())
        best, why = choose_trial(trials)
        result["trials"] += trials
        result["timing"][name] = round(time.perf_counter() - started, 1)
        if best is not None:
            result["methods"][name] = {
                "lr": best["lr"], "steps": best["steps"], "method_args": best["method_args"],
                "trial": best["number"], "objective": best["objective"], "feasible": best["feasible"],
                "numbers": best["numbers"], "why": why}
        atomic_write_json(out / "tuned.json", result)
        progress(f"{name}: trial {best['number'] if best else '—'} chosen — {why} "
                 f"({result['timing'][name]:.0f}s for {cfg.trials} trials)")
    result["timing"]["total_s"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(out / "tuned.json", result)
    return result


def read_tuned(path: str | Path) -> dict:
    """A tuned.json, checked: ValueError (one line) for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable tuned.json ({exc})") from None
    if data.get("format") != TUNED_FORMAT or not isinstance(data.get("methods"), dict):
        raise ValueError(f"{path}: not a tuned.json written by `mmunlearn tune` (format {TUNED_FORMAT})")
    return data


def tuned_settings(tuned: dict, method: str) -> dict[str, Any]:
    """{"lr", "steps", "method_args"} a tune chose for `method`; ValueError if it has none."""
    if method not in tuned["methods"]:
        raise ValueError(f"the tune has no settings for {method!r} (it tuned {', '.join(tuned['methods']) or 'nothing'})")
    chosen = tuned["methods"][method]
    return {"lr": chosen["lr"], "steps": chosen["steps"], "method_args": dict(chosen["method_args"])}
