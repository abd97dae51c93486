"""The evaluator: one pass of model calls per split, every metric fed from it.

Output shape (SPEC section 5): `{"metrics": {SPLIT: {MODALITY: {METRIC: value}}}, "config": {...},
"timing": {...}}`. A metric that does not apply to a split is absent, never 0.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..data.record import OPTION_LETTERS, Record
from ..data.store import DataBundle, atomic_write_json, atomic_write_text
from ..models.loader import LoadedModel
from . import metrics as M
from .engine import answer_logprobs, generate, option_token_logprobs

SPLITS = ("forget", "test", "retain", "real", "understanding", "understanding_unseen")
# splits also scored per population, as "<split>_forget" / "<split>_retain" (benign forgetting: what
# is visible must stay answerable for forgotten and kept people alike; _unseen: on a never-trained photo)
POPULATION_SPLITS = ("understanding", "understanding_unseen")


def base_split(name: str) -> str:
    """The evaluated split behind a metrics key's split: understanding_unseen_forget → understanding_unseen."""
    for suffix in ("_forget", "_retain"):
        if name.endswith(suffix) and name[: -len(suffix)] in POPULATION_SPLITS:
            return name[: -len(suffix)]
    return name


MAX_NEW_TOKENS = {"classification": 16, "cloze": 14, "generation": 32}


@dataclass
class EvalConfig:
    splits: tuple[str, ...] = SPLITS
    batch_size: int = 64
    max_new_tokens_generation: int = 32
    reference_summary: str | None = None  # summary.json of a retain-only model: enables forget_quality
    max_records_per_split: int = 0  # 0: all; otherwise a seeded subsample (retain is large)
    # how the perturbed answers' probabilities are averaged in the truth ratio: "geometric" as the
    # TOFU / CLEAR / open-unlearning code (comparable with their numbers), "arithmetic" as the TOFU paper
    truth_ratio_mean: str = "geometric"
    seed: int = 0
    progress: bool = True


def split_records(bundle: DataBundle, split: str, cfg: EvalConfig) -> list[Record]:
    """Evaluation records of a split. `test` keeps only forget people (does forgetting generalise)."""
    if split == "test":
        recs = [r for r in bundle.eval("test") if r.profile_id in bundle.forget_ids]
    else:
        recs = bundle.eval(split)
    if cfg.max_records_per_split and len(recs) > cfg.max_records_per_split:
        import random

        rng = random.Random(f"{cfg.seed}-{split}")
        recs = sorted(rng.sample(recs, cfg.max_records_per_split), key=lambda r: r.id)
    return recs


def score_records(loaded: LoadedModel, records: Sequence[Record], cfg: EvalConfig, desc: str) -> list[dict]:
    """Per-record details: generated text and every per-sample score that applies."""
    details: list[dict] = [
        {"id": r.id, "profile_id": r.profile_id, "task": r.task, "modality": r.modality, "fact": r.fact,
         "question": r.question, "reference": r.answer_letter + (". " if r.answer_letter else "") + r.answer,
         "scores": {}}
        for r in records
    ]
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_task[r.task].append(i)
    for task, idx in by_task.items():
        max_new = cfg.max_new_tokens_generation if task == "generation" else MAX_NEW_TOKENS[task]
        subset = [records[i] for i in idx]
        replies = generate(loaded, subset, max_new_tokens=max_new, batch_size=cfg.batch_size,
                           desc=f"{desc}/{task}", progress=cfg.progress)
        for i, reply in zip(idx, replies):
            d, r = details[i], records[i]
            d["generated"] = reply
            s = d["scores"]
            if task == "classification":
                letter = M.chosen_option(reply, r.options, OPTION_LETTERS)
                s["cls_acc"] = float(letter == r.answer_letter)
                s["cls_acc_strict"] = float(M.mllmu_strict_option(reply, r.options, OPTION_LETTERS) == r.answer_letter)
            else:
                s["degenerate"] = float(M.is_degenerate(reply))
                s["refusal"] = float(M.is_refusal(reply))
                if task == "generation":
                    rouge = M.rouge_l(reply, r.answer)
                    s["rougeL_f1"], s["rougeL_recall"] = rouge["f1"], rouge["recall"]
                else:
                    s["cloze_acc"] = float(M.cloze_correct(reply, r.answer))
        if task == "classification":
            option_lps = option_token_logprobs(loaded, subset, batch_size=cfg.batch_size, progress=cfg.progress,
                                               replies=[details[i]["generated"] for i in idx])
            for i, lps in zip(idx, option_lps):
                scores = details[i]["scores"]
                scores["cls_acc_loglik"] = float(M.loglik_choice([sum(lp) for lp in lps]) == records[i].answer_index)
                scores["prob_options"] = M.option_probability(lps, records[i].answer_index)
        if task == "generation":
            _likelihood_scores(loaded, [records[i] for i in idx], [details[i] for i in idx], cfg, desc)
    return details


