"""DeepSpeed ZeRO under the engine's loop: the pieces the loop and θ0 need, kept out of loop.py.

With accelerate's DeepSpeed plugin, `accelerator.backward` runs the engine's backward *and* its step,
so a gradient mask could not go between them. The loop therefore drives the engine itself at the
boundary: `engine.backward(loss)`, then `mask_partitioned_grads` (below), then `engine.step()` (which
clips, steps the optimiser and zeroes the gradients).

Why masks are applied to the reduced, partitioned gradients after backward, not in gradient hooks:
ZeRO-2 reduces gradients into flat partition buffers from its own hooks while backward still runs,
and ZeRO-3 reduce-scatters each parameter's gradient as soon as it is ready, so a tensor hook would race
with those (and see a different layout per stage). After `engine.backward` at the accumulation
boundary every gradient is reduced and sits in this process's partition; a 0/1 mask is the same on every
process (masks are computed from the same global batches), and it commutes with the sum over processes
and micro-batches, so masking the local partition of the reduced gradient equals masking the full
gradient — with no communication. DeepSpeed's clipping runs later, inside `engine.step`, on the masked
gradients, as the non-DeepSpeed path clips after masking.

* ZeRO-1/2 (`DeepSpeedZeroOptimizer`): a parameter's slice in this process's flat partition is its
  `_hp_mapping` fragment: elements [start, start + numel) of the flattened parameter.
* ZeRO-3: this process holds elements [r·P, (r+1)·P) of the flattened parameter (P its partition
  size, r the rank in its partition group; the last partition is zero-padded), read and written with
  `deepspeed.utils.safe_get_local_grad` / `safe_set_local_grad`.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch

SUPPORTED_STAGES = (2, 3)


def deepspeed_requested() -> bool:
    """The launcher asked for DeepSpeed (an accelerate config with `distributed_type: DEEPSPEED`)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def is_deepspeed(accelerator: Any) -> bool:
    return accelerator is not None and str(accelerator.distributed_type).endswith("DEEPSPEED")


def zero_stage(accelerator: Any) -> int:
    return int(accelerator.state.deepspeed_plugin.zero_stage)


def check_available() -> None:
    """One clear error when the extra is missing (accelerate's own message names pip but not the extra)."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as exc:
        raise ValueError("DeepSpeed launches need the deepspeed package: pip install 'mmunlearn[deepspeed]'") from exc


def switch_cpu_state(accelerator: Any, partial: Any, mixed_precision: str) -> None:
    """Turn a multi-process CPU (gloo) Accelerator into a DeepSpeed one, as the FSDP2 switch does.

    accelerate only starts DeepSpeed on accelerators, while DeepSpeed itself runs ZeRO-2/3 on CPU over
    gloo (`DS_ACCELERATOR=cpu`); so the CPU tests go through the very `prepare` path a GPU run takes.
    """
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    if mixed_precision != "no":
        raise ValueError("DeepSpeed on CPU runs in fp32 only (--mixed-precision no)")
    plugin = DeepSpeedPlugin()  # from the environment the launcher set (stage, config file)
    plugin.set_mixed_precision(mixed_precision)
    plugin.select(_from_accelerator_state=True)
    partial.distributed_type = DistributedType.DEEPSPEED
    accelerator.state.distributed_type = DistributedType.DEEPSPEED
    accelerator.state.deepspeed_plugins = plugin
    accelerator.deepspeed_engine_wrapped = None


def check_stage(accelerator: Any) -> int:
    stage = zero_stage(accelerator)
    if stage not in SUPPORTED_STAGES:
        raise ValueError(f"DeepSpeed ZeRO stage {stage} is not supported; use stage 2 or 3 "
                         "(configs/accelerate/gpu-zero2-8.yaml, gpu-zero3-8.yaml) or DDP")
    return stage


def keep_models_whole() -> None:
    """Models built from here on are built whole, as on every other launch: accelerate registers its
    ZeRO-3 config with transformers, which then partitions any model it constructs (`zero.Init`) — the
    model a method deep-copies for θ0, the plain copy saving fills. The engine partitions the trained
    model and θ0 itself when they are prepared (the same load-then-shard order as FSDP2)."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def configure_engine(accelerator: Any, grad_clip: float) -> None:
    """Fill what accelerate cannot infer without a dataloader: the micro-batch size only feeds
    DeepSpeed's throughput bookkeeping (the loop draws its own batches), and clipping belongs to the loop's
    setting, applied by `engine.step` after the masks."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = 1
    if config.get("train_batch_size") == "auto":
        del config["train_batch_size"]  # DeepSpeed derives it: micro-batch × accumulation × processes
    config["gradient_clipping"] = float(grad_clip or 0.0)


def fragment_mask(mask: torch.Tensor, start: int, numel: int, fragment_numel: int) -> torch.Tensor:
    """The part of a full (bool or 0/1) mask that matches a ZeRO-1/2 gradient fragment: elements
    [start, start + numel) of the flattened parameter (the whole mask when the fragment is full-size)."""
    flat = mask.reshape(-1)
    if fragment_numel == flat.numel():
        return flat
    return flat.narrow(0, start, numel)


def partition_mask(mask: torch.Tensor, rank: int, partition_numel: int) -> torch.Tensor:
    """The part of a full (bool or 0/1) mask that matches a ZeRO-3 gradient partition: elements
    [rank·P, (rank+1)·P) of the flattened parameter, zero (False) past its end."""
    flat = mask.reshape(-1)
    start = rank * partition_numel
    out = torch.zeros(partition_numel, dtype=flat.dtype, device=flat.device)
    n = max(0, min(partition_numel, flat.numel() - start))
    if n:
        out[:n] = flat[start:start + n]
    return out


def local_masks(named: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each full mask cut, once after `prepare`, to the part of its parameter's gradient this process
    holds (so under ZeRO-3 a process keeps 1/N of the masks, not a model-sized copy), in the mask's own
    dtype (bool: 1 byte per weight). A parameter with no element in this process's ZeRO-1/2 partition
    gets none."""
    out: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        p = named[name]
        if hasattr(p, "ds_id"):  # ZeRO-3
            from deepspeed import comm as dist

            rank = dist.get_rank(group=p.ds_process_group)
            out[name] = partition_mask(mask, rank, p.ds_tensor.ds_numel).to(p.device)
        elif hasattr(p, "_hp_mapping"):  # ZeRO-1/2
            if p._hp_mapping is not None:
                address = p._hp_mapping.lp_fragment_address
                out[name] = fragment_mask(mask, address.start, address.numel, address.numel).to(p.device).clone()
        else:
            out[name] = mask.to(p.device)
    return out


