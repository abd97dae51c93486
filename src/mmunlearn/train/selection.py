"""Which evaluated step to keep: the small rule language of `unlearn --select-by`.

A rule is an objective, then optional constraints, comma-separated:

    min:forget/image+text/cls_acc,retain/image+text/cls_acc>=0.9
    max:retain/text/cls_acc
    last,retain/image+text/cls_acc>=0.8        (the latest evaluation meeting the constraints)

An objective may average several keys joined by `&` (min:test/image+text/cls_acc&test/text/cls_acc). In
`mmunlearn tune` a constraint's number may end in `x`: a multiple of the vanilla model's value
(retain/image+text/cls_acc>=0.95x), resolved before any trial (`resolve_relative`), and the rule may read the
identity ranking of the forget people's unseen photos (`identity/image+text/top5`, `top1`, `mrr`,
`median_rank`: the rank attack's numbers, computed for each trial only when the rule reads them).

Keys are `split/modality/metric` paths into the evaluator's summary["metrics"] (eval/evaluator.py), so
the numbers the rule reads are the numbers `mmunlearn eval` reports. Ties go to the earliest step (the
least-changed model). When no evaluation meets the constraints the last step is kept, and the log says so.
Parsing happens before training, so a typo costs one error line, not a run.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..data.record import MODALITIES
from ..eval.evaluator import METRIC_KEYS, POPULATION_SPLITS, SPLITS, base_split

# summary["metrics"] also has the understanding splits by population (evaluator.evaluate)
RULE_SPLITS = SPLITS + tuple(f"{s}_{pop}" for s in POPULATION_SPLITS for pop in ("forget", "retain"))
# forget_quality needs a retain-only model's summary, which a training run does not have; the truth-ratio
# scores are aggregate()'s, beside the median
RULE_METRICS = tuple(sorted(set(METRIC_KEYS.values()) | {"truth_ratio_forget_score", "truth_ratio_retain_score"})) \
    + ("n",)
# `mmunlearn tune` only: the rank attack's numbers on the forget people's unseen photos (issue #32: identity in
# the objective the search sees), under the pseudo-split "identity"
IDENTITY_SPLIT = "identity"
IDENTITY_METRICS = ("top1", "top5", "mrr", "median_rank")
OBJECTIVES = ("min", "max", "last")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_CONSTRAINT = re.compile(r"^\s*([^<>=\s]+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)(x?)\s*$")


class RuleError(ValueError):
    """A malformed rule or an unknown key (the CLI turns it into one `error:` line, exit 2)."""


@dataclass(frozen=True)
class Constraint:
    key: str
    op: str
    value: float
    relative: bool = False  # value × the vanilla model's number (tune only, `resolve_relative`)

    def holds(self, metrics: dict) -> bool:
        if self.relative:
            raise RuleError(f"{self} is relative to the vanilla model: resolve it first (resolve_relative)")
        v = lookup(metrics, self.key)
        return v is not None and _OPS[self.op](v, self.value)

    def margin(self, metrics: dict) -> float:
        """How far the constraint is from holding (0 when it holds; 1 when the number is missing)."""
        v = lookup(metrics, self.key)
        if v is None:
            return 1.0
        return 0.0 if self.holds(metrics) else abs(v - self.value)

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value:g}{'x' if self.relative else ''}"


@dataclass(frozen=True)
class Rule:
    objective: str  # min | max | last
    key: str | None  # None for "last"
    constraints: tuple[Constraint, ...] = ()

    @property
    def objective_keys(self) -> tuple[str, ...]:
        return tuple(self.key.split("&")) if self.key else ()

    @property
    def keys(self) -> tuple[str, ...]:
        return (*self.objective_keys, *(c.key for c in self.constraints))

    @property
    def identity_keys(self) -> tuple[str, ...]:
        """The keys that read the identity ranking (tune ranks each trial only when there are any)."""
        return tuple(dict.fromkeys(k for k in self.keys if k.split("/", 1)[0] == IDENTITY_SPLIT))

    @property
    def splits(self) -> tuple[str, ...]:
        """Evaluator splits the rule reads (understanding_* come from the understanding split)."""
        out: list[str] = []
        for k in self.keys:
            split = base_split(k.split("/", 1)[0])
            split = "test" if split == IDENTITY_SPLIT else split  # ranked on the forget people's unseen photos
            if split not in out:
                out.append(split)
        return tuple(out)

    def __str__(self) -> str:
        head = self.objective if self.key is None else f"{self.objective}:{self.key}"
        return ",".join([head, *(str(c) for c in self.constraints)])


def check_key(key: str, allow_identity: bool = False) -> str:
    """A `split/modality/metric` key with known parts (the modality may itself contain no '/');
    `identity/image+text/METRIC` where `allow_identity` (tune)."""
    parts = key.strip().split("/")
    if len(parts) != 3 or not all(parts):
        raise RuleError(f"--select-by: {key!r} is not a split/modality/metric key "
                        "(e.g. retain/image+text/cls_acc)")
    split, modality, metric = parts
    if split == IDENTITY_SPLIT:
        if not allow_identity:
            raise RuleError(f"--select-by: {key!r} reads the identity ranking, which only `mmunlearn tune` "
                            "computes for its trials")
        if modality != "image+text" or metric not in IDENTITY_METRICS:
            raise RuleError(f"--select-by: {key!r}: identity keys are identity/image+text/METRIC with METRIC "
                            f"one of {', '.join(IDENTITY_METRICS)}")
        return "/".join(parts)
    if split not in RULE_SPLITS:
        raise RuleError(f"--select-by: unknown split {split!r} in {key!r}; splits: {', '.join(RULE_SPLITS)}")
    if modality not in MODALITIES:
        raise RuleError(f"--select-by: unknown modality {modality!r} in {key!r}; modalities: {', '.join(MODALITIES)}")
    if metric not in RULE_METRICS:
        raise RuleError(f"--select-by: unknown metric {metric!r} in {key!r}; metrics: {', '.join(RULE_METRICS)}")
    return "/".join(parts)


def parse_rule(text: str, allow_relative: bool = False) -> Rule:
    """`OBJECTIVE[,CONSTRAINT...]` → Rule; RuleError (a ValueError) says what is wrong. Relative
    constraints (`>=0.95x`) and identity keys only where a vanilla model's numbers exist and trials are
    ranked (`allow_relative`: tune)."""
    items = [part.strip() for part in (text or "").split(",")]
    if not text or not text.strip() or any(not part for part in items):
        raise RuleError(f"--select-by: empty rule or empty item in {text!r}; expected e.g. "
                        "min:forget/image+text/cls_acc,retain/image+text/cls_acc>=0.9")
    head, rest = items[0], items[1:]
    if head == "last":
        objective, key = "last", None
    else:
        objective, sep, key = head.partition(":")
        if not sep or objective not in ("min", "max"):
            raise RuleError(f"--select-by: the rule must start with min:KEY, max:KEY or last (got {head!r})")
        key = "&".join(check_key(k, allow_relative) for k in key.split("&"))
    constraints = []
    for item in rest:
        m = _CONSTRAINT.match(item)
        if not m:
            raise RuleError(f"--select-by: {item!r} is not a constraint KEY>=NUMBER (operators >=, <=, >, <)")
        try:
            value = float(m.group(3))
        except ValueError:
            raise RuleError(f"--select-by: {m.group(3)!r} in {item!r} is not a number") from None
        if not math.isfinite(value):
            raise RuleError(f"--select-by: {item!r} needs a finite number")
        if m.group(4) and not allow_relative:
            raise RuleError(f"--select-by: {item!r} is relative to the vanilla model (the x suffix), which only "
                            "`mmunlearn tune` measures; give an absolute number")
        constraints.append(Constraint(check_key(m.group(1), allow_relative), m.group(2), value,
                                      relative=bool(m.group(4))))
    return Rule(objective, key, tuple(constraints))


def resolve_relative(rule: Rule, vanilla: dict) -> Rule:
    """The rule with every `x` constraint turned into an absolute number from the vanilla metrics."""
    out = []
    for c in rule.constraints:
        if c.relative:
            base = lookup(vanilla, c.key)
            if base is None:
                raise RuleError(f"{c}: the vanilla model has no {c.key} on these records")
            c = Constraint(c.key, c.op, round(c.value * base, 6))
        out.append(c)
    return Rule(rule.objective, rule.key, tuple(out))


def objective_value(rule: Rule, metrics: dict) -> float | None:
    """The objective: one key's number, or the mean of `&`-joined keys (None if one is missing)."""
    values = [lookup(metrics, k) for k in rule.objective_keys]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def lookup(metrics: dict, key: str) -> float | None:
    """`summary["metrics"][split][modality][metric]`, or None where the evaluator has no such number."""
    split, modality, metric = key.split("/")
    value = metrics.get(split, {}).get(modality, {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and not math.isnan(value) else None


def choose(rule: Rule | None, evaluations: Sequence[dict]) -> tuple[int, str]:
    """Index into `evaluations` (each {"step", "metrics"}) of the one to keep, and why.

    Incremental by construction: the choice over a prefix is the best of that prefix, so an engine that
    snapshots the model whenever the newest evaluation becomes the choice holds the final choice."""
    if not evaluations:
        raise ValueError("no evaluations to choose from")
    last = len(evaluations) - 1
    if rule is None:
        return last, "no --select-by: the last step is kept"
    feasible = [i for i, e in enumerate(evaluations) if all(c.holds(e["metrics"]) for c in rule.constraints)]
    if rule.key is not None:
        feasible = [i for i in feasible if objective_value(rule, evaluations[i]["metrics"]) is not None]
    if not feasible:
        return last, f"no evaluation met {rule}: the last step is kept"
    if rule.objective == "last":
        best = feasible[-1]
    else:
        sign = 1.0 if rule.objective == "min" else -1.0
        best = min(feasible, key=lambda i: (sign * objective_value(rule, evaluations[i]["metrics"]), i))
    return best, f"{rule} prefers step {evaluations[best]['step']}"


def missing_keys(rule: Rule, metrics: dict) -> list[str]:
    """Rule keys the evaluator did not report (a modality or task the data lacks)."""
    return [k for k in rule.keys if lookup(metrics, k) is None]


# Which task's records each metric needs (a rule key the subsample cannot produce fails before training).
METRIC_TASKS = {"cls_acc": {"classification"}, "cls_acc_loglik": {"classification"}, "cloze_acc": {"cloze"},
                "prob_options": {"classification"},
                "rougeL_f1": {"generation"}, "rougeL_recall": {"generation"}, "prob": {"generation"},
                "truth_ratio": {"generation"}, "truth_ratio_forget_score": {"generation"},
                "truth_ratio_retain_score": {"generation"}, "degenerate_rate": {"cloze", "generation"},
                "refusal_rate": {"cloze", "generation"}}


def check_eval_splits(splits: Sequence[str]) -> list[str]:
    """--eval-splits as a list without repeats; RuleError for a split the evaluator does not have."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise RuleError(f"--eval-splits: unknown split(s) {', '.join(unknown)}; splits: {', '.join(SPLITS)}")
    if not splits:
        raise RuleError("--eval-splits: no split given")
    return list(dict.fromkeys(splits))


def check_rule_data(rule: Rule | None, bundle, records: int, seed: int = 0) -> None:
    """Every rule key must be measurable on the records that will be evaluated (the same seeded
    subsample as during training): RuleError before training otherwise."""
    from ..eval.evaluator import EvalConfig, split_records

    if rule is None:
        return
    cfg = EvalConfig(max_records_per_split=records, seed=seed)
    for key in rule.keys:
        split, modality, metric = key.split("/")
        base = base_split(split)
        recs = [r for r in split_records(bundle, base, cfg) if r.modality == modality]
        if split != base:
            ids = bundle.forget_ids if split.endswith("forget") else bundle.retain_ids
            recs = [r for r in recs if r.profile_id in ids]
        tasks = METRIC_TASKS.get(metric)
        if not recs or (tasks and not any(r.task in tasks for r in recs)):
            raise RuleError(f"--select-by: {key} cannot be measured: the evaluated {split} records "
                            f"(--eval-records {records or 'all'}) have no {modality} "
                            + (f"{'/'.join(sorted(tasks))} questions" if tasks else "questions"))


class PeriodicEval:
    """`--eval-every N [--select-by RULE]`: evaluate a fixed subsample every N steps (and after the last),
    keep the trainable weights of the evaluation the rule prefers, put them back at the end.

    The kept weights are an in-memory CPU copy of the trainable parameters, made only when a new
    evaluation becomes the choice: cheap for tiny models and LoRA; for a full-scope run of a large model
    this should become a checkpoint on disk. One process only (the engine refuses more): the copy and the
    restore assume unsharded parameters.
    """

    def __init__(self, bundle, loaded, every: int, records: int, splits: Sequence[str], rule: Rule | None,
                 steps: int, seed: int = 0, accelerator=None, batch_size: int = 64):
        from ..eval.evaluator import EvalConfig

        if every < 1:
            raise ValueError(f"--eval-every must be at least 1 (got {every})")
        if records < 0:
            raise ValueError(f"--eval-records must be 0 (all) or more (got {records})")
        wanted = check_eval_splits([*splits, *(rule.splits if rule else ())])
        self.bundle, self.loaded, self.every, self.rule, self.steps = bundle, loaded, every, rule, steps
        self.accelerator = accelerator
        self.cfg = EvalConfig(splits=tuple(wanted), batch_size=batch_size, max_records_per_split=records, seed=seed,
                              progress=False)
        self.evaluations: list[dict] = []
        self.kept: dict | None = None  # {"step": k, "state": {name: cpu tensor}}
        check_rule_data(rule, bundle, records, seed)

    def __call__(self, model, done: int) -> bool:
        """After optimiser step `done`: evaluate when due; True when the model was evaluated."""
        if done % self.every and done != self.steps:
            return False
        import dataclasses
        import time

        from ..eval.evaluator import evaluate
        from .loop import _rng_snapshot, _set_rng

        rng = _rng_snapshot(None)  # evaluation must not change what training draws next
        t = time.perf_counter()
        summary, _ = evaluate(dataclasses.replace(self.loaded, model=model), self.bundle, self.cfg)
        _set_rng(rng, None)
        step = done
        entry = {"step": step, "metrics": summary["metrics"], "time_s": round(time.perf_counter() - t, 2)}
        if self.rule is not None and not self.evaluations:
            missing = missing_keys(self.rule, summary["metrics"])
            if missing:
                raise RuleError(f"--select-by: the evaluation reports no {', '.join(missing)}")
        self.evaluations.append(entry)
        chosen, _ = choose(self.rule, self.evaluations)
        if self.rule is not None and chosen == len(self.evaluations) - 1 and done != self.steps:
            self.kept = {"step": step, "state": _trainable_state(model)}
        if self.accelerator is not None:
            flat = {f"eval/{split}/{mod}/{metric}": value for split, mods in summary["metrics"].items()
                    for mod, values in mods.items() for metric, value in values.items()
                    if isinstance(value, (int, float)) and metric != "n"}
            self.accelerator.log(flat, step=step)
        return True

    def finish(self, model) -> dict:
        """Put the chosen evaluation's weights back into `model`; the run log's "selection" entry."""
        if not self.evaluations:
            return {"eval_every": self.every, "kept_step": None, "reason": "no evaluation ran"}
        chosen, reason = choose(self.rule, self.evaluations)
        step = self.evaluations[chosen]["step"]
        if chosen != len(self.evaluations) - 1:
            assert self.kept is not None and self.kept["step"] == step, "kept weights out of step with the choice"
            _load_trainable_state(model, self.kept["state"])
        self.kept = None
        return {"rule": str(self.rule) if self.rule else None, "eval_every": self.every,
                "eval_records": self.cfg.max_records_per_split, "eval_splits": list(self.cfg.splits),
                "kept_step": step, "last_step": self.evaluations[-1]["step"],
                "met_rule": None if self.rule is None else not reason.startswith("no evaluation met"),
                "reason": reason}


def _trainable_state(model) -> dict:
    import torch

    with torch.no_grad():
        return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable_state(model, state: dict) -> None:
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))
