"""SMFA — Sculpted Memory Forgetting Adapter (SPEC section 4, arXiv 2511.20196, S-MLLMUn Bench).

Three stages on the language model W (LoRA; the engine's scope "lora" makes the first adapter):
1. Memory Forgetting Adapter ΔW_f: NLL on forget prompts relabelled to refusals ∪ a few retain samples
   with their true answers. A record whose answer has a lead is refused in its own form ("The birthplace
   of this person is unknown to me.", `refusal_form="lead"`), others with the pool ("I don't know.").
2. Retaining Anchor ΔW_a: a second, separate LoRA trained on the few retain samples only.
3. Sculpting, per weight matrix, on the merged deltas (B·A·α/r):
   ρ = ‖ΔW_f‖_F / (‖ΔW_a‖_F + ε); C = [ΔW_a ⊙ ΔW_f < 0]; R = [k·ρ·|ΔW_a| < |ΔW_f|]; M = C ⊙ R;
   ΔW'_f = ΔW_f ⊙ (1 − M); W = W0 + ΔW'_f  (the anchor itself is discarded).
The result is a plain HF model (LoRA unloaded, sculpted deltas added to the base weights).

Forget records that ask about what is *visible* in the photo (fact "visible:…", S-MLLMUn's I-Und) are
not memories to forget: with `keep_visible` (default) they join the few retain samples with their true
answers instead of being relabelled. `per_modality=True` trains one forgetting adapter on image+text
and one on text-only forget records, sculpted with `k_image` / `k_text` (original multi_k 5, text_k 10)
and both added; the default is the single-adapter simplification with one `k`.
Ablation: `sculpt` = full | conflict (M = C) | magnitude (M = R) | none (MFA alone, M = 0).
Paper: LoRA r 16, α 16, dropout 0.05, lr 1e-4, 5 epochs: the adapters use r/α 16/16 (`lora_r`,
`lora_alpha`; 0 takes the engine's --lora-r/--lora-alpha), lr / steps come from --lr / --steps (per
stage; the anchor trains as long as the forgetting adapter unless `anchor_steps` says otherwise).
`smfa-paper` is the paper's form: one adapter per modality, pool refusals, visible-attribute QA
relabelled like the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..data.refusals import REFUSALS, lead_refusal, sample_refusal
from ..train.loop import LoopResult
from .base import Context, Method, MethodConfig, register
from .losses import answer_nll

SCULPT_MODES = ("full", "conflict", "magnitude", "none")
ANCHOR = "anchor"


def sculpt(delta_f: torch.Tensor, delta_a: torch.Tensor, k: float, eps: float = 1e-8,
           mode: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """One weight matrix: (ΔW'_f, M) with M = C ⊙ R (mode "full"), C, R or nothing (ablations)."""
    if mode not in SCULPT_MODES:
        raise ValueError(f"sculpt mode must be one of {SCULPT_MODES}, got {mode!r}")
    if k < 0:
        raise ValueError(f"k must be ≥ 0, got {k}")
    delta_f, delta_a = delta_f.float(), delta_a.float()
    rho = delta_f.norm() / (delta_a.norm() + eps)
    conflict = delta_a * delta_f < 0
    magnitude = k * rho * delta_a.abs() < delta_f.abs()
    mask = {"full": conflict & magnitude, "conflict": conflict, "magnitude": magnitude,
            "none": torch.zeros_like(conflict)}[mode]
    return delta_f * (~mask), mask.float()


@dataclass
class SMFAConfig(MethodConfig):
    gamma: float = 1.0  # weight of the refusal NLL in stage 1
    alpha: float = 4.0  # weight of the few-retain NLL in stage 1 (ours; chosen in the seed sweep, docs/methods)
    n_retain: int = 1024  # "a few retain samples", drawn once, shared by stages 1 and 2
    refusal_pool: int = 12  # refusals drawn from the first N of data/refusals.REFUSALS; 0: all
    refusal_form: str = "lead"  # lead: refused in the answer's own form (ours) | pool: "I don't know." (paper)
    lora_r: int = 16  # the paper's LoRA rank (0: the engine's --lora-r)
    lora_alpha: int = 16  # the paper's LoRA α (0: the engine's --lora-alpha)
    lora_head: bool = True  # also LoRA on the output head (ours: tiny models never emitted refusal words)
    sculpt_head: bool = False  # sculpt the head's delta too (its refusal rows conflict with any anchor)
    lora_dropout: float = 0.05  # the paper's
    anchor_steps: int = 0  # 0: as many as the forgetting stage (the paper trains both alike)
    schedule: str = "cosine"  # lr schedule of each stage (train/loop.py: constant | cosine | linear)
    warmup_steps: int = 10
    keep_visible: bool = True  # visible-attribute forget QA keep their true answers (ours)
    sculpt: str = "full"  # full | conflict | magnitude | none (ablations)
    k: float = 5.0  # single forgetting adapter (the paper's multi_k)
    per_modality: bool = False  # one forgetting adapter per modality (the paper), with k_image / k_text
    k_image: float = 5.0
    k_text: float = 10.0
    eps: float = 1e-8


@register
class SMFA(Method):
    name = "smfa"
    summary = "refusal LoRA sculpted against a retain-anchor LoRA (conflicting, dominant entries removed)"
    Config = SMFAConfig
    search_space = {"k": ("float", 2.0, 10.0), "alpha": ("log", 1.0, 10.0)}
    default_scope = "lora"
    default_lr = 5e-3  # chosen in the seed sweep (docs/methods/seed-ablations.md)
    default_steps = 400  # per stage
    real_lr = 1e-4
    real_epochs = 5.0
    real_source = "the SMFA paper (LoRA r 16, lr 1e-4, 5 epochs per adapter)"

    @classmethod
    def check_config(cls, cfg: SMFAConfig) -> None:
        if cfg.refusal_form not in ("lead", "pool"):
            raise ValueError(f"smfa refusal_form must be lead or pool, got {cfg.refusal_form!r}")
        if cfg.sculpt not in SCULPT_MODES:
            raise ValueError(f"smfa sculpt must be one of {SCULPT_MODES}, got {cfg.sculpt!r}")

    def run(self, ctx: Context, loop):
        cfg = self.cfg
        model = ctx.model
        if not hasattr(model, "peft_config"):
            raise ValueError("smfa trains LoRA adapters: use the lora scope (its default)")
        lora_cfg = self._lora_config(model)
        batch_size = len(ctx.next_forget())  # the global batch (each process encodes its share)
        memories = [r for r in ctx.forget_records if not (cfg.keep_visible and r.is_visible_fact)]
        keep = ctx.rng.sample(ctx.retain_records, min(cfg.n_retain, len(ctx.retain_records)))
        if cfg.keep_visible:
            keep += [r for r in ctx.forget_records if r.is_visible_fact]
        if not memories or not keep:
            raise ValueError("smfa needs forget records to relabel and a few retain samples")
        if cfg.per_modality:
            groups = {m: ([r for r in memories if r.modality == m], k) for m, k in
                      (("image+text", cfg.k_image), ("text", cfg.k_text))}
            groups = {m: g for m, g in groups.items() if g[0]}
        else:
            groups = {"all": (memories, cfg.k)}

        results, adapters = [], {}
        sched = {"schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps}
        for i, (group, (records, k)) in enumerate(groups.items()):
            adapter = f"forget_{i}"
            model.add_adapter(adapter, lora_cfg)
            model.set_adapter(adapter)
            if "default" in model.peft_config:  # the engine's adapter is replaced by SMFA's own
                model.delete_adapter("default")
            if i == 0:
                ctx.extra_log["smfa_trainable_params_per_adapter"] = sum(
                    p.numel() for p in model.parameters() if p.requires_grad)
            adapters[adapter] = (group, k)
            results.append(("forget:" + group, loop(
                lambda step, recs=records: self._forget_loss(ctx, recs, keep, batch_size),
                checkpoint=(i == 0), desc=f"smfa:forget[{group}]", **sched)))
        model.add_adapter(ANCHOR, lora_cfg)
        model.set_adapter(ANCHOR)
        overrides = {"steps": cfg.anchor_steps, **sched} if cfg.anchor_steps else sched
        results.append(("anchor", loop(lambda step: self._anchor_loss(ctx, keep, batch_size), checkpoint=False,
                                       desc="smfa:anchor", **overrides)))
        ctx.model = self._sculpt_and_unload(ctx, model, adapters)
        return _combine(results, ctx)

    def trained_samples(self, steps: int, global_batch: int) -> int:
        """Every forgetting adapter (one per modality with `per_modality`, else one) trains `steps`, then the
        anchor `anchor_steps` (0: as many): stages summed."""
        forgetting = 2 if self.cfg.per_modality else 1
        return (forgetting * steps + (self.cfg.anchor_steps or steps)) * global_batch

    def steps_within(self, samples: int, global_batch: int) -> int:
        forgetting = 2 if self.cfg.per_modality else 1
        total = samples // max(1, global_batch)
        if self.cfg.anchor_steps:
            return max(1, (total - self.cfg.anchor_steps) // forgetting)
        return max(1, total // (forgetting + 1))

    def _lora_config(self, model):
        """The engine's LoRA settings (r, α, dropout, targets in W), plus the output head if asked."""
        cfg = model.peft_config["default"]
        sizes = {k: v for k, v in (("r", self.cfg.lora_r), ("lora_alpha", self.cfg.lora_alpha)) if v > 0}
        cfg = dataclasses.replace(cfg, **sizes)
        targets = set(cfg.target_modules)
        if self.cfg.lora_head:
            base = model.get_base_model()
            head = base.get_output_embeddings()
            targets |= {n for n, m in base.named_modules() if m is head}
        return dataclasses.replace(cfg, target_modules=targets, lora_dropout=self.cfg.lora_dropout)

    def _refusals(self, ctx: Context, recs) -> list[str]:
        out = []
        for rec in recs:
            text = lead_refusal(rec, ctx.rng) if self.cfg.refusal_form == "lead" else None
            if text is None:
                pool = self.cfg.refusal_pool
                text = sample_refusal(ctx.rng) if pool <= 0 else ctx.rng.choice(REFUSALS[:pool])
            out.append(text)
        return out

    # ---- stage losses ------------------------------------------------------------------------
    def _forget_loss(self, ctx: Context, memories, keep, batch_size: int):
        recs = [ctx.rng.choice(memories) for _ in range(batch_size)]
        refusal = ctx.batch(recs, self._refusals(ctx, recs))
        out = ctx.answer_logits(refusal=refusal, keep=self._keep_batch(ctx, keep, batch_size))
        nll_refusal, nll_keep = answer_nll(*out["refusal"]), answer_nll(*out["keep"])
        return {"loss": self.cfg.gamma * nll_refusal + self.cfg.alpha * nll_keep, "nll_refusal": nll_refusal,
                "nll_retain": nll_keep}

    def _anchor_loss(self, ctx: Context, keep, batch_size: int):
        nll_keep = answer_nll(*ctx.answer_logits(keep=self._keep_batch(ctx, keep, batch_size))["keep"])
        return {"loss": nll_keep, "nll_retain": nll_keep}

    @staticmethod
    def _keep_batch(ctx: Context, keep, batch_size: int) -> dict:
        return ctx.batch([ctx.rng.choice(keep) for _ in range(batch_size)])

    # ---- stage 3 -----------------------------------------------------------------------------
    @torch.no_grad()
    def _sculpt_and_unload(self, ctx: Context, model, adapters: dict[str, tuple[str, float]]) -> torch.nn.Module:
        from peft.tuners.lora import LoraLayer

        cfg = self.cfg
        updates, per_matrix = [], {}
        kept_total, masked_total = 0, 0
        prefix = "base_model.model."
        head = model.get_base_model().get_output_embeddings()
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or ANCHOR not in module.lora_A:
                continue
            delta_a = module.get_delta_weight(ANCHOR).float()
            short = name[len(prefix):] if name.startswith(prefix) else name
            mode = "none" if module is head and not cfg.sculpt_head else cfg.sculpt
            total = torch.zeros_like(delta_a)
            for adapter, (group, k) in adapters.items():
                delta_f = module.get_delta_weight(adapter).float()
                new, mask = sculpt(delta_f, delta_a, k, cfg.eps, mode)
                total += new
                frac = float(mask.mean())
                key = short if len(adapters) == 1 else f"{short}[{group}]"
                per_matrix[key] = {"masked_fraction": round(frac, 5),
                                   "rho": round(float(delta_f.norm() / (delta_a.norm() + cfg.eps)), 5)}
                masked_total += int(mask.sum())
                kept_total += mask.numel()
            updates.append((module.get_base_layer(), total))
        base = model.unload()  # LoRA layers out, base weights untouched: W = W0 ...
        if any(layer is base.get_output_embeddings() for layer, _ in updates) and untie_head(base):
            ctx.extra_log["smfa_untied_head"] = True  # the head's delta must not move the input embeddings
        for layer, delta in updates:  # ... + ΔW'_f
            layer.weight.add_(delta.to(layer.weight.dtype))
        ctx.extra_log["smfa_masked_fraction"] = round(masked_total / max(1, kept_total), 5)
        ctx.extra_log["smfa_matrices"] = per_matrix
        ctx.extra_log["smfa_config"] = {"sculpt": cfg.sculpt, "adapters": {a: {"data": g, "k": k}
                                                                           for a, (g, k) in adapters.items()}}
        for p in base.parameters():
            p.requires_grad_(False)
        return base


def untie_head(model: torch.nn.Module) -> bool:
    """Give the output head its own copy of the weights when it shares them with the input embeddings
    (SmolVLM, Qwen2-VL-2B checkpoints), and record it in the config so the saved folder loads untied.
    Merging the head's delta into a tied weight moved the embeddings by the same amount (measured: 0.218,
    the delta's maximum, on a tied micro-Llama). True when it was tied."""
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embeddings is None or head.weight.data_ptr() != embeddings.weight.data_ptr():
        return False
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    for config in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        config.tie_word_embeddings = False
    return True


def _combine(results: list[tuple[str, LoopResult | None]], ctx: Context) -> LoopResult | None:
    done = [(name, r) for name, r in results if r is not None]
    if not done:
        return None
    log = []
    for i, (name, r) in enumerate(done):
        log += [{**row, "stage": i + 1} for row in r.log]
    ctx.extra_log["smfa_stages"] = [{"stage": i + 1, "name": name, "steps": r.steps_done,
                                     "wall_time_s": round(r.wall_time_s, 3)} for i, (name, r) in enumerate(done)]
    per_process = [max(peaks) for peaks in zip(*(r.peak_memory_mb_per_process for _, r in done))]
    return LoopResult(sum(r.steps_done for _, r in done), sum(r.wall_time_s for _, r in done), log,
                      max(r.peak_memory_mb for _, r in done), steps_run=sum(r.steps_run for _, r in done),
                      processes=done[0][1].processes, distributed_type=done[0][1].distributed_type,
                      peak_memory_mb_per_process=per_process)


@dataclass
class SMFAPaperConfig(SMFAConfig):
    refusal_form: str = "pool"
    keep_visible: bool = False
    per_modality: bool = True


@register
class SMFAPaper(SMFA):
    """SMFA in its paper's form: one forgetting adapter per modality (k 5 image+text, 10 text), the
    refusal pool, every forget QA relabelled. The head LoRA stays (tiny models need it to refuse)."""

    name = "smfa-paper"
    summary = "SMFA as its paper: one refusal adapter per modality, pool refusals"
    Config = SMFAPaperConfig
    search_space = {"k_image": ("float", 2.0, 10.0), "k_text": ("float", 4.0, 20.0), "alpha": ("log", 1.0, 10.0)}
