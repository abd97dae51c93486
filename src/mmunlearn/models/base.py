"""Family adapters: everything that differs between LLaVA, Qwen2-VL, Idefics3... lives behind one class.

Methods and the trainer never test `isinstance(model, LlavaFor...)`; they ask the adapter which
parameters are the vision encoder (V), the projector (P) and the language model (W), which modules
LoRA targets, where visual features can be hooked, and how to turn prompts + images into inputs.
A new family is one file that subclasses `FamilyAdapter` and calls `register_family`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from .tokenizer import chat_template

PART_NAMES = ("V", "P", "W")


class ModelLoadError(RuntimeError):
    """A model folder that cannot be loaded (missing, unknown family, broken files)."""


@dataclass
class TinySize:
    """Sizes of a tiny builder; defaults are the measured sweet spot in TINY_MODELS.md."""

    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 128
    text_layers: int = 4
    text_mlp_ratio: int = 4  # facts live in the MLPs: a wide MLP memorises faster per step
    heads: int = 4
    image_size: int = 32
    patch_size: int = 8
    max_positions: int = 512


def tiny_text_settings(tokenizer, size: TinySize) -> dict:
    """Language-model config fields every tiny family shares (each adds its own extras)."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=size.text_hidden * size.text_mlp_ratio,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=size.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


class FamilyAdapter:
    family: str = ""
    model_types: tuple[str, ...] = ()
    image_placeholder: str = "<image>"
    # Parameter-name prefixes (as in model.named_parameters()) of each part.
    vision_prefixes: tuple[str, ...] = ()
    projector_prefixes: tuple[str, ...] = ()
    language_prefixes: tuple[str, ...] = ()
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

    # ---- parts -------------------------------------------------------------------------------
    def part_of(self, param_name: str) -> str:
        """'V', 'P' or 'W' for a parameter name (PEFT's `base_model.model.` prefix is ignored)."""
        name = param_name
        for wrapper in ("base_model.model.",):
            if name.startswith(wrapper):
                name = name[len(wrapper):]
        for part, prefixes in (("V", self.vision_prefixes), ("P", self.projector_prefixes), ("W", self.language_prefixes)):
            if any(name.startswith(p) for p in prefixes):
                return part
        raise KeyError(f"{self.family}: parameter {param_name!r} belongs to no known part (V/P/W)")

    def parameters_by_part(self, model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
        parts: dict[str, list] = {p: [] for p in PART_NAMES}
        for name, param in model.named_parameters():
            parts[self.part_of(name)].append((name, param))
        return parts

    def lora_targets(self, model: torch.nn.Module, parts: Sequence[str] = ("W",)) -> list[str]:
        """Full module names of the Linear layers LoRA should wrap, restricted to `parts`."""
        names = []
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in self.lora_target_modules:
                try:
                    if self.part_of(name + ".weight") in parts:
                        names.append(name)
                except KeyError:
                    continue
        return names

    def feature_modules(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """Modules whose outputs carry intermediate visual features (VKD's default hook points):
        the vision layer the projector reads, and the projector itself."""
        raise NotImplementedError(f"{self.family} adapter does not expose feature modules")

    # ---- inputs ------------------------------------------------------------------------------
    def encode(self, processor: Any, prompts: list[str], images: list[Image.Image | None], padding_side: str = "right"):
        """Prompts (already chat-formatted, one image placeholder per image) + images → model inputs."""
        present = [im for im in images if im is not None]
        processor.tokenizer.padding_side = padding_side
        return processor(text=prompts, images=present or None, return_tensors="pt", padding=True)

    # ---- build / load ------------------------------------------------------------------------
    def build_tiny(self, tokenizer, size: TinySize, seed: int = 0):
        raise NotImplementedError(f"no tiny builder for {self.family}")

    def processor_caps(self) -> dict[str, Any]:
        """Image-processor settings applied by default when a processor is loaded from a folder, so a real
        image costs a bounded number of tokens (tiny builders set their own and are unaffected).
        `load_processor(path, **overrides)` lets a caller override each of them."""
        return {}

    def load_processor(self, path: str | Path, **overrides: Any):
        """The folder's processor, its image processor set to `processor_caps()` then `overrides`."""
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(path))
        set_image_options(processor, {**self.processor_caps(), **overrides})
        return processor

    def template(self) -> str:
        return chat_template(self.image_placeholder)


def set_image_options(processor: Any, options: dict[str, Any]) -> None:
    """Set attributes of a processor's image processor (`do_image_splitting`, `size`...).

    Set after loading rather than passed to `from_pretrained`, whose extra kwargs also land in the
    tokenizer's init kwargs: they would be saved in tokenizer_config.json and, on every later call,
    override the image processor's own settings. A dict given for a SizeDict attribute becomes one.
    ValueError for a setting the image processor does not have."""
    image_processor = getattr(processor, "image_processor", None)
    for key, value in options.items():
        if image_processor is None or not hasattr(image_processor, key):
            raise ValueError(f"unknown processor setting {key!r} for {type(image_processor).__name__}")
        current = getattr(image_processor, key)
        if isinstance(value, dict) and current is not None and not isinstance(current, dict):
            value = type(current)(**value)
        setattr(image_processor, key, value)


_FAMILIES: dict[str, FamilyAdapter] = {}


def register_family(adapter_cls: type[FamilyAdapter]) -> type[FamilyAdapter]:
    _FAMILIES[adapter_cls.family] = adapter_cls()
    return adapter_cls


def families() -> dict[str, FamilyAdapter]:
    from . import llava, qwen2_vl, idefics3  # noqa: F401  (registration side effects)

    return dict(_FAMILIES)


def adapter_for_model_type(model_type: str) -> FamilyAdapter:
    for adapter in families().values():
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in families().values() for t in a.model_types)
    raise ModelLoadError(f"unknown model family {model_type!r}; supported model_type values: {', '.join(known)}")


