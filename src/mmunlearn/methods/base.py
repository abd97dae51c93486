"""What a method is: a name, a config dataclass with SPEC defaults, a scope, and a loss.

A method file subclasses `Method`, sets its class attributes and writes `loss(ctx, step)`, drawing the
batches it needs from the context (`ctx.forget_batch()`, `ctx.retain_batch()`...). `@register` adds
it to the registry, so a new method is one file and `mmunlearn methods` lists it.
"""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Sequence, TypeVar

import torch

from ..data.record import Record

T = TypeVar("T")


@dataclass
class MethodConfig:
    """Knobs every method has; a method's own Config subclasses this with its SPEC defaults."""

    alpha: float = 1.0  # weight of the retain term
    gamma: float = 1.0  # weight of the forget term


@dataclass
class Context:
    """What a method sees during unlearning (built by the engine in train/unlearn.py).

    Batches are drawn as *global* batches, identical on every process (`next_forget`, `next_retain`,
    and every draw from `rng`): a method decides what a step holds as if it ran alone, and `batch`
    encodes this process's share. Model calls go through `run` (one call of the wrapped module per
    step, so DDP/FSDP see it); θ0 through `reference_logits` / `reference_features`.
    """

    model: torch.nn.Module  # the HF (or peft) model: parameter names, adapters, hook points
    adapter: Any
    processor: Any
    collate: Callable[..., dict]
    device: torch.device
    forget_records: list[Record]
    retain_records: list[Record]
    next_forget: Callable[[], list[Record]]  # the next global forget batch
    next_retain: Callable[[], list[Record]]
    rng: random.Random  # one stream, the same on every process
    reference: Any = None  # models/reference.Reference, when the method needs θ0
    grad_masks: dict[str, torch.Tensor] | None = None
    extra_log: dict[str, Any] = field(default_factory=dict)
    run_dir: Any = None
    # the earlier-learned population's training records (the world's `pretrain` split; empty for data
    # without one): kept knowledge too, for methods that can use more of it than the retain split
    pretrain_records: list[Record] = field(default_factory=list)
    # the forget people's own questions about what their photos show (hair, shirt, background,
    # accessory): not part of `forget_records` for a method that keeps them (`forget_visible` False),
    # here for one that trains to keep them
    forget_visible_records: list[Record] = field(default_factory=list)
    rank: int = 0
    world: int = 1
    module: Any = None  # models/forward.StepModule around `model`
    step_module: Any = None  # the same, prepared by accelerate, while a loop runs
    autocast: Callable[[], Any] = nullcontext
    # Most records one forward of a one-off estimate (a saliency mask's gradients) may hold: the engine
    # sets the run's per-process batch, so an estimate never needs more activation memory than a training
    # step (a 16-record SalUn batch of 1,120-token samples is ~16× a batch-1 step's activations at 7B).
    # 0: each estimate batch in one forward.
    estimate_rows: int = 0
    # Photos of `n` people nobody has seen (data/strangers.py; None where the data cannot vouch for any):
    # the target a forgotten face is pulled toward
    strangers: Callable[[int], list] | None = None

    def local(self, items: Sequence[T]) -> list[T]:
        """This process's share of a global list (items rank, rank + world, ...)."""
        return list(items[self.rank :: self.world])

    def batch(self, records: list[Record], answers: list[str] | None = None, shard: bool = True) -> dict:
        """Collate this process's share of a global batch (optionally with replacement answers) onto
        the device. `shard=False`: every record, on every process (one-off estimates such as
        saliency masks, computed identically everywhere)."""
        where = (self.rank, self.world) if shard else (0, 1)
        return {k: v.to(self.device) for k, v in self.collate(records, answers=answers, shard=where).items()}

    def estimate_batch(self, records: list[Record]) -> list[dict]:
        """One batch of a one-off estimate (every record, on every process), as the forwards that run it: pieces
        of at most `estimate_rows` records, in order (the collator's option shuffles are drawn per record, so
        the pieces hold what the whole batch would). `masks.accumulate_gradients` weights each piece's token
        mean by its share of the batch's answer tokens, which gives the whole batch's gradient."""
        rows = self.estimate_rows if self.estimate_rows > 0 else max(1, len(records))
        return [self.batch(records[start:start + rows], shard=False) for start in range(0, len(records), rows)]

    def forget_batch(self, answers: Callable[[list[Record]], list[str]] | None = None) -> dict:
        recs = self.next_forget()
        return self.batch(recs, answers(recs) if answers else None)

    def retain_batch(self) -> dict:
        return self.batch(self.next_retain())

    def run(self, **requests: Any) -> dict[str, Any]:
        """One call of the wrapped model with named requests (models/forward.py): the prepared
        module inside the training loop, the plain one outside it."""
        return (self.step_module or self.module)(requests)

    def answer_logits(self, **batches: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(logits, labels) of each named batch's answer tokens, in one call of the model."""
        from ..models.forward import AnswerLogits

        return self.run(**{name: AnswerLogits(b) for name, b in batches.items()})

    def pixel_inputs(self, images: list) -> dict:
        """The image processor's tensors for `images` (this process encodes all it is given)."""
        enc = self.processor.image_processor(images=images, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items() if torch.is_tensor(v)}

    @torch.no_grad()
    def reference_answer(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """θ0's (answer logits, labels) in the layout `losses.forward` returns for the same batch."""
        if self.reference is None:
            raise RuntimeError("this method needs a reference model but none was prepared")
        with self.autocast():
            return self.reference.answer_logits(batch)

    def reference_logits(self, batch: dict) -> torch.Tensor:
        """θ0's answer logits in the layout `losses.forward` returns for the same batch."""
        return self.reference_answer(batch)[0]

    @torch.no_grad()
    def reference_features(self, pixel_inputs: dict, points: str) -> dict[str, torch.Tensor]:
        """θ0's visual features at the named hook points (VKD's teacher)."""
        if self.reference is None:
            raise RuntimeError("this method needs a reference model but none was prepared")
        with self.autocast():
            return self.reference.features(pixel_inputs, points)


class Method:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    needs_reference: ClassVar[bool] = False  # a frozen θ0 (or --reference model) is prepared
    needs_retain: ClassVar[bool] = True
    default_scope: ClassVar[str] = "full"
    default_lr: ClassVar[float] = 1e-4  # the tiny preset (train/presets.py): chosen on the tiny builds
    default_steps: ClassVar[int] = 60
    # The real preset, for checkpoints of real size: the published setting, epochs over the forget records
    real_lr: ClassVar[float] = 1e-5
    real_epochs: ClassVar[float] = 1.0
    real_source: ClassVar[str] = "MLLMU-Bench's baselines as MMUnlearner's code runs them (lr 1e-5, batch 4, 1 epoch)"
    # Which forget records the method trains on (e.g. VKD: image+text only).
    forget_modalities: ClassVar[tuple[str, ...]] = ("image+text", "text")
    # Whether questions about what is *visible* in a forget person's photo (fact "visible:…", S-MLLMUn's
    # I-Und: hair colour, background) are forgotten too. The baselines take D_f as it is (SPEC 3); the
    # seed methods forget the person, not the ability to see (ascent on "The hair colour is brown" for
    # ten people took the understanding of everyone's photos down with it).
    forget_visible: ClassVar[bool] = True
    # What `mmunlearn tune` searches besides lr and steps (tune.suggest's specs: ("log"|"float", lo, hi),
    # ("int", lo, hi), ("cat", [choices])); every method gets the same trial budget.
    search_space: ClassVar[dict[str, tuple]] = {}

    def __init__(self, cfg: MethodConfig | None = None):
        self.cfg = cfg or self.Config()

    def prepare(self, ctx: Context) -> None:
        """One-off work before the first step (saliency masks...)."""

    def mask_active(self, step: int) -> bool:
        """Whether the gradient masks apply at this step (MMUnlearner alternates)."""
        return True

    def loss(self, ctx: Context, step: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reference_kind(self) -> str:
        """Which θ0 the method reads: "model" (answer logits: a disabled LoRA adapter, a frozen copy
        or --reference), "vision" (only the vision tower and projector: VKD's teacher), or "none"."""
        return "model" if self.needs_reference else "none"

    def run(self, ctx: Context, loop: Callable[..., Any]) -> Any:
        """The optimisation: by default one engine loop over `loss`. `loop(step_loss, checkpoint=True,
        **LoopConfig overrides)` runs train/loop.run_loop on ctx.model and returns its LoopResult (None
        for 0 steps). Multi-stage methods (SMFA) override this, call `loop` once per stage and may
        change ctx.model between stages (each stage prepares the model anew, so adapters added before
        a stage are wrapped with it); the engine saves ctx.model (merging LoRA if it is still a peft
        model)."""
        return loop(lambda step: self.loss(ctx, step))

    def steps_for_epochs(self, epochs: float, forget: list, retain: list, global_batch: int) -> int:
        """Optimiser steps for `epochs` passes over the forget records it trains on (a method with another
        cadence, such as MMUnlearner's alternation, says how its steps relate to them)."""
        from ..train.presets import epochs_to_steps

        return epochs_to_steps(epochs, len(forget), global_batch)

    def trained_samples(self, steps: int, global_batch: int) -> int:
        """Records a run of `steps` trains on: steps × global batch, every stage summed (SMFA trains two
        adapters) — what `mmunlearn tune`'s compute budget counts."""
        return steps * global_batch

    def steps_within(self, samples: int, global_batch: int) -> int:
        """The most steps whose `trained_samples` stay within `samples` (at least 1)."""
        return max(1, samples // max(1, global_batch))

    @classmethod
    def tuning_space(cls, lr: float | None = None, steps: int | None = None) -> dict[str, tuple]:
        """lr over [lr/10, lr×10] (log), steps over [steps/4, steps] (log) around the preset's lr and steps
        (default: the tiny preset's; `mmunlearn tune` passes the real preset's on a real-size model), then
        the method's own `search_space` (which may override either)."""
        lr = lr if lr is not None else cls.default_lr
        steps = steps if steps is not None else cls.default_steps
        return {"lr": ("log", lr / 10, lr * 10), "steps": ("int", min(steps, max(4, steps // 4)), steps, "log"),
                **cls.search_space}

    @classmethod
    def make_config(cls, overrides: dict[str, Any] | None = None) -> MethodConfig:
        overrides = dict(overrides or {})
        known = {f.name: f for f in fields(cls.Config)}
        unknown = set(overrides) - set(known)
        if unknown:
            raise ValueError(f"method {cls.name!r} has no option(s) {', '.join(sorted(unknown))}; "
                             f"options: {', '.join(sorted(known))}")
        cfg = cls.Config()
        for key, value in overrides.items():
            current = getattr(cfg, key)
            if isinstance(current, bool) and isinstance(value, str):
                value = value.lower() in ("1", "true", "yes", "on")
            elif isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, str):
                try:
                    value = type(current)(float(value)) if isinstance(current, int) else float(value)
                except ValueError:
                    raise ValueError(f"method {cls.name!r}: option {key} expects a number (got {value!r})") from None
            setattr(cfg, key, value)
        cls.check_config(cfg)
        return cfg

    @classmethod
    def check_config(cls, cfg: MethodConfig) -> None:
        """Refuse option values the method cannot run with (a ValueError naming the option): called when the
        config is made, so a command refuses them before --out exists."""

    @classmethod
    def check_data(cls, cfg: MethodConfig, bundle: Any) -> None:
        """Refuse options this data cannot serve (a ValueError): called once the data is loaded and before
        --out exists, so a refused run leaves nothing behind."""


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Method]]:
    import importlib
    import pkgutil

    from .. import methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "losses", "masks"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")
    return dict(sorted(_REGISTRY.items()))


def get_method(name: str) -> type[Method]:
    methods = registry()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(methods)}")
    return methods[name]
