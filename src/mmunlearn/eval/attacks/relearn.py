"""Relearning attack (SPEC section 5): does a little fine-tuning bring the forgotten people back?

Protocol
--------
1. Split the forget people's QA into an *attack pool* and a *probe set* with no record in common
   (`attack_split`):

   - mode ``phrasing`` (default): the probe is the forget split's evaluation-phrasing
     classification records (other question templates than training, the canonical photo, options
     reshuffled and balanced over A-D); the pool is the forget people's training-phrasing QA
     (`bundle.train("forget")`: generation, classification and cloze, both modalities) minus the
     `visible:*` understanding questions, which are not knowledge to forget. Pool records whose
     question (same person, same modality) equals a probe question are dropped, so the attacker
     never sees a probe question; `check_disjoint` enforces id and question disjointness. The
     attack may teach the probed facts in other words — that is what an attacker holding part of
     the forget data does; `--floor-model` measures how much of the "recovery" that alone explains.
   - mode ``facts``: (person, fact) pairs are split in two halves; the probe asks one half, the pool
     holds training QA of the other half only, so any recovery is latent knowledge coming back.

2. Shuffle the pool once (seeded) and take nested prefixes: r % of it for each ratio r (at least
   one record), so a larger ratio always contains the smaller ones.
3. For each r: a fresh copy of the model is fine-tuned on that subset for a *fixed* budget (same
   steps, lr, batch size and scope for every r — smaller subsets are simply repeated more) with the
   shared training loop (`train.loop.run_loop`) and answer-only NLL (`TrainCollator`, options
   reshuffled on the fly).
4. Probe accuracy before and after: log-likelihood-ranked classification accuracy
   (`engine.option_logprobs` + `metrics.loglik_choice`; chance 0.25), and the generated-letter
   accuracy beside it. recovery(r) = after(r) − before; AG = mean recovery over the ratios.
5. With a floor model (a retain-only model that never saw the forget people), the same subsets and
   budget are applied to it: floor_after(r) is what the attack data alone teaches; a model whose
   after(r) clearly exceeds floor_after(r) still held the knowledge somewhere.
"""

from __future__ import annotations

import copy
import gc
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import torch

from ...data.collate import TrainCollator
from ...data.errors import DataError
from ...data.record import OPTION_LETTERS, Record
from ...data.store import DataBundle
from ...methods.losses import answer_nll
from ...models.forward import AnswerLogits, StepModule
from ...models.loader import LoadedModel, load_model
from ...train.loop import LoopConfig, make_accelerator, run_loop, seed_everything
from ...train.sampling import RecordSampler
from ...train.scope import SCOPES, LoraSettings, apply_scope, trainable_count
from .. import metrics as M
from ..engine import generate, option_logprobs

DEFAULT_RATIOS = (5.0, 10.0, 25.0, 50.0)
SPLIT_MODES = ("phrasing", "facts")
CHANCE = 0.25

ModelSource = Union[LoadedModel, str, Path]


@dataclass
class RelearnConfig:
    ratios: tuple[float, ...] = DEFAULT_RATIOS  # percent of the attack pool
    steps: int = 30
    lr: float = 5e-4
    batch_size: int = 8
    scope: str = "full"  # full | language | vision | lora (train.scope)
    lora_r: int = 8
    lora_alpha: int = 16
    split: str = "phrasing"  # phrasing | facts
    seed: int = 0
    generate: bool = True  # also the generated-letter accuracy (cheap: 12 new tokens per probe)
    eval_batch_size: int = 64
    progress: bool = False

    def validate(self) -> "RelearnConfig":
        if not self.ratios:
            raise ValueError("--ratios: give at least one percentage")
        bad = [r for r in self.ratios if not 0 < float(r) <= 100]
        if bad:
            raise ValueError(f"--ratios must be percentages in (0, 100], got {', '.join(map(str, bad))}")
        if self.steps < 1:
            raise ValueError(f"--steps must be at least 1 (got {self.steps})")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive (got {self.lr})")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if self.scope not in SCOPES:
            raise ValueError(f"--scope must be one of {', '.join(SCOPES)} (got {self.scope!r})")
        if self.split not in SPLIT_MODES:
            raise ValueError(f"--split must be one of {', '.join(SPLIT_MODES)} (got {self.split!r})")
        return self


