"""The unlearning engine's guarantees: scopes, exact resume, NaN guard, merged output, multi-process.

Mechanics, not forgetting: the model is the untrained tiny LLaVA (no fine-tuned fixture needed)."""

import pytest
import torch

from mmunlearn.methods.base import registry
from mmunlearn.methods.graddiff import GradDiff
from mmunlearn.models.loader import load_model
from mmunlearn.train.loop import NonFiniteLossError
from mmunlearn.train.unlearn import UnlearnConfig, read_log, unlearn


def _weights(folder):
    """Parameters by their in-memory names (the adapter's V/P/W prefixes refer to these)."""
    return {n: p.detach().clone() for n, p in load_model(folder).model.named_parameters()}


def test_registry_lists_every_baseline():
    names = set(registry())
    assert {"ga", "graddiff", "kl", "npo", "idk", "idkdpo", "salun", "mmunlearner"} <= names
    assert all(cls.summary for cls in registry().values())


@pytest.mark.parametrize("scope,changed,frozen", [("vision", {"V", "P"}, {"W"}), ("language", {"W"}, {"V", "P"})])
def test_scope_limits_what_changes(small_bundle, untrained_llava, tmp_path, scope, changed, frozen):
    bundle, vanilla = small_bundle, untrained_llava
    loaded = load_model(vanilla)
    unlearn(bundle, UnlearnConfig(method="graddiff", steps=3, scope=scope), tmp_path / "u", loaded=loaded)
    before, after = _weights(vanilla), _weights(tmp_path / "u")
    parts = {}
    for name in before:
        parts.setdefault(loaded.adapter.part_of(name), []).append(not torch.equal(before[name], after[name]))
    for part in changed:
        assert any(parts[part]), part
    for part in frozen:
        assert not any(parts[part]), part