def mask_partitioned_grads(named: dict[str, torch.nn.Parameter], local: dict[str, torch.Tensor]) -> int:
    """Multiply each masked parameter's gradient, as this process holds it after `engine.backward` at
    the accumulation boundary, by its local mask (`local_masks`; a bool mask multiplies as 0/1 with no
    converted copy). Returns how many pieces were masked."""
    done = 0
    for name, mask in local.items():
        p = named[name]
        if hasattr(p, "ds_id"):  # ZeRO-3
            from deepspeed.utils import safe_get_local_grad, safe_set_local_grad

            grad = safe_get_local_grad(p)
            if grad is None:
                continue
            safe_set_local_grad(p, grad.reshape(-1) * mask.to(grad.device, torch.bool))  # keeps grad's dtype
        elif hasattr(p, "_hp_mapping"):  # ZeRO-1/2: this process's slice of its flat gradient partition
            fragment = p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group)
            if fragment.numel() != mask.numel():
                raise RuntimeError(f"gradient fragment of {name} has {fragment.numel()} elements, its mask "
                                   f"{mask.numel()}: this DeepSpeed optimiser keeps another layout")
            fragment.mul_(mask.to(fragment.device).reshape(fragment.shape))
        elif p.grad is not None:
            p.grad.mul_(mask.to(p.grad.device))
        else:
            continue
        done += 1
    return done


def reference_engine(accelerator: Any, module: torch.nn.Module) -> torch.nn.Module:
    """θ0 as its own DeepSpeed engine in inference mode (no optimiser): partitioned like the trained
    model under ZeRO-3, a plain replica (stage 0) below it, where partitioning a frozen model saves
    nothing the trained model's stage does not already pay. The trained model's config minus the parts
    that belong to training (optimiser, scheduler, clipping)."""
    import deepspeed

    config = _without_auto(copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config))
    stage = int(config.get("zero_optimization", {}).get("stage", 0))
    for key in ("optimizer", "scheduler", "gradient_clipping", "train_batch_size"):
        config.pop(key, None)
    config.setdefault("train_micro_batch_size_per_gpu", 1)
    config.setdefault("gradient_accumulation_steps", accelerator.gradient_accumulation_steps)
    if stage == 3:
        config["zero_optimization"].pop("offload_optimizer", None)
    else:
        config["zero_optimization"] = {"stage": 0}
    engine, *_ = deepspeed.initialize(model=module, config=config)
    engine.eval()
    return engine


def _without_auto(config: Any) -> Any:
    """The config without accelerate's "auto" placeholders (they are filled only for the model
    `accelerator.prepare` sees): DeepSpeed's defaults stand in for them."""
    if isinstance(config, dict):
        return {k: _without_auto(v) for k, v in config.items() if v != "auto"}
    return config


def gathered_state_dict(model: torch.nn.Module, main: bool) -> dict[str, torch.Tensor] | None:
    """Full weights of a ZeRO-3 model on the main process (one parameter gathered at a time, so the
    peak is one full layer, not the model); None elsewhere. A collective: every process calls it."""
    import deepspeed

    full: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            if main:
                full[name] = p.detach().cpu().clone()
    if main:
        persistent = set(model.state_dict().keys())  # not e.g. rotary tables, which the model rebuilds
        for name, b in model.named_buffers():
            if name in persistent:
                full[name] = b.detach().cpu().clone()
    return full if main else None


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 has partitioned this model's parameters (they then hold no data of their own)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())
