"""Identity-ranking attack: does the model still tell *who* is in an unseen photo, one step below its answer?

A model whose greedy answer is wrong (or a refusal) can still rank the right person near the top. For
every unseen photo of a person (by default the `test` split's transformed photos: new pose, background,
colour, noise), every identity the data knows is scored as the answer to a name question: the model's
log-likelihood of the candidate answer (summed over its tokens and the end of the answer, as
`eval.engine.answer_logprobs` scores answers), written the way the model was trained to name a person
("The name is Garan Hennet." on the world). The question is an evaluation phrasing ("What is the name of
the person in this picture?"), never a training one (a training phrasing is refused). The true name's
rank among all candidates (1 = first) gives top-1, top-5, mean reciprocal rank and median rank for:

- `forget`: the forget people's unseen photos (the attack);
- `retain`: a seeded sample of retain people's unseen photos (what a method must keep);
- `holdout`: the never-trained people's photos, their names among the candidates (strangers).

And the strangers' baseline proper: `forget_names_on_strangers`, the ranks the forget people's names
get on the strangers' photos — where a name lands on a face the model has no reason to tie it to, with
the name's own prior included. A forgotten face ranks its true name like that: not near the top, and not
pushed to the bottom (an ascent that drives the true name below every stranger's name is itself a tell).
The holdout people's own names were never trained, so any photo ranks them low: their ranks show where
an unknown name lands, not where a forgotten one should.

Speed: the prompt (photo + question) is the same for every candidate, so it runs once per photo; its
keys and values are reused for every candidate, whose answer tokens alone go through the language model
in large batches (mode `cache`). Mode `full` scores every (photo, candidate) pair through
`answer_logprobs` (prompt recomputed each time): the reference the cached scores are tested against.
"""

from __future__ import annotations

import inspect
import math
import random
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from ...data.collate import end_of_answer, render_prompt
from ...data.errors import DataError
from ...data.record import Record
from ...data.store import DataBundle
from ...data.world import ANSWERS, PHOTO_SUBJECT, QUESTIONS
from ...models.answer_logits import _plain_head, _unwrap
from ...models.loader import LoadedModel
from ..engine import _to_model, answer_logprobs


def _capitalised(text: str) -> str:
    return text[0].upper() + text[1:]


# The world's evaluation phrasing of the name question on a photo, and its name answer ("The name is {v}.").
WORLD_QUESTION = _capitalised(QUESTIONS["name"]["eval"][0].format(s=PHOTO_SUBJECT["eval"][0]))
WORLD_ANSWER = ANSWERS["name"][0].replace("{v}", "{name}")
GROUPS = ("forget", "retain", "holdout")


@dataclass
class RankConfig:
    # split whose image+text records give the forget and retain people's photos; None: "test" (unseen photos)
    # where the data has it, else the forget and retain splits' own photos (own data: trained photos)
    photos: str | None = None
    question: str | None = None  # None: the world's evaluation name question
    answer_template: str | None = None  # "{name}" is replaced; None: the world's name answer, "{name}" elsewhere
    retain_people: int = 10  # retain people ranked (a seeded sample; 0: none, -1: all)
    holdout: bool = True  # rank the holdout (never-trained) people's photos too
    batch_size: int = 1024  # (photo, candidate) rows per forward of the answers (at most)
    cache_budget_mb: int = 2048  # ... and at most this much of the prompt's keys/values copied per forward
    prompt_batch_size: int = 32  # photos per forward of the prompts
    top_k: int = 5  # names listed per photo in details.jsonl (top-1 and top-5 are always reported)
    seed: int = 0
    mode: str = "cache"  # cache: prompt keys/values reused for every candidate | full: answer_logprobs per pair
    progress: bool = False

    def validate(self) -> "RankConfig":
        if self.mode not in ("cache", "full"):
            raise ValueError(f"mode must be cache or full (got {self.mode!r})")
        if self.batch_size < 1 or self.prompt_batch_size < 1 or self.top_k < 1 or self.cache_budget_mb < 1:
            raise ValueError("batch sizes and top_k must be at least 1")
        if self.answer_template is not None and "{name}" not in self.answer_template:
            raise ValueError(f"the answer template must contain {{name}} (got {self.answer_template!r})")
        return self


@dataclass
class Photo:
    group: str
    profile_id: str
    name: str
    record_id: str  # the first record that shows this photo
    image: Image.Image


# ---- what is ranked ------------------------------------------------------------------------------

def question_and_template(bundle: DataBundle, cfg: RankConfig) -> tuple[str, str]:
    """The name question (an evaluation phrasing: a training one is refused) and the answer template."""
    question = cfg.question or WORLD_QUESTION
    template = cfg.answer_template or (WORLD_ANSWER if bundle.source == "world" else "{name}")
    trained = {r.question for recs in bundle.splits.values() for r in recs if r.phase != "eval"}
    if question in trained:
        raise DataError(f"the name question {question!r} is a training phrasing of this data; "
                        "the attack asks an evaluation phrasing")
    return question, template