def test_lora_scope_saves_a_merged_plain_model(small_bundle, untrained_llava, tmp_path):
    bundle, vanilla = small_bundle, untrained_llava
    result = unlearn(bundle, UnlearnConfig(method="graddiff", steps=3, scope="lora", lr=1e-2), tmp_path / "u",
                     loaded=load_model(vanilla))
    after = _weights(tmp_path / "u")
    assert not any("lora" in k for k in after)
    assert set(after) == set(_weights(vanilla))
    from safetensors.torch import load_file

    assert not any("lora" in k for k in load_file(str(tmp_path / "u" / "model.safetensors")))
    # the unmerged adapter is kept beside the merged model, with the trained (non-zero) B matrices
    adapter = load_file(str(tmp_path / "u" / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    log = read_log(tmp_path / "u")
    assert 0 < log["trainable_share"] < 0.2
    reloaded = load_model(tmp_path / "u")
    assert reloaded.model is not None and result.loaded.model is not None


def test_resume_ends_where_an_uninterrupted_run_ends(small_bundle, untrained_llava, tmp_path, monkeypatch):
    bundle, vanilla = small_bundle, untrained_llava
    cfg = UnlearnConfig(method="graddiff", steps=10, checkpoint_every=4)
    unlearn(bundle, cfg, tmp_path / "straight", loaded=load_model(vanilla))

    original = GradDiff.loss

    def interrupted(self, ctx, step):
        if step == 6:
            raise KeyboardInterrupt("simulated crash")
        return original(self, ctx, step)

    monkeypatch.setattr(GradDiff, "loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        unlearn(bundle, cfg, tmp_path / "resumed", loaded=load_model(vanilla))
    assert (tmp_path / "resumed" / "checkpoint" / "loop_state.json").is_file()
    assert not (tmp_path / "resumed" / "model.safetensors").exists()
    monkeypatch.setattr(GradDiff, "loss", original)
    unlearn(bundle, cfg, tmp_path / "resumed", loaded=load_model(vanilla), resume=True)
    # the resumed run took steps 4–9 only: steps 0–3 came from the checkpoint written at step 4
    assert read_log(tmp_path / "straight")["steps_run"] == 10
    assert read_log(tmp_path / "resumed")["steps_run"] == 6
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    la, lb = read_log(tmp_path / "straight")["losses"], read_log(tmp_path / "resumed")["losses"]
    assert [round(r["loss"], 5) for r in la] == [round(r["loss"], 5) for r in lb]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(small_bundle, untrained_llava, tmp_path, monkeypatch):
    bundle, vanilla = small_bundle, untrained_llava
    original = GradDiff.loss

    def poisoned(self, ctx, step):
        terms = original(self, ctx, step)
        if step == 5:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(GradDiff, "loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="step 5"):
        unlearn(bundle, UnlearnConfig(method="graddiff", steps=10, checkpoint_every=2), tmp_path / "u",
                loaded=load_model(vanilla))
    assert (tmp_path / "u" / "checkpoint" / "state" / ".metadata").is_file()  # a torch.distributed.checkpoint
    assert not (tmp_path / "u" / "model.safetensors").exists()


@pytest.mark.parametrize("schedule, steps, warmup, expected", [
    # transformers' warmup is step/W (step 0 at lr 0); cosine decays over the steps after warmup to 5 %:
    # 0.05 + 0.95·½(1 + cos(π·(s−4)/6)) at s = 5: 0.05 + 0.475·(1 + 0.866025) = 0.936362; s = 9: 0.113638
    ("cosine", 10, 4, [0.0, 0.25, 0.5, 0.75, 1.0, 0.936362, 0.7625, 0.525, 0.2875, 0.113638]),
    ("linear", 4, 0, [1.0, 0.75, 0.5, 0.25]),
    ("constant", 5, 2, [0.0, 0.5, 1.0, 1.0, 1.0]),
])
def test_schedule_is_transformers_with_our_floor(schedule, steps, warmup, expected):
    from mmunlearn.train.loop import LoopConfig, make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, LoopConfig(steps=steps, warmup_steps=warmup, schedule=schedule))
    seen = []
    for _ in range(steps):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected, abs=1e-6)


def test_unknown_schedule_is_one_clear_error():
    from mmunlearn.train.loop import LoopConfig, make_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        make_scheduler(opt, LoopConfig(schedule="step"))


class _TwoLayers(torch.nn.Module):
    """Layer b has no gradient before step 2: it has no AdamW state when the checkpoint (at step 2) is written."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 1), "b": torch.nn.Linear(2, 1)})


def _two_layer_loss(crash_at: int | None = None):
    def step_loss(step, module):
        if step == crash_at:
            raise KeyboardInterrupt("simulated crash")
        x = torch.ones(1, 2)
        out = module.model["a"](x).sum()
        if step >= 2:
            out = out + 3 * module.model["b"](x).sum()
        return {"loss": out}
    return step_loss


def test_resume_gives_a_parameter_that_had_no_optimiser_state_none(tmp_path):
    """Straight: b's AdamW state starts at its first gradient (step 2), so its first move is lr·g/|g| = ±lr.
    A resume that left b the state the fresh optimiser was given to read into (step 1, zero moments) would
    move it by lr·0.744 instead (bias corrections for t = 2: (0.1/0.19) / sqrt(0.001/0.001999)). The
    resumed run must run steps 2 and 3 only and end on the straight run's weights."""
    from mmunlearn.train.loop import LoopConfig, run_loop

    cfg = LoopConfig(steps=4, lr=0.1, checkpoint_every=2, grad_clip=0.0)
    straight = _TwoLayers()
    run_loop(straight, _two_layer_loss(), cfg, checkpoint_root=tmp_path / "straight")
    crashed = _TwoLayers()
    with pytest.raises(KeyboardInterrupt):
        run_loop(crashed, _two_layer_loss(crash_at=3), cfg, checkpoint_root=tmp_path / "resumed")
    resumed = _TwoLayers()
    result = run_loop(resumed, _two_layer_loss(), cfg, checkpoint_root=tmp_path / "resumed", resume=True)
    assert result.steps_run == 2
    start = _TwoLayers().model["b"].weight.detach()
    # b moved twice (steps 2, 3) by -lr each (a gradient of +3 on every weight): -0.2 exactly as straight
    assert torch.allclose(straight.model["b"].weight.detach() - start, torch.full((1, 2), -0.2), atol=1e-4)
    for name, p in straight.named_parameters():
        assert torch.allclose(p, dict(resumed.named_parameters())[name], atol=1e-6), name
