"""`mmunlearn tune`: the same search, the same budget and the same selection rule for every method.

A method's settings are searched with optuna (TPE, seeded) over the space it declares
(`Method.search_space`: lr, steps and its own weights), `trials` per method, within one **compute budget**:
every trial trains on at most `budget` samples (steps × global batch, every stage summed:
`Method.trained_samples`), so a method's steps are searched over [top / 4, top] with top the most its stages
fit in the budget. The default budget is the mean of every registered method's default schedule in trained
samples (`default_budget`): a tune of all methods costs what searches around their own defaults cost
together, shared out equally instead of 60 steps for a baseline against 480 for VKD. Every trial unlearns the
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
import logging
import math
import os
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from .data.store import DataBundle, atomic_write_json, load_data, world_tune_ids
from .eval.evaluator import EvalConfig, evaluate
from .train.selection import (IDENTITY_METRICS, IDENTITY_SPLIT, Rule, lookup, objective_value, parse_rule,
                              resolve_relative)

TUNED_FORMAT = "mmunlearn-tuned/1"
DEFAULT_RULE = ("min:test/image+text/cls_acc&test/text/cls_acc,"
                "retain/image+text/cls_acc>=0.95x,retain/text/cls_acc>=0.95x,"
                "understanding_retain/image+text/cls_acc>=0.95x,forget/text/degenerate_rate<=0.1")


@dataclass
class TuneConfig:
    model: str
    methods: list[str]
    trials: int = 16
    seed: int = 100  # the tuning seed: reported runs use others (bench seeds 0, 1, 2)
    # questions per (split, modality, task) the rule reads, seeded; the rule's constraints need enough of
    # them to tell a 5 % loss from noise (at 96 records over every task, retain photos had 18 questions)
    eval_records: int = 64
    rule: str = DEFAULT_RULE
    batch_size: int = 8
    workers: int = 1  # processes tuning methods side by side (one torch thread each when > 1)
    budget: int = 0  # trained samples a trial may use (steps × batch, stages summed); 0: default_budget
    # method options every trial uses (`tune --set`), left out of the search: e.g. VKD's augment, which its
    # search space lacks, so that a search explores the settings that forget unseen photos
    fixed: dict[str, Any] = field(default_factory=dict)


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


def scoring_sample(score: DataBundle, rule: Rule, per_group: int, seed: int) -> DataBundle:
    """Only the questions the rule reads, `per_group` per (split, modality, task), seeded.

    A trial is scored on what selects it and nothing else: a population key (understanding_retain)
    keeps only that population's people, `test` only the forget people (as the evaluator reads it)."""
    import random

    from .eval.evaluator import base_split
    from .train.selection import METRIC_TASKS

    wanted: dict[str, set[tuple[str, str]]] = {}
    people: dict[str, set[str] | None] = {}
    for key in dict.fromkeys(rule.keys):
        split, modality, metric = key.split("/")
        if split == IDENTITY_SPLIT:  # ranked on the photos of the forget people's unseen-photo questions
            split, modality, metric = "test", "image+text", "cls_acc"
        base = base_split(split)
        tasks = METRIC_TASKS.get(metric, {"classification", "cloze", "generation"})
        wanted.setdefault(base, set()).update((modality, task) for task in tasks)
        if split != base and people.get(base, set()) is not None:
            who = score.forget_ids if split.endswith("_forget") else score.retain_ids
            people[base] = (people.get(base) or set()) | set(who)
        elif split != base or base != "test":
            people[base] = None  # the whole split
        else:
            people[base] = set(score.forget_ids)
    splits: dict[str, list] = {}
    for split, groups in wanted.items():
        who = people.get(split)
        chosen = []
        for modality, task in sorted(groups):
            recs = [r for r in score.eval(split) if r.modality == modality and r.task == task
                    and (who is None or r.profile_id in who)]
            if per_group and len(recs) > per_group:
                recs = random.Random(f"{seed}-{split}-{modality}-{task}").sample(recs, per_group)
            chosen += recs
        splits[split] = sorted(chosen, key=lambda r: r.id)
    return replace(score, splits=splits)


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


