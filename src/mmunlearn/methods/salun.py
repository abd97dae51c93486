"""SalUn — GradDiff restricted to the weights most salient for the forget set: the top-p fraction by
|Σ_f ∇(−NLL_f)| over the whole forget set (p default 0.5, exact top-k); other weights' gradients are
zeroed every step."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Context, MethodConfig, register
from .graddiff import GradDiff
from .masks import mask_stats, salun_mask


@dataclass
class SalUnConfig(MethodConfig):
    keep: float = 0.5  # fraction of weights the mask keeps (the paper's 50 %)
    mask_batches: int = 0  # 0: saliency over the whole forget set (the paper); N: N random batches


@register
class SalUn(GradDiff):
    """GradDiff's loss, unchanged; only the gradient mask differs."""

    name = "salun"
    summary = "GradDiff on the top-p salient weights (gradient-magnitude mask)"
    default_lr = 5e-4
    real_source = "ours: GradDiff's MLLMU-Bench setting (lr 1e-5, 1 epoch); SalUn's paper has no MLLM setting"
    Config = SalUnConfig
    search_space = {"keep": ("float", 0.1, 0.9), "alpha": ("log", 0.3, 10.0)}

    def prepare(self, ctx: Context) -> None:
        ctx.grad_masks = salun_mask(ctx, self.cfg.keep, self.cfg.mask_batches)
        ctx.extra_log.update(mask_stats(ctx.grad_masks))

