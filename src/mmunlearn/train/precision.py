"""Which precision a run trains in, decided once and written into its log.

Three things decide it, and a 7B run goes wrong silently when any of them is guessed:

* **autocast** (accelerate's `mixed_precision`): `--mixed-precision` when given; else what the launcher
  says (`accelerate launch --config_file …` exports `ACCELERATE_MIXED_PRECISION`: every gpu-*.yaml says
  bf16); else the weights' own half dtype (bf16 weights compute in bf16); else none. An explicit value
  used to be passed always ("no" by default), which overrode the launcher's bf16 without a word.
* **master weights**: AdamW on fp16 or bf16 weights loses its updates (fp16's eps rounds to 0; a bf16
  weight cannot hold an update below 2^-8 of itself). Trainable parameters loaded in half precision are
  therefore upcast to fp32 for the optimiser (frozen ones stay as loaded, so a vision-scope run does
  not pay for the language model), and cast back when the model is saved. `--pure-bf16` keeps bf16
  trainable weights (half the optimiser-side memory, the user's explicit choice); fp16 is always upcast.
* **DeepSpeed**: its engine keeps its own fp32 master copy when its config says bf16/fp16, so the
  weights are left as loaded and the log says whose master copy it is.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch

MIXED_PRECISION = ("no", "bf16", "fp16")
HALF = {torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class PrecisionPlan:
    autocast: str  # what accelerate's autocast runs in: no | bf16 | fp16
    autocast_from: str  # --mixed-precision | launcher (ACCELERATE_MIXED_PRECISION) | weights' dtype | default
    weights_dtype: str  # the dtype the model was loaded in (its frozen parameters stay in it)
    trainable_dtype: str = ""  # what the optimiser updates (filled by `apply`)
    master_weights: str = ""  # fp32 | none (pure bf16) | DeepSpeed's
    upcast_params: int = 0  # trainable parameters upcast to fp32 for the run
    pure_bf16: bool = False

    def as_log(self) -> dict:
        return asdict(self)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def weights_dtype(model: torch.nn.Module) -> torch.dtype:
    """The model's floating dtype as loaded (the most common one among its parameters)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def resolve_autocast(requested: str | None, weights: torch.dtype, cuda: bool | None = None) -> tuple[str, str]:
    """(autocast, where it came from): the flag, else the launcher's setting, else the weights' half dtype."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if requested is not None:
        choice, source = requested, "--mixed-precision"
    elif os.environ.get("ACCELERATE_MIXED_PRECISION"):
        choice, source = os.environ["ACCELERATE_MIXED_PRECISION"].lower(), "launcher (ACCELERATE_MIXED_PRECISION)"
    elif weights in HALF:
        choice, source = HALF[weights], "weights' dtype"
    else:
        choice, source = "no", "default"
    if choice not in MIXED_PRECISION:
        raise ValueError(f"unknown mixed precision {choice!r} (from {source}); choose one of {', '.join(MIXED_PRECISION)}")
    if choice == "fp16" and not cuda:
        raise ValueError(f"fp16 autocast (from {source}) needs a GPU; on the CPU use --mixed-precision bf16 or no "
                         "(and --dtype bf16 or fp32 for fp16 weights)")
    return choice, source


def plan(requested: str | None, model: torch.nn.Module, pure_bf16: bool = False, cuda: bool | None = None) -> PrecisionPlan:
    """The run's precision before anything trains (refusing what cannot work, such as fp16 on a CPU)."""
    loaded = weights_dtype(model)
    autocast, source = resolve_autocast(requested, loaded, cuda)
    return PrecisionPlan(autocast=autocast, autocast_from=source, weights_dtype=_name(loaded), pure_bf16=pure_bf16)


def apply(model: torch.nn.Module, precision: PrecisionPlan, deepspeed_half: bool = False) -> dict[str, torch.dtype]:
    """Upcast the trainable half-precision parameters to fp32 (in place; ties stay tied: a shared
    Parameter is one object). Returns {name: dtype it was loaded in} for `restore`. Call after the scope
    has set requires_grad and before the optimiser and θ0 are built."""
    upcast: dict[str, torch.dtype] = {}
    seen: set[int] = set()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if deepspeed_half:
        precision.master_weights = "DeepSpeed's (fp32 in its optimiser)"
    else:
        for name, p in trainable:
            if id(p) in seen or p.dtype not in HALF:
                continue
            if p.dtype == torch.bfloat16 and precision.pure_bf16:
                continue
            seen.add(id(p))
            upcast[name] = p.dtype
            p.data = p.data.float()
        precision.master_weights = "none (pure bf16)" if precision.pure_bf16 and any(
            p.dtype == torch.bfloat16 for _, p in trainable) else "fp32"
    precision.upcast_params = sum(p.numel() for n, p in trainable if n in upcast)
    dtypes = {p.dtype for _, p in trainable}
    precision.trainable_dtype = ",".join(sorted(_name(d) for d in dtypes)) or "none"
    return upcast


def restore(model: torch.nn.Module, upcast: dict[str, torch.dtype]) -> None:
    """Cast the upcast parameters back to the dtype they were loaded in (the saved folder keeps its dtype)."""
    if not upcast:
        return
    for name, p in model.named_parameters():
        if name in upcast and p.dtype != upcast[name]:
            p.data = p.data.to(upcast[name])