def check_fixed(methods: list[str], fixed: dict[str, Any]) -> None:
    """`tune --set`: options every trial of every tuned method uses. ValueError (one line) for lr or steps (they
    are what a tune searches) and for an option a tuned method does not have or cannot run with."""
    from .methods.base import get_method

    searched = sorted({"lr", "steps"} & set(fixed))
    if searched:
        verb = "are" if len(searched) > 1 else "is"
        raise ValueError(f"--set fixes method options; {' and '.join(searched)} {verb} searched "
                         f"(use `unlearn` for a fixed schedule)")
    for name in methods:
        get_method(name).make_config(fixed)  # names the method and the option it lacks


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


@dataclass
class TuneContext:
    """What every method's search needs, picklable so worker processes get the same as the parent."""

    data: str
    cfg: TuneConfig
    out: Path
    rule: Rule
    resolved: Rule  # the rule with vanilla's numbers in place of the `x` constraints
    train_bundle: DataBundle
    score_bundle: DataBundle  # already cut to the rule's questions (scoring_sample)
    parameters: int = 0  # the model's size: a real-size model is searched around the real preset
    budget: int = 0  # trained samples a trial may use (run_tune sets it: cfg.budget or default_budget)

    def space(self, name: str) -> dict[str, tuple]:
        """The method's search space: lr around the preset the model's size picks (train/presets.py: a 7B
        model is never searched around the tiny builds' learning rates), steps over [top / 4, top] with top
        the most steps whose trained samples fit the budget (`Method.steps_within`; no budget: the preset's)."""
        from .methods.base import get_method

        cls = get_method(name)
        lr, steps = self.preset_schedule(name)
        space = cls.tuning_space(lr, self.top_steps(name) if self.budget else steps)
        return {k: v for k, v in space.items() if k not in self.cfg.fixed}  # `--set` options are not searched

    def preset_schedule(self, name: str) -> tuple[float, int]:
        """(lr, steps) of the method's preset on the tuning data."""
        from .methods.base import get_method
        from .train.presets import REAL_SIZE_PARAMS, preset_defaults
        from .train.unlearn import forget_records

        cls = get_method(name)
        preset = "real" if self.parameters >= REAL_SIZE_PARAMS else "tiny"
        lr, steps, _ = preset_defaults(cls(), preset, forget_records(self.train_bundle, cls),
                                       self.train_bundle.train("retain"), self.cfg.batch_size)
        return lr, steps

    def top_steps(self, name: str) -> int:
        """The most steps a trial of `name` (at its default stages) may take within the budget."""
        from .methods.base import get_method

        method = get_method(name)
        return method(method.make_config(self.cfg.fixed)).steps_within(self.budget, self.cfg.batch_size)

    @property
    def eval_cfg(self) -> EvalConfig:
        return EvalConfig(splits=self.rule.splits, max_records_per_split=0, seed=self.cfg.seed, progress=False)


def default_budget(ctx: TuneContext) -> int:
    """The mean over every registered method of its preset's default schedule in trained samples, rounded
    down to a whole number of batches: the compute a search around each method's own defaults would spend
    in all, shared out equally."""
    from .methods.base import registry

    batch = ctx.cfg.batch_size
    samples = [cls().trained_samples(ctx.preset_schedule(name)[1], batch) for name, cls in sorted(registry().items())]
    return max(batch, sum(samples) // len(samples) // batch * batch)


def add_identity(metrics: dict, loaded, bundle: DataBundle, rule: Rule) -> dict:
    """Where the rule reads `identity/…` keys: the rank attack on the forget people's unseen photos of the scored
    questions (no retain or holdout people: only the forget group is read), under the metrics' `identity` split.
    Where it does not, nothing runs and `metrics` comes back as it was."""
    if not rule.identity_keys:
        return metrics
    from .eval.attacks.rank import RankConfig, run_rank

    summary, _ = run_rank(loaded, bundle, RankConfig(photos="test", retain_people=0, holdout=False))
    forget = summary["groups"]["forget"] or {}
    metrics[IDENTITY_SPLIT] = {"image+text": {m: forget.get(m) for m in IDENTITY_METRICS}}
    return metrics


def previous_tune(out: Path, cfg: TuneConfig) -> dict | None:
    """The tuned.json an interrupted tune left in OUT, to continue from: None where there is none; ValueError
    (one line, naming what differs) where it was made with other settings (the worker count may change)."""
    path = out / "tuned.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}); start again with --overwrite") from None
    mine = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    # a setting added after that tune was written had its default there (`fixed`: none)
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(TuneConfig) if f.default is not MISSING or f.default_factory is not MISSING}
    theirs = {k: v for k, v in {**defaults, **(old.get("config") or {})}.items() if k != "workers"}
    differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"--resume: the tune in {out} was made with other settings ({', '.join(differ)}); "
                         f"give the same ones, or start again with --overwrite")
    return old


