"""DeepSpeed ZeRO-2/3 under the engine's loop (train/zero.py).

The config files, the extras, the mask slicing on hand-made partitioned gradients and the refusal lines need
no DeepSpeed. The rest needs the `deepspeed` extra (CI installs `.[dev,deepspeed]`) and fails without it: two
CPU processes (gloo, `DS_ACCELERATOR=cpu`) run ZeRO-2 and ZeRO-3 for real, checked against one process holding
the union of their batches (as tests/test_distributed.py does for DDP and FSDP2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_same_adamw_step, free_port
from mmunlearn.train import zero

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
DRIVER = Path(__file__).with_name("deepspeed_driver.py")
LR = 1e-3


def needs_deepspeed() -> None:
    """The ZeRO tests fail, not skip, without DeepSpeed: CI installs the `deepspeed` extra, and a skipped
    equivalence test would pass for a broken ZeRO path."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        pytest.fail("deepspeed is not installed: pip install -e '.[deepspeed]' (CI installs it)")


# --- without deepspeed --------------------------------------------------------------------------------

@pytest.mark.parametrize("name,stage,processes,cpu", [("gpu-zero2-8.yaml", 2, 8, False),
                                                      ("gpu-zero3-8.yaml", 3, 8, False),
                                                      ("cpu-zero3.yaml", 3, 2, True)])
def test_zero_config_files_parse_with_accelerates_loader_and_name_their_stage(name, stage, processes, cpu):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / name))
    assert str(config.distributed_type).endswith("DEEPSPEED")
    assert config.deepspeed_config["zero_stage"] == stage
    assert config.deepspeed_config["zero3_init_flag"] is False  # models load whole, the engine partitions
    assert config.num_processes == processes and bool(config.use_cpu) == cpu
    assert config.mixed_precision == ("no" if cpu else "bf16")


def test_extras_name_deepspeed_and_gpu_without_touching_the_torch_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert any(r.startswith("deepspeed>=0.15") for r in extras["deepspeed"])
    assert "gpu" in extras and not any(r.startswith("torch") for r in extras["gpu"])
    assert "torch==2.13.0" in project["dependencies"]


def test_fragment_mask_is_the_zero2_slice_of_the_flattened_mask():
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # flattened: 1 0 1 0 1 1
    assert zero.fragment_mask(mask, start=2, numel=3, fragment_numel=3).tolist() == [1.0, 0.0, 1.0]
    assert zero.fragment_mask(mask, start=5, numel=1, fragment_numel=1).tolist() == [1.0]
    assert zero.fragment_mask(mask, start=2, numel=3, fragment_numel=6).tolist() == [1, 0, 1, 0, 1, 1]  # full-size


def test_partition_mask_is_the_zero3_partition_zero_padded():
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])  # 5 elements over 2 processes: partitions of 3
    assert zero.partition_mask(mask, rank=0, partition_numel=3).tolist() == [1.0, 0.0, 1.0]
    assert zero.partition_mask(mask, rank=1, partition_numel=3).tolist() == [0.0, 1.0, 0.0]  # last one padded
    assert zero.partition_mask(mask.reshape(1, 5), rank=2, partition_numel=3).tolist() == [0.0, 0.0, 0.0]


def _zero2_param(shape, start, numel, fragment):
    """A parameter as ZeRO-1/2 leaves it: its slice of this process's flat gradient partition."""
    p = torch.nn.Parameter(torch.zeros(shape))
    p._index_in_param_group = 0
    p._hp_mapping = SimpleNamespace(lp_fragment_address=SimpleNamespace(start=start, numel=numel),
                                    get_lp_grad_fragment=lambda index: fragment)
    return p


def test_masks_multiply_only_this_processs_gradient_fragments():
    fragment = torch.tensor([2.0, 3.0, 4.0])  # elements 2..4 of a 2×3 weight
    held = _zero2_param((2, 3), start=2, numel=3, fragment=fragment)
    elsewhere = torch.nn.Parameter(torch.zeros(4))
    elsewhere._hp_mapping = None  # no element of it in this process's partition
    plain = torch.nn.Parameter(torch.zeros(2))
    plain.grad = torch.tensor([5.0, 6.0])
    masks = {"held": torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), "elsewhere": torch.zeros(4),
             "plain": torch.tensor([0.0, 1.0])}
    named = {"held": held, "elsewhere": elsewhere, "plain": plain}
    local = zero.local_masks(named, masks)
    assert local.keys() == {"held", "plain"} and local["held"].tolist() == [1.0, 0.0, 1.0]
    assert zero.mask_partitioned_grads(named, local) == 2
    assert fragment.tolist() == [2.0, 0.0, 4.0]  # 2·1, 3·0, 4·1: mask elements 2, 3, 4 are 1, 0, 1
    assert plain.grad.tolist() == [0.0, 6.0]