@dataclass
class AttackSplit:
    pool: list[Record]  # shuffled (seeded); subset(r) = its first r %
    probe: list[Record]
    mode: str
    dropped: int = 0  # pool records removed because they repeated a probe question
    heldout_facts: list[tuple[str, str]] = field(default_factory=list)  # mode "facts"

    def subset(self, ratio: float) -> list[Record]:
        n = max(1, min(len(self.pool), int(math.ceil(len(self.pool) * float(ratio) / 100.0 - 1e-9))))
        return self.pool[:n]


def _norm(text: str) -> str:
    return " ".join(text.split()).casefold()


def _question_key(r: Record) -> tuple[str, str, str]:
    return (r.profile_id, r.modality, _norm(r.question))


def check_disjoint(pool: Sequence[Record], probe: Sequence[Record]) -> None:
    """The attack data must not contain a probe record: no shared id, no shared question."""
    ids = {r.id for r in pool} & {r.id for r in probe}
    if ids:
        raise ValueError(f"relearn: attack pool and probe share {len(ids)} record id(s), e.g. {sorted(ids)[0]}")
    qs = {_question_key(r) for r in pool} & {_question_key(r) for r in probe}
    if qs:
        raise ValueError(f"relearn: attack pool and probe share {len(qs)} question(s), e.g. {sorted(qs)[0][2]!r}")


