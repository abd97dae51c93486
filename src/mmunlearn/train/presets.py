"""Learning rate and step count when the user gives none: one set for the tiny builds, one for real checkpoints.

The tiny defaults (`Method.default_lr` / `default_steps`) were chosen on 1.6M-parameter models, where an
lr of 5e-4 is gentle; on a 7B checkpoint the same lr is 50× what the papers use and wrecks the model in a
few steps. Real checkpoints therefore get each method's published setting (`Method.real_lr`,
`real_epochs`, `real_source`: the method's paper, or MLLMU-Bench/open-unlearning for the baselines),
with the epochs turned into optimiser steps for the data and global batch at hand.

`--preset auto` (the default) picks by parameter count: under `REAL_SIZE_PARAMS` a model is one of the
tiny builds. `--preset tiny` on a real-size model is refused unless both --lr and --steps are given, so a
7B run can never fall back to the tiny defaults by accident.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

PRESETS = ("auto", "tiny", "real")
REAL_SIZE_PARAMS = 100_000_000  # the tiny builds have ~1–10M; the smallest real MLLMs (SmolVLM) ~256M


@dataclass
class Schedule:
    lr: float
    steps: int
    preset: str  # tiny | real
    chosen_by: str  # why this preset (--preset, or the model's size)
    lr_from: str  # the preset's source, or --lr / --config
    steps_from: str
    parameters: int

    def as_log(self) -> dict[str, Any]:
        return asdict(self)


def model_parameters(model: torch.nn.Module) -> int:
    """Every parameter once (DeepSpeed ZeRO-3 partitions report their full size as ds_numel)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += int(getattr(p, "ds_numel", 0) or p.numel())
    return total


def choose_preset(preset: str, parameters: int, explicit_lr: bool, explicit_steps: bool) -> tuple[str, str]:
    """(tiny | real, why) for `preset` on a model of `parameters`; refuses the tiny defaults on a real model."""
    if preset not in PRESETS:
        raise ValueError(f"--preset must be one of {', '.join(PRESETS)} (got {preset!r})")
    real_size = parameters >= REAL_SIZE_PARAMS
    size = f"{parameters / 1e9:.2f}B" if parameters >= 1e9 else f"{parameters / 1e6:.1f}M"
    if preset == "auto":
        return ("real" if real_size else "tiny"), f"model size ({size} parameters; real from {REAL_SIZE_PARAMS // 10**6}M)"
    if preset == "tiny" and real_size and not (explicit_lr and explicit_steps):
        raise ValueError(f"--preset tiny holds the defaults of the tiny test builds; this model has {size} parameters "
                         "and they would wreck it: use --preset real (or auto), or give both --lr and --steps")
    return preset, "--preset"


def resolve_schedule(method: Any, model: torch.nn.Module, cfg: Any, forget: list, retain: list,
                     global_batch: int) -> Schedule:
    """lr and steps for an unlearning run: the user's (`cfg.lr`, `cfg.steps`) where given, else the preset's.

    `method` is the method (an instance: its options may set its cadence, e.g. MMUnlearner's ascent
    period); `forget` the forget records it trains on, `retain` the retain records."""
    parameters = model_parameters(model)
    name, why = choose_preset(getattr(cfg, "preset", "auto") or "auto", parameters,
                              cfg.lr is not None, cfg.steps is not None)
    lr_default, steps_default, source = preset_defaults(method, name, forget, retain, global_batch)
    return Schedule(lr=cfg.lr if cfg.lr is not None else lr_default,
                    steps=cfg.steps if cfg.steps is not None else steps_default,
                    preset=name, chosen_by=why,
                    lr_from="given" if cfg.lr is not None else source,
                    steps_from="given" if cfg.steps is not None else source,
                    parameters=parameters)


def preset_defaults(method: Any, preset: str, forget: list, retain: list, global_batch: int) -> tuple[float, int, str]:
    """(lr, steps, where they come from) of the `tiny` or `real` preset for `method` (an instance) on this data."""
    if preset == "real":
        steps = method.steps_for_epochs(method.real_epochs, forget, retain, global_batch)
        return method.real_lr, steps, f"real preset: {method.real_source}"
    return method.default_lr, method.default_steps, "tiny preset (chosen on the tiny builds: docs/methods)"


def epochs_to_steps(epochs: float, records: int, global_batch: int) -> int:
    """Optimiser steps for `epochs` passes over `records` at `global_batch` records a step (at least 1)."""
    return max(1, math.ceil(epochs * records / max(1, global_batch)))