ADAPTER_CONFIG = "adapter_config.json"
_TINY_PREFIX = "tiny-"


def is_adapter_folder(path: str | Path) -> bool:
    """A peft adapter folder (adapter_config.json, no config.json of its own), e.g. a LoRA run's OUT/adapter/."""
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base_folder(path: str | Path) -> Path:
    """The local folder an adapter was trained on: adapter_config.json's base_model_name_or_path, taken as
    given (absolute, or relative to the working directory) or relative to the adapter folder.

    ModelLoadError when it records none, names a tiny builder (its weights were never saved: only the
    merged model at the run folder's root holds them) or a folder that no longer exists.
    """
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    try:
        base = json.loads(cfg_file.read_text())["base_model_name_or_path"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, OSError) as exc:
        raise ModelLoadError(f"{cfg_file}: unreadable or without base_model_name_or_path ({exc})") from exc
    if not base or not isinstance(base, str):
        raise ModelLoadError(f"{cfg_file} records no base model (base_model_name_or_path is empty); "
                             "load the merged model at the run folder's root instead")
    candidates = [Path(base)] if Path(base).is_absolute() else [Path(base), path / base]
    for candidate in candidates:
        if (candidate / "config.json").is_file() or (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    if base.startswith(_TINY_PREFIX):
        raise ModelLoadError(f"{path}: the adapter's base {base!r} is a tiny model built in memory whose weights "
                             f"were never saved; load the merged model at the run folder's root ({path.parent}) "
                             "instead")
    raise ModelLoadError(f"{path}: the adapter's base model {base} is not a local model folder (moved or deleted?); "
                         f"fix base_model_name_or_path in {cfg_file} or load the merged model at the run folder's root")


# Adapters on adapters (an unlearn run started from another run's adapter) are followed this deep at most.
_MAX_ADAPTERS = 8


def adapter_chain(path: str | Path) -> tuple[Path, list[Path]]:
    """(the full model folder underneath, the adapter folders to apply to it in order): a plain model
    folder is (itself, [])."""
    path = Path(path)
    adapters: list[Path] = []
    while is_adapter_folder(path):
        if len(adapters) >= _MAX_ADAPTERS or path.resolve() in {a.resolve() for a in adapters}:
            raise ModelLoadError(f"{adapters[0]}: its adapters' base models form a loop or a chain deeper than "
                                 f"{_MAX_ADAPTERS}")
        adapters.append(path)
        path = adapter_base_folder(path)
    return path, adapters[::-1]


def adapter_for_folder(path: str | Path) -> FamilyAdapter:
    path, _ = adapter_chain(path)
    config = path / "config.json"
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"{path} is a file, not a model folder (give the Hugging Face folder that holds "
                             "config.json and the weights, or a tiny builder name such as tiny-llava)")
    if not path.is_dir() and str(path).startswith(_TINY_PREFIX):  # finetune and eval take builders; this did not
        raise ModelLoadError(f"{path} is a tiny builder, not a trained model: this command needs a model folder "
                             f"(make one with `mmunlearn finetune --model {path} --data DATA --out DIR`)")
    if not path.is_dir():
        raise ModelLoadError(f"model folder {path} does not exist (give an HF folder, or a tiny builder name such as "
                             "tiny-llava to finetune or eval)")
    if not config.is_file():
        raise ModelLoadError(f"{path} has no config.json: not a Hugging Face model folder")
    try:
        model_type = json.loads(config.read_text())["model_type"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, OSError) as exc:
        raise ModelLoadError(f"{config}: unreadable or without model_type ({exc})") from exc
    return adapter_for_model_type(model_type)