def run_tune(data: str | Path, cfg: TuneConfig, out: Path, tune_forget: list[str] | None = None,
             tune_retain: list[str] | None = None, progress: Callable[[str], None] | None = None,
             resume: bool = False, overwrite: bool = False) -> dict:
    """Tune every method of `cfg.methods`; writes OUT/tuned.json (atomically, after each method).
    `progress`: where each line goes (default: the `mmunlearn` logger, INFO). `resume`: continue the tune
    OUT holds (previous_tune): its finished methods are kept, not searched again. `overwrite`: OUT is emptied
    first, once the data has passed its checks (bad input leaves OUT as it was)."""
    from .models.loader import load_model

    progress = progress or logging.getLogger("mmunlearn").info
    rule = parse_rule(cfg.rule, allow_relative=True)
    train_bundle, score_bundle = tuning_bundles(data, tune_forget, tune_retain)
    score_bundle = scoring_sample(score_bundle, rule, cfg.eval_records, cfg.seed)
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cpu0 = _cpu_seconds()
    from .train.presets import REAL_SIZE_PARAMS, model_parameters

    model = load_model(cfg.model)
    ctx = TuneContext(str(data), cfg, out, rule, rule, train_bundle, score_bundle, model_parameters(model.model))
    ctx.budget = cfg.budget or default_budget(ctx)
    vanilla, _ = evaluate(model, score_bundle, ctx.eval_cfg)
    add_identity(vanilla["metrics"], model, score_bundle, rule)
    del model
    ctx.resolved = resolve_relative(rule, vanilla["metrics"])
    progress(f"vanilla on the tuning people: {json.dumps(summary_numbers(vanilla['metrics'], rule))}")
    questions = {split: len(recs) for split, recs in score_bundle.splits.items()}
    result: dict[str, Any] = {
        "format": TUNED_FORMAT, "config": asdict(cfg), "data": str(data), "rule": cfg.rule,
        "rule_resolved": str(ctx.resolved), "tune_forget": sorted(train_bundle.forget_ids),
        "tune_retain": sorted(score_bundle.retain_ids), "questions": questions,
        "vanilla": summary_numbers(vanilla["metrics"], rule), "methods": {}, "trials": [], "timing": {},
        "preset": "real" if ctx.parameters >= REAL_SIZE_PARAMS else "tiny",
        "budget": {"samples": ctx.budget, "chosen": "--budget" if cfg.budget else
                   "default: the mean of every method's default schedule (trained samples)",
                   "top_steps": {name: ctx.top_steps(name) for name in cfg.methods}}}
    old = previous_tune(out, cfg) if resume else None
    if old is not None:  # an interrupted tune continues: finished methods are kept
        result["methods"], result["trials"], result["timing"] = old["methods"], old["trials"], old["timing"]
        result["timing"].pop("total_s", None)
        result["timing"].pop("cpu_s", None)
        # the run's wall and CPU time cover only what it tuned: say which methods came from earlier runs
        result["timing"]["resumed"] = sorted(result["methods"])
    todo = [name for name in cfg.methods if name not in result["methods"]]
    for name in cfg.methods:
        if name in result["methods"]:
            progress(f"{name}: already tuned")

    def record(name: str, found: dict) -> None:
        result["trials"] += found["trials"]
        result["timing"][name] = found["seconds"]
        if found["best"] is not None:
            best = found["best"]
            result["methods"][name] = {
                "lr": best["lr"], "steps": best["steps"], "method_args": best["method_args"],
                "trained_samples": best["trained_samples"], "trial": best["number"], "objective": best["objective"],
                "feasible": best["feasible"], "numbers": best["numbers"], "why": found["why"]}
        atomic_write_json(out / "tuned.json", result)
        progress(f"{name}: trial {found['best']['number'] if found['best'] else '—'} chosen — {found['why']} "
                 f"({found['seconds']:.0f}s for {cfg.trials} trials)")

    if cfg.workers > 1 and len(todo) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # the slowest searches first, so no worker is left with one long method at the end
        todo.sort(key=_expected_cost, reverse=True)
        with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            futures = {pool.submit(tune_method, name, ctx): name for name in todo}
            for future in as_completed(futures):
                record(futures[future], future.result())
    else:
        for name in todo:
            record(name, tune_method(name, ctx, progress))
    result["timing"]["total_s"] = round(time.perf_counter() - t0, 1)
    result["timing"]["cpu_s"] = round(_cpu_seconds() - cpu0, 1)  # this process and its workers
    result["timing"]["workers"] = cfg.workers
    atomic_write_json(out / "tuned.json", result)
    return result