def test_unsupported_stage_is_one_line():
    fake = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=1)))
    with pytest.raises(ValueError, match="DeepSpeed ZeRO stage 1 is not supported; use stage 2 or 3"):
        zero.check_stage(fake)


def test_missing_deepspeed_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'mmunlearn\[deepspeed\]'"):
        zero.check_available()


def test_a_single_process_deepspeed_launch_is_one_error_line(untrained_llava, small_world, tmp_path):
    """No extra: the line names it. With it: DeepSpeed needs a distributed launch."""
    from typer.testing import CliRunner

    from mmunlearn.cli import app

    out = tmp_path / "ds"
    result = CliRunner().invoke(app, ["unlearn", "--method", "graddiff", "--model", str(untrained_llava), "--data",
                                      str(small_world), "--forget-split", "forget_15", "--out", str(out), "--steps",
                                      "1", "--no-eval"], env={"ACCELERATE_USE_DEEPSPEED": "true"})
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert ("mmunlearn[deepspeed]" in lines[0]) or ("DeepSpeed needs a multi-process launch" in lines[0])
    assert not out.exists()


def test_blank_image_in_place_runs_the_vision_layers_after_the_embeddings_and_changes_nothing(small_world,
                                                                                             untrained_llava):
    """Under DeepSpeed a text-only batch encodes the blank image where a real one would be encoded
    (right after the token embeddings), so every process runs the layers in the same order; the
    logits are the plain ones and the vision layers get a zero gradient."""
    from mmunlearn.data.collate import TrainCollator
    from mmunlearn.data.store import load_data
    from mmunlearn.models.forward import AnswerLogits, StepModule, base_model
    from mmunlearn.models.loader import load_model

    loaded = load_model(untrained_llava)
    records = [r for r in load_data(small_world, "forget_15").train("forget") if r.modality == "text"][:2]
    batch = TrainCollator(loaded.adapter, loaded.processor)(records)
    assert "pixel_values" not in batch
    module = StepModule(loaded.model, loaded.adapter, loaded.processor)
    plain = module({"x": AnswerLogits(batch)})["x"][0].detach()
    module.uniform_parts = module.blank_in_place = True
    order: list[str] = []
    base = base_model(loaded.model)
    vision = next(m for n, m in base.named_modules() if n.endswith("vision_tower"))
    hooks = [base.get_input_embeddings().register_forward_hook(lambda *a: order.append("embeddings")),
             vision.register_forward_hook(lambda *a: order.append("vision"))]
    logits = module({"x": AnswerLogits(batch)})["x"][0]
    for h in hooks:
        h.remove()
    assert order == ["embeddings", "vision"]  # as in an image batch
    assert torch.equal(logits.detach(), plain)
    logits.sum().backward()
    grads = [p.grad for p in vision.parameters() if p.grad is not None]  # (layers past the feature layer: none)
    assert grads and all(not g.any() for g in grads)


# --- with deepspeed: two CPU processes ---------------------------------------------------------------

def _launch(stage: int, world_dir: Path, model_dir: Path, out: Path) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(DRIVER), str(world_dir), str(model_dir), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_DEEPSPEED": "true",
           "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(stage), "DS_ACCELERATOR": "cpu"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def zero_runs(small_world, untrained_llava, tmp_path_factory):
    needs_deepspeed()
    runs = {}
    for stage in (2, 3):
        out = tmp_path_factory.mktemp(f"zero{stage}")
        proc = _launch(stage, small_world, untrained_llava, out)
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[stage] = (out, [json.loads((out / f"report-{r}.json").read_text()) for r in (0, 1)])
    return runs


