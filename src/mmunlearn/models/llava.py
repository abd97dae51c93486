"""LLaVA (1.5 / NeXT-style) family: CLIP vision tower + MLP projector + Llama language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .base import FamilyAdapter, TinySize, register_family, set_image_options, tiny_text_settings


@register_family
class LlavaAdapter(FamilyAdapter):
    family = "llava"
    model_types = ("llava", "llava_next")
    image_placeholder = "<image>"
    vision_prefixes = ("model.vision_tower.",)
    projector_prefixes = ("model.multi_modal_projector.", "model.image_newline")
    language_prefixes = ("model.language_model.", "lm_head.")

    def feature_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        core = model.model if hasattr(model, "model") else model
        tower = getattr(core.vision_tower, "vision_model", core.vision_tower)
        layers = tower.encoder.layers
        index = model.config.vision_feature_layer
        index = index if isinstance(index, int) else index[-1]
        # hidden_states[k] is the output of layers[k-1] (hidden_states[0] = embeddings)
        layer = layers[index] if index < 0 else layers[max(0, index - 1)]
        return {"vision_layer": layer, "projector": core.multi_modal_projector}

    def build_tiny(self, tokenizer, size: TinySize, seed: int = 0):
        from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig
        from transformers import LlavaForConditionalGeneration, LlavaProcessor

        torch.manual_seed(seed)
        vision = CLIPVisionConfig(
            hidden_size=size.vision_hidden,
            intermediate_size=size.vision_hidden * 2,
            num_hidden_layers=size.vision_layers,
            num_attention_heads=size.heads,
            image_size=size.image_size,
            patch_size=size.patch_size,
            projection_dim=size.vision_hidden,
        )
        text = LlamaConfig(**tiny_text_settings(tokenizer, size))
        config = LlavaConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        )
        model = LlavaForConditionalGeneration(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.bos_token_id = None
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size.image_size},
            crop_size={"height": size.image_size, "width": size.image_size},
        )
        processor = LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=size.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=self.template(),
        )
        return model, processor

    def load_processor(self, path: str | Path, **overrides: Any):
        """No cap needed: LLaVA-1.5 resizes every image to one fixed tile (336px → 576 tokens)."""
        from transformers import LlavaProcessor

        processor = LlavaProcessor.from_pretrained(str(path))
        set_image_options(processor, {**self.processor_caps(), **overrides})
        return processor
