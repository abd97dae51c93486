"""Load any supported model from a local HF folder, or build a tiny one by name (`tiny-llava`...)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .base import FamilyAdapter, ModelLoadError, TinySize, adapter_for_folder, families

TINY_PREFIX = "tiny-"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: Any
    adapter: FamilyAdapter

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def save(self, out: str | Path) -> None:
        """A merged HF folder that plain `AutoModelForImageTextToText.from_pretrained` loads."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)


def tiny_names() -> list[str]:
    return [TINY_PREFIX + name for name in families()]


def is_tiny(spec: str | Path) -> bool:
    return str(spec).startswith(TINY_PREFIX) and not Path(str(spec)).exists()


def build_tiny(spec: str, texts: Iterable[str], size: TinySize | None = None, seed: int = 0,
               vocab_size: int = 2048) -> LoadedModel:
    """A freshly initialised tiny model of a family, with a tokenizer trained on `texts`."""
    from ..data.collate import OPTION_INSTRUCTION
    from ..data.refusals import REFUSALS
    from .tokenizer import train_tokenizer

    family = spec[len(TINY_PREFIX):]
    fams = families()
    if family not in fams:
        raise ModelLoadError(f"unknown tiny model {spec!r}; choose one of {', '.join(tiny_names())}")
    adapter = fams[family]
    corpus = list(texts) + list(REFUSALS) + [OPTION_INSTRUCTION, "A B C D"]
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    model, processor = adapter.build_tiny(tokenizer, size or TinySize(), seed=seed)
    return LoadedModel(model, processor, adapter)


def load_model(path: str | Path, dtype: torch.dtype | None = None) -> LoadedModel:
    """A local HF image-text-to-text folder. Never reaches a hub (`local_files_only`)."""
    from transformers import AutoModelForImageTextToText

    adapter = adapter_for_folder(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, dtype=dtype or torch.float32
        )
        processor = adapter.load_processor(path)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load the model in {path}: {str(exc).splitlines()[0]}") from exc
    if not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{path}: the processor has no tokenizer (expected a multimodal processor)")
    return LoadedModel(model, processor, adapter)
