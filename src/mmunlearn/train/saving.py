"""Saving a trained model as one loadable HF folder, whatever wrapped or sharded it."""

from __future__ import annotations

from pathlib import Path

import torch

from ..data.store import honour_umask
from ..models.loader import LoadedModel


def save_run_model(accelerator, model: torch.nn.Module, loaded: LoadedModel, out: Path,
                   base: str | Path | None = None, restore_dtypes: dict[str, torch.dtype] | None = None
                   ) -> torch.nn.Module:
    """Write the run's model as one loadable HF folder (safetensors) and return the plain model.

    `restore_dtypes`: parameters upcast to fp32 for training (train/precision.py) and the dtype they were
    loaded in; they are saved, and left, in it (a bf16 checkpoint stays bf16, not twice its size).

    Sharded (FSDP2) weights are gathered first (a collective: every process calls this). A LoRA run
    also keeps its unmerged adapter (`adapter/adapter_model.safetensors`) beside the merged model — in a
    subfolder: an adapter_config.json at the root would make transformers apply it again on load. Its
    adapter_config.json names `base` (the run's input model folder), absolute, so `--model OUT/adapter` loads.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..models.forward import base_model

    if hasattr(model, "peft_config"):
        if accelerator.is_main_process:
            record_adapter_base(model, base)
            model.save_pretrained(out / "adapter", safe_serialization=True)
        model = model.merge_and_unload()
    plain = base_model(model)
    from .zero import gathered_state_dict, is_partitioned

    if is_partitioned(model):  # DeepSpeed ZeRO-3: gathered a parameter at a time onto the main process
        full = gathered_state_dict(plain, accelerator.is_main_process)
        plain = unsharded_copy(plain, full) if accelerator.is_main_process else None
    elif accelerator.is_fsdp2:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        plain = unsharded_copy(plain, full) if accelerator.is_main_process else None
    if accelerator.is_main_process:
        from .precision import restore

        restore(plain, restore_dtypes or {})
        out.mkdir(parents=True, exist_ok=True)
        plain.save_pretrained(out, safe_serialization=True)
        loaded.processor.save_pretrained(out)
        honour_umask(out)
    accelerator.wait_for_everyone()
    return model


def record_adapter_base(model: torch.nn.Module, base: str | Path | None) -> None:
    """Point the peft configs' base_model_name_or_path at a local folder that still holds the base: the
    run's input (`base`), else the folder the model was loaded from; absolute, so it resolves from anywhere.
    Left as peft set it when neither is a folder (a tiny model built in memory: the loader then explains)."""
    from ..models.base import ADAPTER_CONFIG
    from ..models.forward import base_model

    candidates = [base, getattr(getattr(base_model(model), "config", None), "_name_or_path", None)]
    for candidate in candidates:
        if candidate and ((Path(candidate) / "config.json").is_file() or (Path(candidate) / ADAPTER_CONFIG).is_file()):
            for cfg in model.peft_config.values():
                cfg.base_model_name_or_path = str(Path(candidate).resolve())
            return


def unsharded_copy(sharded: torch.nn.Module, full_state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain model of the sharded one's class and config holding the gathered weights: built on the
    meta device (no memory, no random init) and filled in place, so even a 7B model costs one copy."""
    cls = next(c for c in type(sharded).__mro__ if not c.__name__.startswith("FSDP"))
    with torch.device("meta"):
        plain = cls(sharded.config)
    missing, unexpected = plain.load_state_dict(full_state, strict=False, assign=True)
    tied = set(getattr(plain, "all_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise RuntimeError(f"gathered weights do not fit the model: {len(missing)} missing, {len(unexpected)} unexpected")
    plain.tie_weights()
    plain.generation_config = sharded.generation_config
    return plain
