"""One module around the HF model, one forward per training step.

DDP and FSDP only see what goes through the wrapped module's `forward`: gradient synchronisation is
armed there (DDP traverses the graph from its outputs), parameters are gathered there (FSDP). A method
that called `model.model(...)`, a submodule, or the model twice per step would escape them. So every
call a step needs — answer logits of several batches, the visual features VKD distils — is one
*request* of a single `forward(requests)` call:

    out = module({"forget": AnswerLogits(forget_batch), "retain": AnswerLogits(retain_batch),
                  "kept": VisualFeatures(images, points)})

Requests run in order inside that one call; the outputs come back under the same names.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .answer_logits import answer_logits


@dataclass
class AnswerLogits:
    """(logits, labels) of a collated batch's answer tokens (models/answer_logits.py layout)."""

    batch: dict


@dataclass
class VisualFeatures:
    """Outputs of the named hook points (`points`, comma-separated: keys of the family adapter's
    `feature_modules`, or module names) when the vision tower and projector encode `pixel_inputs`
    (the image processor's output); "projected" is always there."""

    pixel_inputs: dict
    points: str = ""


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain HF `...ForConditionalGeneration` under a peft wrapper (LoRA layers stay injected)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextmanager
def capture(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Record each module's output (first tensor of a tuple) while the block runs."""
    store: dict[str, torch.Tensor] = {}

    def make(name):
        def hook(_module, _inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            elif hasattr(output, "last_hidden_state"):
                output = output.last_hidden_state
            store[name] = output

        return hook

    handles = [m.register_forward_hook(make(n)) for n, m in modules.items()]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def feature_points(model: torch.nn.Module, adapter, points: str) -> dict[str, torch.nn.Module]:
    """Hook points by name: keys of `adapter.feature_modules`, else full module names of the model."""
    base = base_model(model)
    named = adapter.feature_modules(base)
    modules = dict(base.named_modules())
    out = {}
    for point in (p.strip() for p in points.split(",") if p.strip()):
        if point in named:
            out[point] = named[point]
        elif point in modules:
            out[point] = modules[point]
        else:
            raise ValueError(f"hook point {point!r} is neither a feature module ({', '.join(named)}) "
                             f"nor a module name of this {adapter.family} model")
    return out


def image_features(model: torch.nn.Module, pixel_inputs: dict) -> torch.Tensor:
    """What the projector hands to the language model, per image: (n_images, tokens, D). Runs the
    vision tower and projector only (`get_image_features`), never the language model."""
    core = base_model(model).model
    fn = core.get_image_features
    params = inspect.signature(fn).parameters
    ref = next(p for p in core.parameters())
    inputs = {k: (v.to(ref.device, ref.dtype) if v.is_floating_point() else v.to(ref.device))
              for k, v in pixel_inputs.items() if k in params}
    out = fn(**inputs).pooler_output
    n = len(pixel_inputs.get("image_grid_thw", pixel_inputs["pixel_values"]))
    if isinstance(out, (list, tuple)):
        return torch.stack([o.float() for o in out])
    return out.float().reshape(n, -1, out.shape[-1])


class StepModule(torch.nn.Module):
    """The HF (or peft) model as the one module accelerate prepares.

    `_no_split_modules` is the inner model's, so FSDP's transformer-layer wrapping policy finds the
    decoder and vision layers through this wrapper.
    """

    def __init__(self, model: torch.nn.Module, adapter: Any, processor: Any = None):
        super().__init__()
        self.model = model
        self.adapter = adapter
        self.processor = processor
        # Under FSDP every process must gather the same layers in the same order; a text-only batch
        # skips the vision tower, so on one process and not another it would desynchronise them. With
        # `uniform_parts` such a batch also encodes a blank image, added to its logits times zero:
        # the vision layers run (and get a zero gradient) everywhere. Set by the loop under FSDP.
        self.uniform_parts = False
        # DeepSpeed gathers (ZeRO-3) and reduces (ZeRO-2 buckets) parameter by parameter in the order
        # layers run, so the blank image must run where a real one would: right after the token
        # embeddings, folded into them times zero (the same forward and backward order as an image
        # batch). Set by the loop under DeepSpeed.
        self.blank_in_place = False
        self._blank: dict | None = None
        # only the layer classes this model really has (LLaVA lists CLIP's text embeddings, which an
        # image-text model does not contain, and accelerate refuses a class it cannot find)
        present = {type(m).__name__ for m in model.modules()}
        self._no_split_modules = [c for c in getattr(base_model(model), "_no_split_modules", None) or []
                                  if c in present]

    def forward(self, requests: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, request in requests.items():
            if isinstance(request, AnswerLogits):
                blank = None
                text_only = self.uniform_parts and "pixel_values" not in request.batch
                if text_only and self.blank_in_place:
                    with self._blank_after_embeddings():
                        logits, labels = answer_logits(self.model, request.batch)
                    out[name] = (logits, labels)
                    continue
                if text_only:  # vision first, as with images
                    blank = 0.0 * image_features(self.model, self._blank_pixels()).sum()
                logits, labels = answer_logits(self.model, request.batch)
                out[name] = (logits if blank is None else logits + blank, labels)
            elif isinstance(request, VisualFeatures):
                with capture(feature_points(self.model, self.adapter, request.points)) as store:
                    projected = image_features(self.model, request.pixel_inputs)
                out[name] = {"projected": projected, **store}
            else:
                raise TypeError(f"unknown request {type(request).__name__} for {name!r}")
        return out

    @contextmanager
    def _blank_after_embeddings(self) -> Iterator[None]:
        """While the block runs, the token embeddings' output gains 0 × (the blank image's features)."""
        def hook(_module, _inputs, output):
            return output + 0.0 * image_features(self.model, self._blank_pixels()).sum().to(output.dtype)

        handle = base_model(self.model).get_input_embeddings().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _blank_pixels(self) -> dict:
        if self._blank is None:
            if self.processor is None:
                raise RuntimeError("uniform_parts needs the processor (to encode a blank image)")
            from PIL import Image

            size = getattr(getattr(self.processor, "image_processor", None), "crop_size", None) or {}
            side = int(size.get("height", 32)) if isinstance(size, dict) else 32
            enc = self.processor.image_processor(images=[Image.new("RGB", (side, side))], return_tensors="pt")
            self._blank = {k: v for k, v in enc.items() if torch.is_tensor(v)}
        return self._blank

    @contextmanager
    def as_reference(self) -> Iterator[None]:
        """θ0 of a LoRA run for free: the base weights with every adapter switched off, in eval mode
        (no dropout), without gradients."""
        disable = getattr(self.model, "disable_adapter", None)
        was_training = self.training
        self.eval()
        try:
            with (disable() if disable is not None else nullcontext()), torch.no_grad():
                yield
        finally:
            self.train(was_training)
