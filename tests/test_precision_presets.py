"""Precision and default schedules a 7B user cannot get wrong by accident (issue #29 items 2 and 5).

Precision: the launcher's mixed_precision reaches the run (an explicit "no" used to override every
gpu-*.yaml's bf16), half-precision trainable weights get fp32 master copies (AdamW on bf16/fp16 weights
loses its updates), the saved folder keeps the loaded dtype, and the log says what was in effect.
Presets: a real-size model gets its method's published lr and epochs, never the tiny builds' defaults.
Every expected value below is written out by hand from the rules in train/precision.py and presets.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from helpers import free_port
from mmunlearn.train import precision, presets

FORGET = "forget_15"


# ---------------------------------------------------------------- autocast: flag > launcher > weights > no

@pytest.mark.parametrize("flag,env,weights,expected", [
    ("no", "bf16", torch.bfloat16, ("no", "--mixed-precision")),  # the user's explicit word wins
    (None, "bf16", torch.float32, ("bf16", "launcher (ACCELERATE_MIXED_PRECISION)")),
    (None, None, torch.bfloat16, ("bf16", "weights' dtype")),
    (None, None, torch.float32, ("no", "default")),
    ("bf16", None, torch.float32, ("bf16", "--mixed-precision")),
])
def test_autocast_comes_from_the_flag_then_the_launcher_then_the_weights(monkeypatch, flag, env, weights, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    if env:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", env)
    assert precision.resolve_autocast(flag, weights, cuda=False) == expected


def test_fp16_autocast_on_a_cpu_is_refused_not_silently_dropped(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    with pytest.raises(ValueError, match="fp16 autocast .* needs a GPU"):
        precision.resolve_autocast(None, torch.float16, cuda=False)
    assert precision.resolve_autocast(None, torch.float16, cuda=True) == ("fp16", "weights' dtype")


class _Tied(torch.nn.Module):
    """An embedding tied to the head (one Parameter object), a trainable layer and a frozen one."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 3).to(dtype)
        self.head = torch.nn.Linear(3, 4, bias=False).to(dtype)
        self.head.weight = self.embed.weight
        self.frozen = torch.nn.Linear(3, 3).to(dtype).requires_grad_(False)


def test_half_trainable_weights_get_fp32_master_copies_and_go_back_when_saved():
    model = _Tied(torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    plan = precision.plan("no", model, cuda=False)
    upcast = precision.apply(model, plan)
    assert model.embed.weight.dtype == torch.float32 and model.head.weight is model.embed.weight  # still tied
    assert model.frozen.weight.dtype == torch.bfloat16  # frozen weights stay as loaded: no memory spent
    assert torch.equal(model.embed.weight.to(torch.bfloat16), before["embed.weight"])  # an exact upcast
    # embedding 4×3 = 12 values, counted once although the head shares them
    assert plan.upcast_params == 12 and plan.trainable_dtype == "float32" and plan.master_weights == "fp32"
    assert plan.weights_dtype == "bfloat16"
    with torch.no_grad():
        model.embed.weight.add_(1e-5)  # an update far below bf16's resolution at these magnitudes
    assert not torch.equal(model.embed.weight.to(torch.bfloat16).float(), model.embed.weight)  # kept in fp32
    precision.restore(model, upcast)
    assert model.embed.weight.dtype == torch.bfloat16 and model.frozen.weight.dtype == torch.bfloat16


def test_pure_bf16_is_the_users_choice_but_fp16_is_always_upcast():
    bf16 = _Tied(torch.bfloat16)
    plan = precision.plan("no", bf16, pure_bf16=True, cuda=False)
    assert precision.apply(bf16, plan) == {} and plan.master_weights == "none (pure bf16)"
    assert bf16.embed.weight.dtype == torch.bfloat16
    fp16 = _Tied(torch.float16)
    plan = precision.plan("no", fp16, pure_bf16=True, cuda=False)
    assert precision.apply(fp16, plan) == {"embed.weight": torch.float16}
    assert fp16.embed.weight.dtype == torch.float32 and plan.master_weights == "fp32"


def test_bf16_checkpoint_unlearns_with_fp32_masters_and_stays_bf16_on_disk(small_world, untrained_llava, tmp_path,
                                                                           monkeypatch):
    from mmunlearn.data.store import load_data
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    loaded = load_model(untrained_llava, dtype="bf16")
    n = sum(p.numel() for p in loaded.model.parameters())
    log = unlearn(load_data(small_world, FORGET), UnlearnConfig(method="ga", steps=2, batch_size=2, lr=1e-3),
                  tmp_path / "run", loaded=loaded).log
    assert log["precision"]["autocast"] == "bf16" and log["precision"]["autocast_from"] == "weights' dtype"
    assert log["precision"]["trainable_dtype"] == "float32" and log["precision"]["upcast_params"] == n
    assert log["mixed_precision"] == "bf16"
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}


def test_a_launch_config_that_says_bf16_trains_in_bf16(small_world, untrained_llava, tmp_path):
    """`accelerate launch --config_file` with mixed_precision: bf16 (one CPU process): the run log says bf16
    and where it came from. Before, the CLI's default "no" was passed explicitly and overrode it."""
    config = tmp_path / "bf16.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\n"
                      "num_processes: 1\nuse_cpu: true\nmixed_precision: bf16\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--main_process_port",
           str(free_port()), "-m", "mmunlearn", "unlearn", "--method", "ga", "--model", str(untrained_llava),
           "--data", str(small_world), "--forget-split", FORGET, "--out", str(out), "--steps", "1",
           "--batch-size", "2", "--no-eval"]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = json.loads((out / "unlearn_log.json").read_text())
    assert log["mixed_precision"] == "bf16"
    assert log["precision"]["autocast_from"] == "launcher (ACCELERATE_MIXED_PRECISION)"
    assert log["precision"]["weights_dtype"] == "float32" and log["precision"]["upcast_params"] == 0


