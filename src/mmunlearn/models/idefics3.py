"""Idefics3 / SmolVLM family: SigLIP-style vision + pixel-shuffle connector + Llama language model."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import SmolVLMProcessor
from transformers.processing_utils import ProcessorMixin

from .base import FamilyAdapter, TinySize, register_family, set_image_options, tiny_text_settings


class SmolVLMImageOnlyProcessor(SmolVLMProcessor):
    """SmolVLM processor without the video processor (which needs torchvision) or num2words.

    Both are only used for video prompts. `apply_chat_template` is delegated to ProcessorMixin
    because SmolVLM's override reads video-processor defaults. `AutoProcessor` cannot resolve this
    class from a folder; reload through `Idefics3Adapter.load_processor`.
    """

    def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169, chat_template: str | None = None, **kwargs):
        self.fake_image_token = getattr(tokenizer, "fake_image_token", None) or "<fake_token_around_image>"
        self.image_token = getattr(tokenizer, "image_token", None) or "<image>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.end_of_utterance_token = getattr(tokenizer, "end_of_utterance_token", None) or "<end_of_utterance>"
        self.global_image_token = getattr(tokenizer, "global_image_token", None) or "<global-img>"
        self.image_seq_len = image_seq_len
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)


@register_family
class Idefics3Adapter(FamilyAdapter):
    family = "idefics3"
    model_types = ("idefics3", "smolvlm")
    image_placeholder = "<image>"
    vision_prefixes = ("model.vision_model.",)
    projector_prefixes = ("model.connector.",)
    language_prefixes = ("model.text_model.", "lm_head.")

    def feature_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The connector reads the last encoder layer (after post_layernorm)."""
        core = model.model if hasattr(model, "model") else model
        return {"vision_layer": core.vision_model.encoder.layers[-1], "projector": core.connector}

    def encode(self, processor: Any, prompts: list[str], images: list[Image.Image | list[Image.Image] | None], padding_side: str = "right"):
        """Idefics3 pairs images with prompts by nesting (one list per sample, [] for text-only);
        a flat list would be split by counting placeholders, which breaks mixed batches."""
        nested = [[] if im is None else list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
        processor.tokenizer.padding_side = padding_side
        has_images = any(nested)
        return processor(text=prompts, images=nested if has_images else None, return_tensors="pt", padding=True)

    def build_tiny(self, tokenizer, size: TinySize, seed: int = 0):
        """One 32px tile, no splitting: (32/8)² = 16 patches, pixel-shuffled by 2 → 4 `<image>` tokens."""
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil
        from transformers import Idefics3Processor

        torch.manual_seed(seed)
        scale_factor = 2
        # Idefics3Processor adds `<end_of_utterance>` to the tokenizer it is given: keep the caller's intact
        # and size the vocabulary after the processor exists.
        tokenizer = copy.deepcopy(tokenizer)
        image_processor = Idefics3ImageProcessorPil(
            do_image_splitting=False,
            size={"longest_edge": size.image_size},
            max_image_size={"longest_edge": size.image_size},
        )
        processor = Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            image_seq_len=(size.image_size // size.patch_size) ** 2 // scale_factor**2,
            chat_template=self.template(),
        )
        vision = dict(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.heads,
            image_size=size.image_size,
            patch_size=size.patch_size,
        )
        text = dict(model_type="llama", **tiny_text_settings(tokenizer, size))
        config = Idefics3Config(
            vision_config=vision,
            text_config=text,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            scale_factor=scale_factor,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = Idefics3ForConditionalGeneration(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
        return model, processor

    def processor_caps(self) -> dict[str, Any]:
        """No image splitting: with it a photo becomes up to 4×4 tiles plus a global view (Idefics3-8B:
        up to 17 × 169 = 2873 tokens); without it, one `max_image_size` tile (169 tokens on Idefics3-8B,
        64 on SmolVLM-256M)."""
        return {"do_image_splitting": False}

    def load_processor(self, path: str | Path, **overrides: Any):
        """Idefics3Processor loads as is; a SmolVLM folder goes through the image-only subclass.
        `processor_caps()` apply unless overridden (`do_image_splitting=True` restores the tiles)."""
        from transformers import Idefics3Processor

        path = Path(path)
        kind = ""
        for name, key in (("processor_config.json", "processor_class"), ("config.json", "model_type")):
            if (path / name).is_file():
                kind = str(json.loads((path / name).read_text()).get(key, "")).lower()
                if kind:
                    break
        cls = SmolVLMImageOnlyProcessor if "smolvlm" in kind else Idefics3Processor
        processor = cls.from_pretrained(str(path))
        set_image_options(processor, {**self.processor_caps(), **overrides})
        return processor
