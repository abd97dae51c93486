"""Qwen2-VL / Qwen2.5-VL family: ViT with 2D rotary patches + patch-merger projector + Qwen2 language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2VLProcessor
from transformers.processing_utils import ProcessorMixin

from .base import FamilyAdapter, TinySize, register_family, set_image_options, tiny_text_settings

IMAGE_PAD = "<|image_pad|>"
# Default per-image pixel cap when loading a folder: 1280 visual tokens of 28×28 pixels (see processor_caps).
MAX_PIXELS = 1280 * 28 * 28


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without the video processor.

    The stock processor requires a video processor, which needs torchvision (unusable beside the CPU
    torch here). Images only need the image processor + tokenizer, so `__init__` takes just those and
    skips the parent's, whose signature would make `video_processor` a required attribute.
    `AutoProcessor` cannot resolve this class from a saved folder (it silently returns the tokenizer):
    reload with `Qwen2VLImageOnlyProcessor.from_pretrained` (see `Qwen2VLAdapter.load_processor`).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_PAD
        self.image_token_id = getattr(tokenizer, "image_token_id", None) or tokenizer.convert_tokens_to_ids(self.image_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


@register_family
class Qwen2VLAdapter(FamilyAdapter):
    family = "qwen2-vl"
    model_types = ("qwen2_vl", "qwen2_5_vl")
    image_placeholder = "<|vision_start|><|image_pad|><|vision_end|>"
    # The merger lives inside `model.visual`, so V names the vision tower's own pieces, not the whole prefix.
    vision_prefixes = ("model.visual.patch_embed.", "model.visual.blocks.")
    projector_prefixes = ("model.visual.merger.",)
    language_prefixes = ("model.language_model.", "lm_head.")

    def feature_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The merger reads the last vision block's output (Qwen2-VL has no feature-layer choice)."""
        core = model.model if hasattr(model, "model") else model
        return {"vision_layer": core.visual.blocks[-1], "projector": core.visual.merger}

    def build_tiny(self, tokenizer, size: TinySize, seed: int = 0):
        """Patch `size.patch_size` with 2×2 merging: a 32px image → 16 patches → 4 LM tokens."""
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        torch.manual_seed(seed)
        merge = 2
        head_dim = size.text_hidden // size.heads
        # mrope splits head_dim/2 rotary frequencies into (temporal, height, width); Qwen uses 1:1.5:1.5.
        half = head_dim // 2
        mrope_section = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        vision = dict(
            depth=size.vision_layers,
            embed_dim=size.vision_hidden,
            hidden_size=size.text_hidden,  # the merger's output width = the LM's hidden size
            mlp_ratio=2,
            num_heads=size.heads,
            patch_size=size.patch_size,
            spatial_merge_size=merge,
            temporal_patch_size=2,
        )
        text = dict(
            **tiny_text_settings(tokenizer, size),
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        )
        config = Qwen2VLConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PAD),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        )
        model = Qwen2VLForConditionalGeneration(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
        # Sides snap to multiples of patch*merge; a square image_size² image keeps its size (4 tokens).
        # max is 2× so a non-square image is not floored to fewer tokens than a square one.
        pixels = size.image_size * size.image_size
        image_processor = Qwen2VLImageProcessorPil(
            patch_size=size.patch_size,
            merge_size=merge,
            temporal_patch_size=2,
            min_pixels=pixels,
            max_pixels=2 * pixels,
        )
        processor = Qwen2VLImageOnlyProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            chat_template=self.template(),
        )
        return model, processor

    def processor_caps(self) -> dict[str, Any]:
        """At most MAX_PIXELS pixels per image (1280 tokens of 28×28 on Qwen2-VL / Qwen2.5-VL), the upper end
        of the 256–1280 token range Qwen2-VL's model card recommends; the released preprocessor configs
        allow 12845056 pixels (16384 tokens). An upper bound: a folder saved with a lower max keeps it."""
        return {"max_pixels": MAX_PIXELS}

    def load_processor(self, path: str | Path, **overrides: Any):
        """Through the image-only subclass: `AutoProcessor` would return a bare tokenizer here.

        The saved max_pixels is capped at `processor_caps()["max_pixels"]` unless `overrides` set
        `max_pixels` (used as given, above the cap too) or `size`. `min_pixels` / `max_pixels` are
        stored where transformers 5 reads them: `size["shortest_edge"]` / `size["longest_edge"]`."""
        processor = Qwen2VLImageOnlyProcessor.from_pretrained(str(path))
        overrides = dict(overrides)
        pixels = {edge: overrides.pop(key) for key, edge in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge"))
                  if key in overrides}
        set_image_options(processor, overrides)
        image_processor = processor.image_processor
        if pixels:
            image_processor.size = _with_size(image_processor.size, **pixels)
        if "longest_edge" not in pixels and "size" not in overrides:
            cap = self.processor_caps()["max_pixels"]
            if (image_processor.size.get("longest_edge") or cap + 1) > cap:
                image_processor.size = _with_size(image_processor.size, longest_edge=cap)
        return processor


def _with_size(size: Any, **edges: int) -> Any:
    """A copy of an image processor's `size` (dict or SizeDict) with `edges` replaced."""
    fields = {**dict(size), **edges}
    return fields if isinstance(size, dict) else type(size)(**fields)
