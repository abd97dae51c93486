"""The engine's scale features on one process: lean θ0, gradient accumulation, gradient checkpointing,
mixed precision, and the launch checks that refuse a run before anything is written.
(Several processes: tests/test_distributed.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from typer.testing import CliRunner

from mmunlearn.data.collate import TrainCollator
from mmunlearn.data.store import load_data
from mmunlearn.models.forward import AnswerLogits, StepModule, VisualFeatures
from mmunlearn.models.loader import load_model
from mmunlearn.models.reference import AdapterReference, FrozenReference, vision_copy
from mmunlearn.train.scope import LoraSettings, apply_scope
from mmunlearn.train.unlearn import UnlearnConfig, read_log, unlearn


@pytest.fixture(scope="module")
def bundle(small_world):
    return load_data(small_world, "forget_15")


def _batch(loaded, bundle, n=4):
    records = [r for r in bundle.train("forget") if r.modality == "image+text"][:n]
    return TrainCollator(loaded.adapter, loaded.processor)(records)


def test_disabled_adapter_gives_the_deep_copys_logits(untrained_llava, bundle):
    loaded = load_model(untrained_llava)
    frozen_copy = copy.deepcopy(loaded.model)
    model = apply_scope(loaded.model, loaded.adapter, "lora", LoraSettings(r=4, alpha=8))
    torch.manual_seed(0)
    with torch.no_grad():  # make the adapter matter: LoRA's B starts at zero
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    module = StepModule(model, loaded.adapter, loaded.processor)
    batch = _batch(loaded, bundle)
    via_adapter = AdapterReference(module).answer_logits(batch)[0]
    via_copy = FrozenReference(frozen_copy, loaded.adapter, "copy").answer_logits(batch)[0]
    adapted = module({"x": AnswerLogits(batch)})["x"][0]
    assert torch.allclose(via_adapter, via_copy, atol=1e-5)
    assert (adapted - via_copy).abs().max() > 1e-2  # the adapter is live outside the reference
    assert module.training  # the reference switched eval mode on and back off


def test_vkd_teacher_is_the_vision_half_only_and_gives_the_same_features(untrained_llava, bundle):
    loaded = load_model(untrained_llava)
    model = loaded.model
    vp = sum(p.numel() for n, p in model.named_parameters() if loaded.adapter.part_of(n) in ("V", "P"))
    teacher = vision_copy(model, loaded.adapter)
    assert sum(p.numel() for p in teacher.parameters()) == vp
    assert model.model.language_model is not None  # the original keeps its language model
    images = [r.image for r in bundle.train("retain") if r.image is not None][:3]
    pixels = dict(loaded.processor.image_processor(images=images, return_tensors="pt"))
    request = {"f": VisualFeatures(pixels, "vision_layer,projector")}
    with torch.no_grad():
        lean = StepModule(teacher, loaded.adapter)(request)["f"]
        full = StepModule(copy.deepcopy(model), loaded.adapter)(request)["f"]
    assert set(lean) == {"projected", "vision_layer", "projector"}
    for key in lean:
        assert torch.equal(lean[key], full[key]), key


def _one_step(bundle, model_dir, out, **kwargs):
    return unlearn(bundle, UnlearnConfig(steps=1, lr=1e-3, **kwargs), out, loaded=load_model(model_dir))


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_two_accumulated_micro_batches_equal_one_double_batch(untrained_llava, bundle, tmp_path, monkeypatch):
    """NPO without its retain term is a mean over samples: two micro-batches of 2 average to exactly the
    mean over the 4 (the token-mean losses would weight the micro-batches by their token counts)."""
    from mmunlearn.methods.npo import NPO

    calls = []
    original = NPO.loss
    monkeypatch.setattr(NPO, "loss", lambda self, ctx, step: calls.append(step) or original(self, ctx, step))
    args = {"method": "npo", "method_args": {"retain_term": "false"}}
    accumulated = _one_step(bundle, untrained_llava, tmp_path / "acc", batch_size=2, grad_accum=2, **args)
    assert calls == [0, 0]  # two micro-batches for the one optimiser step
    whole = _one_step(bundle, untrained_llava, tmp_path / "whole", batch_size=4, **args)
    assert read_log(tmp_path / "acc")["global_batch"] == read_log(tmp_path / "whole")["global_batch"] == 4
    before = load_model(untrained_llava).model
    assert _max_diff(before, whole.loaded.model) > 5e-4  # the step moved weights by about lr
    assert _max_diff(accumulated.loaded.model, whole.loaded.model) < 5e-5


def test_gradient_checkpointing_recomputes_and_takes_the_same_step(untrained_llava, bundle, tmp_path, monkeypatch):
    """Every layer goes through torch's checkpoint (as transformers binds it) with the flag, none
    without it, and the step is the same."""
    import transformers.modeling_utils as hf

    calls = []
    real_checkpoint = hf.checkpoint
    monkeypatch.setattr(hf, "checkpoint", lambda *a, **k: calls.append(1) or real_checkpoint(*a, **k))
    runs = {}
    for name, flag in (("plain", False), ("ckpt", True)):
        calls.clear()
        result = unlearn(bundle, UnlearnConfig(method="graddiff", steps=1, lr=1e-3, gradient_checkpointing=flag),
                         tmp_path / name, loaded=load_model(untrained_llava))
        runs[name] = (len(calls), result.loaded.model)
    # GradDiff's step: two forwards (forget, retain) through 4 decoder layers, at least, checkpointed
    assert runs["plain"][0] == 0 and runs["ckpt"][0] >= 8
    assert _max_diff(runs["ckpt"][1], runs["plain"][1]) < 1e-6


def test_gradient_checkpointing_works_on_lora(untrained_llava, bundle, tmp_path):
    result = _one_step(bundle, untrained_llava, tmp_path / "lora", method="graddiff", scope="lora",
                       gradient_checkpointing=True)
    before = load_model(untrained_llava).model
    assert _max_diff(before, result.loaded.model) > 0


def test_bf16_autocast_computes_in_bf16_and_trains(untrained_llava, bundle, tmp_path):
    seen = set()
    loaded = load_model(untrained_llava)
    layer = loaded.model.model.language_model.layers[0].mlp.down_proj
    layer.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    result = unlearn(bundle, UnlearnConfig(method="graddiff", steps=2, lr=1e-3, mixed_precision="bf16"),
                     tmp_path / "bf16", loaded=loaded)
    assert seen == {torch.bfloat16}
    assert result.log["mixed_precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.log["losses"])
    assert next(result.loaded.model.parameters()).dtype == torch.float32  # weights stay in their dtype


def _cli(args, env=None):
    from mmunlearn.cli import app

    return CliRunner().invoke(app, args, env=env)


@pytest.mark.parametrize("extra,message", [
    (["--dtype", "bf17"], "unknown dtype 'bf17'"),
    (["--mixed-precision", "fp9"], "unknown mixed precision 'fp9'"),
    (["--grad-accum", "0"], "gradient accumulation must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be greater than 0"),
])
def test_bad_launch_settings_are_one_error_line_and_nothing_written(untrained_llava, small_world, tmp_path, extra,
                                                                    message):
    out = tmp_path / "run"
    result = _cli(["unlearn", "--method", "graddiff", "--model", str(untrained_llava), "--data", str(small_world),
                   "--forget-split", "forget_15", "--out", str(out), "--steps", "1", "--no-eval", *extra])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.output
    assert not out.exists()
