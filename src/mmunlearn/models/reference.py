"""θ0, the frozen reference some methods compare against — the cheapest form that is exact.

* LoRA scope: the model being trained with its adapters switched off (`AdapterReference`): no copy.
* VKD (vision scope): a copy of the vision tower and projector only (`vision_copy`): the teacher never
  runs the language model, so copying it would only cost memory.
* Full scope: a frozen copy (`FrozenReference`), held in bf16 when the run computes in bf16, and
  sharded like the model under FSDP2; under DeepSpeed its own inference engine (ZeRO-3 partitioned
  when the model is, a stage-0 replica below it).
* `--reference DIR`: that model, frozen (NPO against a retain-only model).
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from .forward import AnswerLogits, StepModule, VisualFeatures, base_model


class Reference:
    """θ0's answer logits and visual features (no gradients; callers add autocast)."""

    module: StepModule
    kind: str = ""

    @contextmanager
    def _active(self) -> Iterator[None]:
        with torch.no_grad():
            yield

    def answer_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with self._active():
            return self.module({"ref": AnswerLogits(batch)})["ref"]

    def features(self, pixel_inputs: dict, points: str) -> dict[str, torch.Tensor]:
        with self._active():
            return self.module({"ref": VisualFeatures(pixel_inputs, points)})["ref"]


class AdapterReference(Reference):
    """The trained module itself with its LoRA adapters disabled (exactly θ0: the base weights are frozen)."""

    kind = "disabled-adapter"

    def __init__(self, module: StepModule):
        self.module = module

    @contextmanager
    def _active(self) -> Iterator[None]:
        with self.module.as_reference():
            yield


class FrozenReference(Reference):
    """A separate frozen model (a copy of θ0, its vision half, or a --reference folder)."""

    def __init__(self, model: torch.nn.Module, adapter: Any, kind: str, processor: Any = None):
        model.eval().requires_grad_(False)
        self.module = StepModule(model, adapter, processor)
        self.kind = kind

    def answer_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kind == "vision-copy":
            raise RuntimeError("this reference holds only the vision tower and projector (VKD's teacher); "
                               "answer logits need the whole model")
        return super().answer_logits(batch)


def language_modules(model: torch.nn.Module, adapter: Any) -> list[tuple[torch.nn.Module, str]]:
    """(parent, attribute) of each top-level language-model module (the family's W prefixes)."""
    base = base_model(model)
    modules = dict(base.named_modules())
    out = []
    for prefix in adapter.language_prefixes:
        name = prefix.rstrip(".")
        if name in modules:
            parent, _, attr = name.rpartition(".")
            out.append((modules[parent] if parent else base, attr))
    return out


def vision_copy(model: torch.nn.Module, adapter: Any) -> torch.nn.Module:
    """A deep copy of the model without its language model and head: V + P, and what they need."""
    removed = [(parent, attr, getattr(parent, attr)) for parent, attr in language_modules(model, adapter)]
    if not removed:
        raise ValueError(f"cannot find the language model of this {adapter.family} model to leave it out")
    try:
        for parent, attr, _ in removed:
            setattr(parent, attr, None)
        return copy.deepcopy(base_model(model))
    finally:
        for parent, attr, module in removed:
            setattr(parent, attr, module)


def build_reference(kind: str, model: torch.nn.Module, adapter: Any, module: StepModule,
                    accelerator=None, loaded_reference: torch.nn.Module | None = None) -> Reference | None:
    """The cheapest exact θ0 for `kind` ("model", "vision" or "none"), made before any wrapping.

    `module` is the (not yet prepared) module that will train; `loaded_reference` a --reference model.
    """
    if kind == "none":
        return None
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    if loaded_reference is not None:
        ref = FrozenReference(loaded_reference.to(device), adapter, "reference-model", module.processor)
    elif hasattr(model, "disable_adapter") and hasattr(model, "peft_config"):
        return AdapterReference(module)
    elif kind == "vision":
        ref = FrozenReference(vision_copy(model, adapter).to(device), adapter, "vision-copy", module.processor)
    else:
        ref = FrozenReference(copy.deepcopy(base_model(model)).to(device), adapter, "copy", module.processor)
    if accelerator is not None and str(accelerator.mixed_precision) == "bf16":
        ref.module.to(torch.bfloat16)  # outputs are computed under bf16 autocast anyway
        ref.kind += "-bf16"
    if accelerator is not None and str(accelerator.distributed_type).endswith("DEEPSPEED"):
        from ..train.zero import reference_engine

        ref.module.uniform_parts = True  # ZeRO-3 gathers layer by layer: the same layers, in the same order
        ref.module.blank_in_place = True
        ref.module = reference_engine(accelerator, ref.module)  # its own engine: ZeRO-3 or a stage-0 replica
        ref.kind += "-zero3" if ref.module.zero_optimization_stage() == 3 else "-zero0"
        return ref
    if accelerator is not None and getattr(accelerator, "is_fsdp2", False):
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        ref.module.uniform_parts = True
        ref.module = fsdp2_prepare_model(accelerator, ref.module)
        ref.kind += "-sharded"
    return ref


def parameter_count(ref: Reference | None) -> int:
    """Parameters a reference holds of its own (0 for a disabled adapter)."""
    if ref is None or isinstance(ref, AdapterReference):
        return 0
    return sum(getattr(p, "ds_numel", p.numel()) for p in ref.module.parameters())  # ZeRO-3: the full size