def _likelihood_scores(loaded: LoadedModel, records: Sequence[Record], details: Sequence[dict], cfg: EvalConfig,
                       desc: str) -> None:
    """prob (length-normalised p(answer)) and the truth ratio where paraphrase + perturbations exist."""
    jobs_rec, jobs_ans, owners = [], [], []
    for k, r in enumerate(records):
        jobs_rec.append(r), jobs_ans.append(r.answer), owners.append((k, "answer"))
        if r.paraphrased_answer and r.perturbed_answers:
            jobs_rec.append(r), jobs_ans.append(r.paraphrased_answer), owners.append((k, "para"))
            for j, pert in enumerate(r.perturbed_answers):
                jobs_rec.append(r), jobs_ans.append(pert), owners.append((k, f"pert{j}"))
    lps = answer_logprobs(loaded, jobs_rec, jobs_ans, batch_size=cfg.batch_size, desc=f"{desc}/likelihood",
                          progress=cfg.progress)
    per: dict[int, dict[str, list[float]]] = defaultdict(dict)
    for (k, what), token_lps in zip(owners, lps):
        per[k][what] = token_lps
    for k, parts in per.items():
        s = details[k]["scores"]
        ans = parts["answer"]
        s["prob"] = math.exp(sum(ans) / max(1, len(ans)))
        details[k]["answer_logprob"] = sum(ans)
        details[k]["token_logprobs"] = [round(v, 4) for v in ans]
        if "para" in parts:
            para = sum(parts["para"]) / max(1, len(parts["para"]))
            perts = [sum(v) / max(1, len(v)) for key, v in sorted(parts.items()) if key.startswith("pert")]
            s["truth_ratio"] = M.truth_ratio(para, perts, mean=cfg.truth_ratio_mean)


METRIC_KEYS = {
    "cls_acc": "cls_acc", "cls_acc_loglik": "cls_acc_loglik", "rougeL_f1": "rougeL_f1",
    "cls_acc_strict": "cls_acc_strict",
    "rougeL_recall": "rougeL_recall", "cloze_acc": "cloze_acc", "truth_ratio": "truth_ratio", "prob": "prob",
    "prob_options": "prob_options",
    "degenerate": "degenerate_rate", "refusal": "refusal_rate",
}


def aggregate(details: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Mean of each per-sample score per modality; truth_ratio also as its median (robust to tails)."""
    out: dict[str, dict[str, float]] = {}
    by_mod: dict[str, list[dict]] = defaultdict(list)
    for d in details:
        by_mod[d["modality"]].append(d)
    for mod, rows in by_mod.items():
        vals: dict[str, list[float]] = defaultdict(list)
        for d in rows:
            for k, v in d["scores"].items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    vals[k].append(v)
        res = {METRIC_KEYS[k]: sum(v) / len(v) for k, v in vals.items() if v}
        res["n"] = len(rows)
        if vals.get("truth_ratio"):
            finite = [v for v in vals["truth_ratio"] if math.isfinite(v)]
            res["truth_ratio"] = sorted(finite)[len(finite) // 2] if finite else math.inf
            # open-unlearning's aggregates beside the median, over every record: on forget the
            # closer R is to 1 the better (mean min(R, 1/R)), elsewhere the truer (mean max(0, 1 − R))
            res["truth_ratio_forget_score"] = statistics.fmean(M.truth_ratio_score(v, "forget") for v in vals["truth_ratio"])
            res["truth_ratio_retain_score"] = statistics.fmean(M.truth_ratio_score(v, "retain") for v in vals["truth_ratio"])
        out[mod] = dict(sorted(res.items()))
    return out


def score_sharded(loaded: LoadedModel, records: Sequence[Record], cfg: EvalConfig, desc: str) -> list[dict]:
    """`score_records` with the records split over the launch's processes (each holds a replica of the
    model): process k scores records k, k + N, ...; every process gets all rows back in record order.
    One process: exactly `score_records`."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState(cpu=not torch.cuda.is_available())
    if state.num_processes == 1:
        return score_records(loaded, records, cfg, desc)
    rank, world = state.process_index, state.num_processes
    mine = list(range(rank, len(records), world))
    rows = score_records(loaded, [records[i] for i in mine], cfg, desc) if mine else []
    gathered = gather_object([(i, row) for i, row in zip(mine, rows)])
    return [row for _, row in sorted(gathered, key=lambda pair: pair[0])]


