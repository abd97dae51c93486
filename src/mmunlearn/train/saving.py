"""Saving a trained model as one loadable HF folder, whatever wrapped or sharded it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.loader import LoadedModel


def save_run_model(accelerator, model: torch.nn.Module, loaded: LoadedModel, out: Path) -> torch.nn.Module:
    """Write the run's model as one loadable HF folder (safetensors) and return the plain model.

    Sharded (FSDP2) weights are gathered first (a collective: every process calls this). A LoRA run
    also keeps its unmerged adapter (`adapter/adapter_model.safetensors`) beside the merged model.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..models.forward import base_model

    if hasattr(model, "peft_config"):
        if accelerator.is_main_process:
            model.save_pretrained(out / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    full = None
    if accelerator.is_fsdp2:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        plain = base_model(model)
        plain.save_pretrained(out, state_dict=full, safe_serialization=True)
        loaded.processor.save_pretrained(out)
    accelerator.wait_for_everyone()
    return model