def candidate_names(bundle: DataBundle) -> list[dict]:
    """Every identity the data knows (every split, holdout included): name, profile id, population."""
    seen: dict[str, dict] = {}
    for recs in bundle.splits.values():
        for r in recs:
            if r.name and r.name not in seen:
                seen[r.name] = {"name": r.name, "profile_id": r.profile_id, "population": r.population}
    return sorted(seen.values(), key=lambda c: (c["profile_id"], c["name"]))


def _distinct_photos(records: Sequence[Record], group: str) -> list[Photo]:
    """One Photo per distinct image of each person (many records share one photo)."""
    out, seen = [], set()
    for r in records:
        if r.image is None or not r.name:
            continue
        key = (r.profile_id, r.image.size, r.image.tobytes())
        if key not in seen:
            seen.add(key)
            out.append(Photo(group, r.profile_id, r.name, r.id, r.image))
    return out


def photo_splits(bundle: DataBundle, cfg: RankConfig) -> tuple[str, ...]:
    """The splits whose photos are ranked: --photos, or "test" (photos no run trained on) where the data has
    it, else forget + retain (your own data has only those: the ranking is then on trained photos)."""
    if cfg.photos is not None:
        if cfg.photos not in bundle.splits:
            raise DataError(f"--photos {cfg.photos!r} is not a split of {bundle.root} "
                            f"(available: {', '.join(sorted(bundle.splits))})")
        return (cfg.photos,)
    if "test" in bundle.splits:
        return ("test",)
    return tuple(s for s in ("forget", "retain") if s in bundle.splits)


def photos_note(bundle: DataBundle, cfg: RankConfig) -> str | None:
    """Why the ranking is not on unseen photos, when it is not."""
    names = photo_splits(bundle, cfg)
    if names == ("test",):
        return None
    return (f"the photos ranked are from {' + '.join(names)}, which the model was trained on (the data has no "
            "unseen photos): a forgotten person here is a forgotten photo, not necessarily a forgotten face")


def photo_sets(bundle: DataBundle, cfg: RankConfig) -> dict[str, list[Photo]]:
    """The photos each group ranks: forget and (a sample of) retain people from `cfg.photos`, and the
    holdout people's photos (never trained: their every photo is unseen)."""
    names = photo_splits(bundle, cfg)
    recs = [r for name in names for r in bundle.splits[name] if r.modality == "image+text"]
    forget = _distinct_photos([r for r in recs if r.profile_id in bundle.forget_ids], "forget")
    if not forget:
        raise DataError(f"{'split ' + names[0] if len(names) == 1 else 'the data'} has no photos of the forget "
                        f"people ({bundle.forget_split}): the identity ranking needs image+text records")
    retain_ids = sorted({r.profile_id for r in recs if r.profile_id in bundle.retain_ids})
    if 0 <= cfg.retain_people < len(retain_ids):
        retain_ids = sorted(random.Random(f"{cfg.seed}-rank-retain").sample(retain_ids, cfg.retain_people))
    chosen = set(retain_ids)
    retain = _distinct_photos([r for r in recs if r.profile_id in chosen], "retain")
    holdout = []
    if cfg.holdout:
        holdout = _distinct_photos([r for r in bundle.splits.get("holdout", []) if r.modality == "image+text"],
                                   "holdout")
    return {"forget": forget, "retain": retain, "holdout": holdout}


# ---- scoring -------------------------------------------------------------------------------------

def _prompt_record(question: str, image: Image.Image) -> Record:
    return Record(id="rank", profile_id="", question=question, answer="-", task="generation",
                  modality="image+text", image=image)


def _continuations(tokenizer, prompt: str, answers: Sequence[str], eos: str) -> list[list[int]]:
    """Token ids of each answer (+ end of answer) after the prompt, as prompt + answer tokenise together."""
    base = tokenizer(prompt)["input_ids"]
    out = []
    for answer in answers:
        full = tokenizer(prompt + answer + eos)["input_ids"]
        if full[: len(base)] != base or len(full) == len(base):
            raise ValueError("the tokenizer merges prompt and answer tokens; cannot score answers after the prompt")
        out.append(full[len(base):])
    return out


def _kwarg(fn, *names: str) -> str:
    params = inspect.signature(fn).parameters
    return next((n for n in names if n in params), names[-1])