@pytest.fixture(scope="module")
def union_runs(small_world, untrained_llava, tmp_path_factory):
    """One process, the union of both processes' batches (batch 4 = 2 processes × 2)."""
    needs_deepspeed()
    from mmunlearn.data.store import load_data
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    bundle = load_data(small_world, "forget_15")
    out = tmp_path_factory.mktemp("union")
    for method in ("graddiff", "npo"):
        unlearn(bundle, UnlearnConfig(method=method, steps=1, batch_size=4, lr=LR), out / method,
                loaded=load_model(untrained_llava))
    from deepspeed_driver import EXTRA

    for name, extra in EXTRA.items():
        unlearn(bundle, UnlearnConfig(steps=1, batch_size=4, lr=LR, **extra), out / name,
                loaded=load_model(untrained_llava))
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.parametrize("stage", [2, 3])
def test_two_processes_really_run_deepspeed_with_theta0_as_its_own_engine(zero_runs, stage):
    _, (r0, r1) = zero_runs[stage]
    assert (r0["world"], r1["world"]) == (2, 2) and {r0["rank"], r1["rank"]} == {0, 1}
    for method in ("graddiff", "npo"):
        assert r0[method]["distributed_type"] == "DEEPSPEED" and r0[method]["processes"] == 2
        assert r0[method]["global_batch"] == 4
    assert r0["salun"]["distributed_type"] == "DEEPSPEED"
    assert r0["npo"]["reference"] == ("copy-zero3" if stage == 3 else "copy-zero0")
    assert r0["npo"]["reference_params"] == r0["npo"]["total_params"]  # a full copy, counted whole if partitioned
    if stage == 3:
        assert "not supported under DeepSpeed ZeRO-3" in r0["lora"]
    else:
        assert r0["lora-npo"]["reference"] == "disabled-adapter"  # LoRA's θ0: the adapters switched off
        assert r0["accum-graddiff"]["global_batch"] == 8  # 2 processes × 2 × 2 accumulation steps


@pytest.mark.parametrize("stage,method", [(2, "graddiff"), (2, "npo"), (3, "graddiff"), (3, "npo"),
                                          (2, "lora-npo"), (2, "accum-graddiff")])
def test_one_zero_step_equals_one_step_on_the_union_batch(zero_runs, union_runs, untrained_llava, stage, method):
    out, _ = zero_runs[stage]
    before, two, one = _weights(untrained_llava), _weights(out / method), _weights(union_runs / method)
    assert any(not torch.equal(before[k], one[k]) for k in before), "the single-process step changed nothing"
    assert_same_adamw_step(two, one, before, LR, f"zero{stage}-{method}")


@pytest.mark.parametrize("stage", [2, 3])
def test_masked_weights_stay_byte_identical_under_zero(zero_runs, untrained_llava, stage):
    from mmunlearn.models.loader import load_model

    from helpers import assert_masks_agree_and_hold

    out, _ = zero_runs[stage]
    before = {n: p.detach().clone() for n, p in load_model(untrained_llava).model.named_parameters()}
    after = {n: p.detach().clone() for n, p in load_model(out / "salun").model.named_parameters()}
    assert_masks_agree_and_hold(out, before, after)


def test_zero3_checkpoint_is_partitioned_and_resume_runs_only_the_remaining_steps(zero_runs):
    """ZeRO-3 on 2 processes: the engine's own checkpoint, one optimiser partition per process (no process
    gathered the model), and the resumed run took steps 2 and 3 only and ends where the straight run ends."""
    out, (r0, r1) = zero_runs[3]
    for report in (r0, r1):
        seen = report["resume"]
        assert seen["crashed"] and seen["loop_state"]["format"] == "deepspeed" and seen["loop_state"]["step"] == 2
        assert seen["processes"] == 2 and seen["steps_run"] == 2
    partitions = [f for f in r0["resume"]["files"] if f.startswith("state/") and "optim_states" in f]
    assert len(partitions) == 2, r0["resume"]["files"]  # one per process
    straight, resumed = _weights(out / "straight-zero3"), _weights(out / "resumed-zero3")
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_cpu_zero3_config_file_launches_two_processes_through_the_cli(small_world, untrained_llava, tmp_path):
    """The repo's CPU ZeRO-3 launch file, the real CLI: two processes, θ0 partitioned, one folder."""
    needs_deepspeed()
    from helpers import launch_two_process_npo
    from mmunlearn.models.loader import load_model

    out = tmp_path / "run"

    _, log = launch_two_process_npo(CONFIGS / "cpu-zero3.yaml", untrained_llava, small_world, out, timeout=900)
    assert log["processes"] == 2 and log["distributed_type"] == "DEEPSPEED" and log["global_batch"] == 4
    assert log["steps_run"] == 2 and log["reference"] == "copy-zero3"
    assert load_model(out).model is not None