def attack_split(bundle: DataBundle, mode: str = "phrasing", seed: int = 0) -> AttackSplit:
    """Deterministic attack pool / probe split of the forget people's QA (see the module docstring)."""
    if mode not in SPLIT_MODES:
        raise ValueError(f"unknown relearn split mode {mode!r}; choose one of {', '.join(SPLIT_MODES)}")
    probe = [r for r in bundle.eval("forget") if r.task == "classification" and r.profile_id in bundle.forget_ids]
    pool = [r for r in bundle.train("forget") if r.profile_id in bundle.forget_ids
            and not r.is_visible_fact]
    if not probe:
        raise DataError(f"{bundle.root}: split {bundle.forget_split!r} has no evaluation classification records "
                        "to probe the relearning attack with")
    if not pool:
        raise DataError(f"{bundle.root}: split {bundle.forget_split!r} has no training-phrasing QA about the "
                        "forget people to relearn from")
    heldout: list[tuple[str, str]] = []
    if mode == "facts":
        keys = sorted({(r.profile_id, r.fact) for r in probe})
        if len(keys) < 2:
            raise DataError("relearn --split facts needs at least two (person, fact) pairs to split")
        random.Random(f"relearn-facts-{seed}").shuffle(keys)
        heldout = sorted(keys[: len(keys) // 2])
        held = set(heldout)
        probe = [r for r in probe if (r.profile_id, r.fact) in held]
        pool = [r for r in pool if (r.profile_id, r.fact) not in held]
    probe_q = {_question_key(r) for r in probe}
    probe_ids = {r.id for r in probe}
    kept = [r for r in pool if _question_key(r) not in probe_q and r.id not in probe_ids]
    dropped = len(pool) - len(kept)
    if not kept:
        raise DataError(f"{bundle.root}: every forget training question repeats a probe question; "
                        "nothing is left to relearn from")
    kept.sort(key=lambda r: r.id)
    random.Random(f"relearn-pool-{seed}").shuffle(kept)
    check_disjoint(kept, probe)
    return AttackSplit(kept, sorted(probe, key=lambda r: r.id), mode, dropped, heldout)


# --------------------------------------------------------------------------------------------
# Scoring and training
# --------------------------------------------------------------------------------------------


def score_probe(loaded: LoadedModel, probe: Sequence[Record], cfg: RelearnConfig) -> tuple[dict, list[dict]]:
    """Probe accuracy (log-likelihood ranked, plus generated letter) and per-record rows."""
    replies = (generate(loaded, probe, max_new_tokens=16, batch_size=cfg.eval_batch_size, desc="probe",
                        progress=cfg.progress) if cfg.generate else [None] * len(probe))
    lps = option_logprobs(loaded, probe, batch_size=cfg.eval_batch_size, progress=cfg.progress,
                          replies=replies if cfg.generate else None)
    picks = [M.loglik_choice(lp) for lp in lps]
    rows = []
    for r, pick, reply in zip(probe, picks, replies):
        row = {"id": r.id, "profile_id": r.profile_id, "modality": r.modality, "fact": r.fact,
               "correct_loglik": float(pick == r.answer_index)}
        if reply is not None:
            row["generated"] = reply
            row["correct_generated"] = float(M.chosen_option(reply, r.options, OPTION_LETTERS) == r.answer_letter)
        rows.append(row)
    return _accuracy(rows), rows


def _accuracy(rows: Sequence[dict]) -> dict:
    def mean(key: str, sub: Sequence[dict]) -> float | None:
        vals = [d[key] for d in sub if key in d]
        return sum(vals) / len(vals) if vals else None

    out = {"cls_acc_loglik": mean("correct_loglik", rows), "cls_acc": mean("correct_generated", rows), "n": len(rows)}
    mods = sorted({d["modality"] for d in rows})
    if len(mods) > 1:
        out["by_modality"] = {m: {"cls_acc_loglik": mean("correct_loglik", [d for d in rows if d["modality"] == m]),
                                  "n": sum(d["modality"] == m for d in rows)} for m in mods}
    return out


def _fresh(source: ModelSource) -> LoadedModel:
    """A copy the attack may change: a deep copy of a loaded model, or a new load of a folder."""
    if isinstance(source, LoadedModel):
        return LoadedModel(copy.deepcopy(source.model), source.processor, source.adapter)
    return load_model(source)


def _as_loaded(source: ModelSource) -> LoadedModel:
    return source if isinstance(source, LoadedModel) else load_model(source)


def relearn_once(source: ModelSource, records: Sequence[Record], cfg: RelearnConfig) -> tuple[LoadedModel, dict]:
    """Fine-tune a fresh copy of `source` on `records` for the fixed budget; returns it and a log."""
    loaded = _fresh(source)
    seed_everything(cfg.seed)
    accelerator = make_accelerator()
    model = apply_scope(loaded.model, loaded.adapter, cfg.scope, LoraSettings(cfg.lora_r, cfg.lora_alpha))
    n_train, _ = trainable_count(model)
    model.to(accelerator.device)
    sampler = RecordSampler(list(records), cfg.batch_size, cfg.seed, accelerator.process_index,
                            accelerator.num_processes)
    collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True, seed=cfg.seed)
    device = accelerator.device
    shard = (accelerator.process_index, accelerator.num_processes)

    def step_loss(step: int, prepared: torch.nn.Module) -> dict[str, torch.Tensor]:
        batch = {k: v.to(device) for k, v in collate(sampler.next(), shard=shard).items()}
        return {"loss": answer_nll(*prepared({"qa": AnswerLogits(batch)})["qa"])}

    result = run_loop(StepModule(model, loaded.adapter, loaded.processor), step_loss,
                      LoopConfig(steps=cfg.steps, lr=cfg.lr, seed=cfg.seed, desc="relearn",
                                 log_every=max(1, cfg.steps // 5)), accelerator=accelerator)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    loaded.model = model
    losses = [row["loss"] for row in result.log]
    return loaded, {"wall_time_s": round(result.wall_time_s, 2), "trainable_params": n_train,
                    "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def _release(loaded: LoadedModel | None) -> None:
    if loaded is not None:
        loaded.model = None  # type: ignore[assignment]
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _ratio_key(r: float) -> str:
    return f"{float(r):g}"


def relearn_attack(model: ModelSource, bundle: DataBundle, cfg: RelearnConfig | None = None,
                   floor: ModelSource | None = None,
                   on_ratio: Callable[[str, float, dict], None] | None = None) -> tuple[dict, list[dict]]:
    """Run the attack on `model` (and on `floor` with the same budget) → (summary, details).

    `model`/`floor` may be a loaded model (copied for every ratio, never changed) or a model folder
    (re-loaded for every ratio). `on_ratio(who, ratio, result)` is called after each fine-tune.
    """
    cfg = (cfg or RelearnConfig()).validate()
    t0 = time.perf_counter()
    split = attack_split(bundle, cfg.split, cfg.seed)
    ratios = sorted({float(r) for r in cfg.ratios})
    details: list[dict] = []
    targets: dict[str, ModelSource] = {"target": model}
    if floor is not None:
        targets["floor"] = floor
    results: dict[str, dict] = {}
    for who, source in targets.items():
        base = _as_loaded(source)
        before, rows = score_probe(base, split.probe, cfg)
        details.extend({"model": who, "stage": "before", "ratio": None, **row} for row in rows)
        if base is not source:  # a folder: free it now, every ratio loads its own fresh copy
            _release(base)
        runs = []
        for ratio in ratios:
            subset = split.subset(ratio)
            tuned, log = relearn_once(source, subset, cfg)
            after, rows = score_probe(tuned, split.probe, cfg)
            _release(tuned)
            details.extend({"model": who, "stage": "after", "ratio": ratio, **row} for row in rows)
            run = {"ratio": ratio, "n_records": len(subset), "after": after,
                   "recovery": after["cls_acc_loglik"] - before["cls_acc_loglik"],
                   "recovery_cls_acc": (after["cls_acc"] - before["cls_acc"]
                                        if after["cls_acc"] is not None and before["cls_acc"] is not None else None),
                   **log}
            runs.append(run)
            if on_ratio is not None:
                on_ratio(who, ratio, run)
        results[who] = {"before": before, "runs": runs}
    target = results["target"]
    recovery = {_ratio_key(run["ratio"]): run["recovery"] for run in target["runs"]}
    summary = {
        "attack": "relearn",
        "chance": CHANCE,
        "forget_split": bundle.forget_split,
        "AG": sum(recovery.values()) / len(recovery),
        "recovery": recovery,
        "before": target["before"]["cls_acc_loglik"],
        "after": {_ratio_key(run["ratio"]): run["after"]["cls_acc_loglik"] for run in target["runs"]},
        "AG_cls_acc": (sum(run["recovery_cls_acc"] for run in target["runs"]) / len(target["runs"])
                       if all(run["recovery_cls_acc"] is not None for run in target["runs"]) else None),
        "target": target,
        "floor": None,
        "split": {"mode": split.mode, "pool_records": len(split.pool), "probe_records": len(split.probe),
                  "people": len({r.profile_id for r in split.probe}), "pool_dropped_as_probe_repeats": split.dropped,
                  "heldout_facts": [list(k) for k in split.heldout_facts], "overlap": 0,
                  "probe": "forget eval-phrasing classification records" + (
                      " of the held-out (person, fact) pairs" if split.mode == "facts" else ""),
                  "pool": "forget training-phrasing QA (understanding questions excluded)" + (
                      " of the other (person, fact) pairs" if split.mode == "facts" else ""),
                  "subsets": "nested prefixes of the seeded pool shuffle, ceil(r% x pool), at least 1"},
        "budget": {"steps": cfg.steps, "lr": cfg.lr, "batch_size": cfg.batch_size, "scope": cfg.scope,
                   "schedule": "constant", "grad_clip": 1.0, "optimizer": "AdamW", "loss": "answer-only NLL",
                   "seed": cfg.seed, **({"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha}
                                        if cfg.scope == "lora" else {})},
        "config": {**asdict(cfg), "ratios": ratios, "data": str(bundle.root), "source": bundle.source},
    }
    if "floor" in results:
        fl = results["floor"]
        floor_after = {_ratio_key(run["ratio"]): run["after"]["cls_acc_loglik"] for run in fl["runs"]}
        summary["floor"] = {
            "before": fl["before"]["cls_acc_loglik"],
            "after": floor_after,
            "gap_over_floor": {k: summary["after"][k] - floor_after[k] for k in floor_after},
            "runs": fl["runs"],
        }
    summary["timing"] = {"total_s": round(time.perf_counter() - t0, 2)}
    return summary, details