def _cache_of(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _signature(batch: dict) -> tuple:
    """Prompts batch together (no padding) when every tensor has the same shape past the batch dim."""
    return tuple((k, tuple(v.shape[1:])) for k, v in sorted(batch.items()) if torch.is_tensor(v))


@torch.no_grad()
def _score_cached(loaded: LoadedModel, images: Sequence[Image.Image], question: str, answers: Sequence[str],
                  cfg: RankConfig) -> torch.Tensor:
    from transformers import DynamicCache

    model, processor, adapter = loaded.model, loaded.processor, loaded.adapter
    model.eval()
    core = _unwrap(model)
    tok = processor.tokenizer
    prompt = render_prompt(processor, _prompt_record(question, images[0]))
    conts = _continuations(tok, prompt, answers, end_of_answer(processor))
    n_ans, width = len(conts), max(len(c) for c in conts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    cont = torch.full((n_ans, width), pad, dtype=torch.long)
    valid = torch.zeros((n_ans, width), dtype=torch.bool)
    for i, ids in enumerate(conts):
        cont[i, : len(ids)] = torch.tensor(ids)
        valid[i, : len(ids)] = True
    device = next(model.parameters()).device
    cont, valid = cont.to(device), valid.to(device)
    plain = _plain_head(core)
    lm = core.model if plain else model
    lm_cache_kw = _kwarg(lm.forward, "cache", "past_key_values")

    # One prompt per photo, encoded alone: photos whose inputs share every shape run together unpadded,
    # so the answers continue each prompt at the same position.
    encoded = [adapter.encode(processor, [prompt], [im], padding_side="right") for im in images]
    groups: dict[tuple, list[int]] = {}
    for i, enc in enumerate(encoded):
        groups.setdefault(_signature(enc), []).append(i)
    scores = torch.empty((len(images), n_ans), dtype=torch.float32)
    chunks = [idx[s : s + cfg.prompt_batch_size] for idx in groups.values()
              for s in range(0, len(idx), cfg.prompt_batch_size)]
    for idx in tqdm(chunks, desc="rank", disable=not cfg.progress, leave=False, mininterval=1.0):
        batch = {k: torch.cat([encoded[i][k] for i in idx]) if torch.is_tensor(encoded[idx[0]][k])
                 else encoded[idx[0]][k] for k in encoded[idx[0]]}
        batch = _to_model(batch, model)
        out = model(**batch, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (G, V): the answers' first token
        kv = [(layer.keys, layer.values) for layer in _cache_of(out).layers]
        # Each row gets its own copy of its prompt's keys/values: a 7B model's are ~0.3 GB per row.
        row_bytes = sum(k[0].numel() * k.element_size() + v[0].numel() * v.element_size() for k, v in kv)
        rows = max(1, min(cfg.batch_size, cfg.cache_budget_mb * 2**20 // max(row_bytes, 1)))
        prompt_len = batch["input_ids"].shape[1]
        rope_deltas = getattr(getattr(core, "model", None), "rope_deltas", None)  # Qwen2-VL's M-RoPE offsets
        g_all = torch.arange(len(idx), device=device).repeat_interleave(n_ans)
        c_all = torch.arange(n_ans, device=device).repeat(len(idx))
        block = torch.empty(len(idx) * n_ans, dtype=torch.float32, device=device)
        for s in range(0, len(g_all), rows):
            g, c = g_all[s : s + rows], c_all[s : s + rows]
            total = first[g, cont[c, 0]]
            if width > 1:
                cache = DynamicCache(ddp_cache_data=[(k[g], v[g]) for k, v in kv], config=model.config)
                inputs = {"input_ids": cont[c, :-1], lm_cache_kw: cache, "use_cache": True}
                if rope_deltas is not None:
                    pos = torch.arange(prompt_len, prompt_len + width - 1, device=device)
                    pos = pos.view(1, 1, -1) + rope_deltas.to(device)[g].view(1, -1, 1)
                    inputs["position_ids"] = pos.expand(3, -1, -1)
                res = lm(**inputs)
                logits = core.lm_head(res.last_hidden_state) if plain else res.logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                picked = logp.gather(-1, cont[c, 1:].unsqueeze(-1)).squeeze(-1)
                total = total + (picked * valid[c, 1:]).sum(1)
            block[s : s + len(g)] = total
        scores[torch.tensor(idx)] = block.view(len(idx), n_ans).cpu()
    return scores


def _score_full(loaded: LoadedModel, images: Sequence[Image.Image], question: str, answers: Sequence[str],
                cfg: RankConfig) -> torch.Tensor:
    recs = [_prompt_record(question, im) for im in images for _ in answers]
    lps = answer_logprobs(loaded, recs, [a for _ in images for a in answers], batch_size=cfg.batch_size,
                          desc="rank", progress=cfg.progress)
    return torch.tensor([sum(lp) for lp in lps], dtype=torch.float32).view(len(images), len(answers))


def score_photos(loaded: LoadedModel, images: Sequence[Image.Image], question: str, answers: Sequence[str],
                 cfg: RankConfig | None = None) -> torch.Tensor:
    """(photos × answers) summed answer log-likelihoods of each answer after (photo, question)."""
    cfg = (cfg or RankConfig()).validate()
    if not images or not answers:
        return torch.empty((len(images), len(answers)))
    fn = _score_cached if cfg.mode == "cache" else _score_full
    return fn(loaded, images, question, answers, cfg)


# ---- numbers -------------------------------------------------------------------------------------

def rank_of(row: Sequence[float], true_index: int) -> int:
    """1 + the number of candidates scored strictly higher than the true one (a tie counts for the truth)."""
    t = row[true_index]
    return 1 + sum(1 for v in row if v > t)


def _quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (statistics' 'inclusive' method)."""
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def rank_stats(ranks: Sequence[int], top_k: int = 5) -> dict | None:
    if not ranks:
        return None
    share = lambda k: sum(r <= k for r in ranks) / len(ranks)  # noqa: E731
    extra = {f"top{top_k}": share(top_k)} if top_k not in (1, 5) else {}
    return {"n": len(ranks), "top1": share(1), "top5": share(5), **extra,
            "mrr": sum(1 / r for r in ranks) / len(ranks), "median_rank": statistics.median(ranks),
            "mean_rank": sum(ranks) / len(ranks), "rank_min": min(ranks), "rank_max": max(ranks),
            "rank_p10": _quantile(ranks, 0.1), "rank_p90": _quantile(ranks, 0.9)}


def run_rank(loaded: LoadedModel, bundle: DataBundle, cfg: RankConfig | None = None) -> tuple[dict, list[dict]]:
    """Rank every known name on each group's photos → (summary, details: one row per photo)."""
    cfg = (cfg or RankConfig()).validate()
    t0 = time.perf_counter()
    question, template = question_and_template(bundle, cfg)
    sets = photo_sets(bundle, cfg)
    cands = candidate_names(bundle)
    names = [c["name"] for c in cands]
    index = {n: i for i, n in enumerate(names)}
    photos = [p for g in GROUPS for p in sets[g]]
    t1 = time.perf_counter()
    scores = score_photos(loaded, [p.image for p in photos], question, [template.format(name=n) for n in names], cfg)
    scoring_s = time.perf_counter() - t1

    details, ranks = [], {g: [] for g in GROUPS}
    per_person: dict[str, dict[str, dict]] = {g: {} for g in GROUPS}
    for p, row in zip(photos, scores.tolist()):
        r = rank_of(row, index[p.name])
        ranks[p.group].append(r)
        per_person[p.group].setdefault(p.profile_id, {"name": p.name, "ranks": []})["ranks"].append(r)
        top = sorted(range(len(row)), key=lambda j: -row[j])[: cfg.top_k]
        details.append({"attack": "rank", "group": p.group, "profile_id": p.profile_id, "name": p.name,
                        "photo": p.record_id, "rank": r, "score": row[index[p.name]],
                        "top": [[names[j], row[j]] for j in top], "n_candidates": len(names)})
    groups = {}
    for g in GROUPS:
        stats = rank_stats(ranks[g], cfg.top_k)
        if stats:
            stats["people"] = len(per_person[g])
            stats["per_person"] = per_person[g]
        groups[g] = stats
    # Where the forget people's names land on the strangers' photos: the rank a forgotten face should give.
    forget_names = sorted({p.name for p in sets["forget"]})
    baseline = None
    held = [row for p, row in zip(photos, scores.tolist()) if p.group == "holdout"]
    if held:
        pooled = [rank_of(row, index[n]) for row in held for n in forget_names]
        baseline = rank_stats(pooled, cfg.top_k)
        baseline["photos"] = len(held)
        baseline["names"] = len(forget_names)
    pops: dict[str, int] = {}
    for c in cands:
        pops[c["population"]] = pops.get(c["population"], 0) + 1
    n_pairs = len(photos) * len(names)
    summary = {
        "attack": "rank",
        "forget_split": bundle.forget_split,
        "photos": "+".join(photo_splits(bundle, cfg)),
        "photos_note": photos_note(bundle, cfg),
        "question": question,
        "answer_template": template,
        "n_candidates": len(names),
        "candidates_by_population": pops,
        "groups": groups,
        "forget_names_on_strangers": baseline,
        "notes": {"rank": "1 = the true name scored highest among all candidates",
                  "holdout": "never-trained people: their names were never seen, so every photo ranks them low",
                  "forget_names_on_strangers": "ranks of the forget people's names on the holdout photos: "
                                               "where a forgotten face should put its true name"},
        "config": {**asdict(cfg), "data": str(bundle.root), "source": bundle.source},
        "timing": {"total_s": round(time.perf_counter() - t0, 2), "scoring_s": round(scoring_s, 2),
                   "photos": len(photos), "pairs": n_pairs},
    }
    return summary, details