def evaluate(loaded: LoadedModel, bundle: DataBundle, cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """Evaluate every split in `cfg.splits`; returns (summary, details). Launched on several processes,
    each scores its share of every split (`score_sharded`) and all end with the same summary."""
    if cfg.truth_ratio_mean not in ("geometric", "arithmetic"):
        raise ValueError(f"truth ratio mean must be geometric or arithmetic, got {cfg.truth_ratio_mean!r}")
    t0 = time.perf_counter()
    metrics: dict[str, dict] = {}
    details: list[dict] = []
    timing: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for split in cfg.splits:
        recs = split_records(bundle, split, cfg)
        if not recs:
            # A split the data does not have (own data: test, real, understanding; MLLMU: understanding)
            # is absent from "metrics" and said why in "skipped": never a row of zeros, never a crash.
            skipped[split] = "no evaluation records in this data"
            continue
        t = time.perf_counter()
        rows = score_sharded(loaded, recs, cfg, split)
        for d in rows:
            d["split"] = split
        timing[split] = round(time.perf_counter() - t, 2)
        details.extend(rows)
        metrics[split] = aggregate(rows)
        if split in POPULATION_SPLITS:
            for pop, ids in ((f"{split}_forget", bundle.forget_ids), (f"{split}_retain", bundle.retain_ids)):
                sub = [d for d in rows if d["profile_id"] in ids]
                if sub:
                    metrics[pop] = aggregate(sub)
    if bundle.source == "mllmu":
        # On MLLMU-Bench data cls_acc is the benchmark's own strict reading of a reply (comparable with
        # its published numbers); ours, which also reads value-first answers, is kept beside it.
        for mods in metrics.values():
            for vals in mods.values():
                if "cls_acc_strict" in vals:
                    vals["cls_acc_ours"] = vals["cls_acc"]
                    vals["cls_acc"] = vals["cls_acc_strict"]
    if cfg.reference_summary:
        fq = forget_quality_against(details, Path(cfg.reference_summary), cfg.truth_ratio_mean)
        for mod, value in fq.items():
            metrics.setdefault("forget", {}).setdefault(mod, {})["forget_quality"] = value
    timing["total_s"] = round(time.perf_counter() - t0, 2)
    summary = {"metrics": metrics, "config": {**asdict(cfg), "data": str(bundle.root), "source": bundle.source,
                                              "forget_split": bundle.forget_split,
                                              "cls_acc_parser": "mllmu-strict" if bundle.source == "mllmu" else "ours"},
               "timing": timing}
    if skipped:
        summary["skipped"] = skipped
    return summary, details


def forget_quality_against(details: Sequence[dict], reference_summary: Path, mean: str = "geometric"
                           ) -> dict[str, float]:
    """KS-test p-value of this model's forget truth ratios vs the retain-only model's (per modality)."""
    ref_details = reference_summary.parent / "details.jsonl"
    if not ref_details.is_file():
        raise FileNotFoundError(f"--reference-summary: {ref_details} is missing (it is written beside summary.json)")
    # summaries written before the option existed used the arithmetic mean
    ref_mean = json.loads(reference_summary.read_text()).get("config", {}).get("truth_ratio_mean", "arithmetic")
    if ref_mean != mean:
        raise ValueError(f"--reference-summary {reference_summary} has {ref_mean} truth ratios, this evaluation "
                         f"{mean}: forget quality compares like with like (evaluate both with one --truth-ratio)")
    ref: dict[str, list[float]] = defaultdict(list)
    for line in ref_details.read_text().splitlines():
        d = json.loads(line)
        if d.get("split") == "forget" and "truth_ratio" in d.get("scores", {}):
            ref[d["modality"]].append(d["scores"]["truth_ratio"])
    mine: dict[str, list[float]] = defaultdict(list)
    for d in details:
        if d.get("split") == "forget" and "truth_ratio" in d["scores"]:
            mine[d["modality"]].append(d["scores"]["truth_ratio"])
    return {mod: M.forget_quality(mine[mod], ref[mod]) for mod in mine if ref.get(mod)}


def write_results(out: Path, summary: dict, details: Sequence[dict]) -> None:
    """details.jsonl first, summary.json last: a summary on disk always has its details beside it."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "details.jsonl", "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in details))
    atomic_write_json(out / "summary.json", summary)


def format_table(summary: dict, metrics: Sequence[str] = ("cls_acc", "cls_acc_loglik", "rougeL_f1", "cloze_acc",
                                                            "truth_ratio", "degenerate_rate", "refusal_rate")) -> str:
    """A Markdown table of a summary (split × modality rows)."""
    lines = ["| split | modality | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for split, mods in summary["metrics"].items():
        for mod, vals in mods.items():
            cells = [f"{vals[m]:.3f}" if isinstance(vals.get(m), (int, float)) else "—" for m in metrics]
            lines.append(f"| {split} | {mod} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
