"""Trainable scope: which parameters an unlearning run may change.

`full` all; `vision` V+P (W frozen — VKD); `language` W only; `lora` peft adapters on the family's
LoRA target modules (in W by default), merged back into a plain HF folder when saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

SCOPES = ("full", "vision", "language", "lora")


@dataclass
class LoraSettings:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    parts: tuple[str, ...] = ("W",)


def apply_scope(model: torch.nn.Module, adapter, scope: str, lora: LoraSettings | None = None) -> torch.nn.Module:
    """Freeze/unfreeze (or wrap with LoRA) in place; returns the model to train."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if scope == "lora":
        from peft import LoraConfig, get_peft_model

        lora = lora or LoraSettings()
        for p in model.parameters():
            p.requires_grad_(False)
        targets = adapter.lora_targets(model, lora.parts)
        if not targets:
            raise ValueError(f"no LoRA target modules found in parts {lora.parts} of this {adapter.family} model")
        config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                            bias="none")
        return get_peft_model(model, config)
    parts: Sequence[str] = {"full": ("V", "P", "W"), "vision": ("V", "P"), "language": ("W",)}[scope]
    for name, p in model.named_parameters():
        p.requires_grad_(adapter.part_of(name) in parts)
    return model


def trainable_count(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