def _one_thread() -> None:
    """A worker: one torch thread (N workers on N cores), and no progress bars interleaving with the
    other workers' (each trial still prints its one line)."""
    os.environ["TQDM_DISABLE"] = "1"
    import torch

    torch.set_num_threads(1)


def _cpu_seconds() -> float:
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def _expected_cost(name: str) -> float:
    """A rough order for handing searches to workers: the seed methods' steps cost more (a teacher, several
    stages), and every method's trials now train on about the same samples."""
    from .methods.base import get_method

    cls = get_method(name)
    return float(cls().trained_samples(cls.default_steps, 1))


def tune_method(name: str, ctx: TuneContext, progress: Callable[[str], None] | None = None) -> dict:
    """One method's search: `ctx.cfg.trials` optuna trials, then the rule's choice among them."""
    import optuna

    from .methods.base import get_method
    from .models.loader import load_model
    from .train.loop import NonFiniteLossError
    from .train.unlearn import UnlearnConfig, unlearn

    cfg, out = ctx.cfg, ctx.out
    progress = progress or logging.getLogger("mmunlearn").info
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = ctx.space(name)
    trials: list[dict] = []
    started = time.perf_counter()

    def objective(trial):
        params = suggest(trial, space)
        lr, steps = params.pop("lr", None), params.pop("steps", None)
        params = {**cfg.fixed, **params}
        run = out / "trials" / name / f"trial{trial.number}"
        method = get_method(name)
        row = {"method": name, "number": trial.number, "lr": lr, "steps": steps, "method_args": params,
               "trained_samples": method(method.make_config(params)).trained_samples(steps, cfg.batch_size),
               "state": "complete", "objective": None, "feasible": False, "margin": None, "pid": os.getpid()}
        t = time.perf_counter()
        try:
            res = unlearn(ctx.train_bundle, UnlearnConfig(method=name, model=cfg.model, steps=steps, lr=lr,
                                                          batch_size=cfg.batch_size, seed=cfg.seed,
                                                          method_args=params), run, loaded=load_model(cfg.model))
            summary, _ = evaluate(res.loaded, ctx.score_bundle, ctx.eval_cfg)
            add_identity(summary["metrics"], res.loaded, ctx.score_bundle, ctx.rule)
        except NonFiniteLossError as exc:
            row.update(state="pruned", why=str(exc), wall_time_s=round(time.perf_counter() - t, 1))
            trials.append(row)
            raise optuna.TrialPruned(str(exc)) from None
        finally:
            for f in run.glob("*.safetensors"):
                f.unlink()
        metrics = summary["metrics"]
        value = objective_value(ctx.resolved, metrics)
        margins = [c.margin(metrics) for c in ctx.resolved.constraints]
        row.update(objective=value, feasible=all(m == 0 for m in margins), margin=round(sum(margins), 6),
                   numbers=summary_numbers(metrics, ctx.rule), wall_time_s=round(time.perf_counter() - t, 1))
        trials.append(row)
        for c, margin in zip(ctx.resolved.constraints, margins):  # ≤ 0: met (TPE samples near feasible trials)
            trial.set_constraint(str(c), margin)
        progress(f"{name} trial {trial.number}: objective {value if value is None else round(value, 3)} "
                 f"{'feasible' if row['feasible'] else 'infeasible'} ({row['wall_time_s']}s)")
        return math.inf if value is None else value

    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=min(6, cfg.trials))
    study = optuna.create_study(direction="minimize", sampler=sampler)
    study.optimize(objective, n_trials=cfg.trials, catch=())
    best, why = choose_trial(trials)
    return {"trials": trials, "best": best, "why": why, "seconds": round(time.perf_counter() - started, 1)}


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