# ---------------------------------------------------------------- presets

def _records(n_image: int, n_text: int) -> list:
    return [SimpleNamespace(modality="image+text")] * n_image + [SimpleNamespace(modality="text")] * n_text


class _Sized(torch.nn.Module):
    """A model of a given parameter count that costs no memory (meta device)."""

    def __init__(self, parameters: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.empty(parameters, device="meta"))


def _cfg(preset="auto", lr=None, steps=None):
    return SimpleNamespace(preset=preset, lr=lr, steps=steps)


def _method(name: str):
    from mmunlearn.methods.base import get_method

    cls = get_method(name)
    return cls(cls.make_config({}))


def test_a_7b_model_gets_each_methods_published_setting():
    big = _Sized(7_000_000_000 // 1000 * 1000)
    forget, retain = _records(30, 20), _records(270, 0)
    # GA: MLLMU-Bench's 1e-5 for 1 epoch: ceil(1 × 50 / 8) = 7 steps
    s = presets.resolve_schedule(_method("ga"), big, _cfg(), forget, retain, global_batch=8)
    assert (s.lr, s.steps, s.preset) == (1e-5, 7, "real") and s.chosen_by.startswith("model size (7.00B")
    # SMFA: its paper's 1e-4 for 5 epochs: ceil(5 × 50 / 8) = ceil(31.25) = 32 steps (per stage)
    s = presets.resolve_schedule(_method("smfa"), big, _cfg(), forget, retain, global_batch=8)
    assert (s.lr, s.steps) == (1e-4, 32)
    # ViKeR: its paper's 5e-6 for 1 epoch: ceil(50 / 16) = 4
    s = presets.resolve_schedule(_method("viker"), big, _cfg(), forget, retain, global_batch=16)
    assert (s.lr, s.steps) == (5e-6, 4)
    # MMUnlearner: an epoch over the 30 forget VQA is ceil(30 / 8) = 4 ascent steps, each with
    # round(270 / 30) = 9 retain steps: 4 × 10 = 40 steps
    s = presets.resolve_schedule(_method("mmunlearner"), big, _cfg(), forget, retain, global_batch=8)
    assert (s.lr, s.steps) == (1e-5, 40)
    # what the user gives wins, and the log says so
    s = presets.resolve_schedule(_method("ga"), big, _cfg(lr=3e-6), forget, retain, global_batch=8)
    assert (s.lr, s.steps, s.lr_from, s.steps_from.startswith("real preset")) == (3e-6, 7, "given", True)


def test_the_tiny_defaults_never_reach_a_real_size_model():
    big, tiny = _Sized(presets.REAL_SIZE_PARAMS), _Sized(presets.REAL_SIZE_PARAMS - 1)
    forget, retain = _records(8, 0), _records(8, 0)
    with pytest.raises(ValueError, match="--preset tiny .* 100.0M parameters"):
        presets.resolve_schedule(_method("npo"), big, _cfg("tiny"), forget, retain, 8)
    with pytest.raises(ValueError, match="--preset tiny"):  # one of the two given is not enough
        presets.resolve_schedule(_method("npo"), big, _cfg("tiny", lr=1e-5), forget, retain, 8)
    given = presets.resolve_schedule(_method("npo"), big, _cfg("tiny", lr=2e-5, steps=9), forget, retain, 8)
    assert (given.lr, given.steps, given.preset) == (2e-5, 9, "tiny")
    small = presets.resolve_schedule(_method("npo"), tiny, _cfg(), forget, retain, 8)
    assert (small.lr, small.steps, small.preset) == (5e-4, 60, "tiny")  # NPO's tiny defaults
    forced = presets.resolve_schedule(_method("npo"), tiny, _cfg("real"), forget, retain, 8)
    assert (forced.lr, forced.steps, forced.chosen_by) == (1e-5, 1, "--preset")


def test_every_method_names_the_source_of_its_real_setting():
    from mmunlearn.methods.base import registry

    for name, cls in registry().items():
        assert 0 < cls.real_lr <= 1e-4 and cls.real_epochs > 0 and cls.real_source, name


def test_tune_searches_a_real_size_model_around_the_real_preset(small_world):
    """`mmunlearn tune` on a 7B model: GA's lr is searched over [1e-6, 1e-4] (1e-5 ÷ 10 … × 10), not around
    the tiny 5e-4, and its steps up to one epoch of the forget records at the tuning batch."""
    import math

    from mmunlearn.data.store import load_data
    from mmunlearn.tune import TuneConfig, TuneContext

    bundle = load_data(small_world, FORGET)
    cfg = TuneConfig(model="unused", methods=["ga"], batch_size=4)
    ctx = TuneContext("unused", cfg, None, None, None, bundle, bundle, parameters=7_000_000_000)
    space = ctx.space("ga")
    epoch = math.ceil(len(bundle.train("forget")) / 4)
    assert space["lr"] == ("log", pytest.approx(1e-6), pytest.approx(1e-4))
    assert space["steps"][2] == epoch
    tiny = TuneContext("unused", cfg, None, None, None, bundle, bundle, parameters=2_000_000).space("ga")
    assert tiny["lr"] == ("log", pytest.approx(5e-5), pytest.approx(5e-3)) and tiny["steps"][1:3] == (15, 60)
