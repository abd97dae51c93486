"""Data parallelism for real: two processes started by torchrun (accelerate's `--cpu --num_processes 2`
starts one on this accelerate version), checked against one process holding the union of their batches.

Each launch runs several scenarios (tests/dist_driver.py) and every process reports what it saw; the
one-process comparisons run in this pytest process. The expected values come from the single-process
run with the global batch, never from the distributed code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_same_adamw_step, free_port
from mmunlearn.models.loader import load_model
from mmunlearn.train.unlearn import UnlearnConfig, read_log, unlearn

DRIVER = Path(__file__).with_name("dist_driver.py")
METHODS = ("graddiff", "npo", "vkd")


def launch(mode: str, world_dir: Path, model_dir: Path, out: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(DRIVER), mode, str(world_dir), str(model_dir), str(out)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=600)


def reports(out: Path, mode: str) -> list[dict]:
    return [json.loads((out / f"report-{mode}-{rank}.json").read_text()) for rank in (0, 1)]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def named_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Parameters by their in-memory names (masks use these; LLaVA's file keeps older names)."""
    return {n: p.detach().clone() for n, p in load_model(folder).model.named_parameters()}


LR = 1e-3


@pytest.fixture(scope="module")
def ddp_run(small_world, untrained_llava, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = launch("ddp", small_world, untrained_llava, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, reports(out, "ddp")


@pytest.fixture(scope="module")
def union_runs(small_world, untrained_llava, tmp_path_factory):
    """One process, the union of both processes' batches (batch 4 = 2 processes × 2)."""
    from mmunlearn.data.store import load_data

    bundle = load_data(small_world, "forget_15")
    out = tmp_path_factory.mktemp("union")
    for method in METHODS:
        args = {"vkd_images": 8} if method == "vkd" else {}
        unlearn(bundle, UnlearnConfig(method=method, steps=1, batch_size=4, lr=LR, method_args=args),
                out / method, loaded=load_model(untrained_llava))
    unlearn(bundle, UnlearnConfig(method="vkd", steps=2, batch_size=4, lr=LR, method_args={"vkd_images": 1}),
            out / "vkd-1", loaded=load_model(untrained_llava))
    return out


@pytest.mark.parametrize("method", METHODS)
def test_logged_losses_are_the_global_batch_s_not_rank_0_s(ddp_run, union_runs, method):
    """Every logged term is reduced over the processes: both ranks log the one-process union run's value
    (rank 0's own share alone differs from it), and the log keeps each process's peak memory."""
    _, (r0, r1) = ddp_run
    one = read_log(union_runs / method)["losses"][0]
    for report in (r0, r1):
        row = report[method]["losses"][0]
        for term, value in one.items():
            if term not in ("step", "lr", "time_s"):
                assert row[term] == pytest.approx(value, rel=1e-4, abs=1e-6), (method, term)
        assert len(report[method]["peaks"]) == 2 and min(report[method]["peaks"]) > 0


def test_vkd_distils_one_photo_on_two_processes_like_one_process(ddp_run, union_runs, untrained_llava):
    """vkd_images=1 on 2 processes: runs (rank 1 holds none of the draw; it pads with the photo at weight 0)
    and its second step's distillation term — no longer 0 once the student moved — equals one process's."""
    out, (r0, _) = ddp_run
    assert r0["vkd-1"]["processes"] == 2
    one = read_log(union_runs / "vkd-1")["losses"]
    two = r0["vkd-1"]["losses"]
    assert one[-1]["vkd"] > 0
    assert two[-1]["vkd"] == pytest.approx(one[-1]["vkd"], rel=1e-3)
    assert_same_adamw_step(weights(out / "ddp-vkd-1"), weights(union_runs / "vkd-1"), weights(untrained_llava),
                           LR, "vkd-1")


def test_two_processes_really_run(ddp_run):
    _, (r0, r1) = ddp_run
    assert (r0["world"], r1["world"]) == (2, 2) and {r0["rank"], r1["rank"]} == {0, 1}
    assert r0["backend"] == "gloo"
    for method in METHODS:
        assert r0[method]["processes"] == 2 and r0[method]["distributed_type"] == "MULTI_CPU"
        assert r0[method]["global_batch"] == 4


def test_ranks_draw_disjoint_samples_that_cover_every_item(ddp_run):
    _, (r0, r1) = ddp_run
    for step_a, step_b in zip(r0["sampler"], r1["sampler"]):
        assert len(step_a) == len(step_b) == 2 and not set(step_a) & set(step_b)
    # 15 steps × 4 = 60 draws = 6 passes over 10 items: every item exactly 6 times
    drawn = [i for step in r0["sampler"] + r1["sampler"] for i in step]
    assert sorted(drawn) == sorted(list(range(10)) * 6)


@pytest.mark.parametrize("method", METHODS)
def test_one_ddp_step_equals_one_step_on_the_union_batch(ddp_run, union_runs, untrained_llava, method):
    out, _ = ddp_run
    before, two, one = weights(untrained_llava), weights(out / f"ddp-{method}"), weights(union_runs / method)
    moved = [k for k in before if not torch.equal(before[k], one[k])]
    assert moved, "the single-process step changed nothing"
    assert_same_adamw_step(two, one, before, LR, method)


def test_replicas_stay_identical_and_masks_agree_across_ranks(ddp_run, untrained_llava):
    out, (r0, r1) = ddp_run
    assert r0["salun_digest"] == r1["salun_digest"]
    from helpers import assert_masks_agree_and_hold

    assert_masks_agree_and_hold(out, named_weights(untrained_llava), named_weights(out / "salun"))


def test_resume_on_two_processes_skips_the_done_steps_and_ends_where_a_straight_run_ends(
        ddp_run, small_world, untrained_llava):
    out, (r0, r1) = ddp_run
    assert r0["crashed"] and r1["crashed"]
    assert (out / "resumed" / "checkpoint" / "rng_1.pt").is_file()  # every process's RNG was saved
    assert not (out / "resumed" / "model.safetensors").exists()
    proc = launch("resume", small_world, untrained_llava, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for report in reports(out, "resume"):
        assert report["processes"] == 2
        assert report["steps_run"] == 2  # steps 2 and 3 only: 0 and 1 came from the checkpoint
    straight, resumed = weights(out / "straight"), weights(out / "resumed")
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name
    assert [round(r["loss"], 5) for r in read_log(out / "straight")["losses"]] == \
        [round(r["loss"], 5) for r in read_log(out / "resumed")["losses"]]


def test_nan_on_one_rank_stops_both_with_the_error_and_writes_no_model(small_world, untrained_llava, tmp_path):
    proc = launch("nan", small_world, untrained_llava, tmp_path)
    for report in reports(tmp_path, "nan"):
        assert report["exit"] == 2
    assert proc.stderr.count("error: unlearn:graddiff: loss became non-finite at step 1 on process 1") == 2
    assert not (tmp_path / "nan-run" / "model.safetensors").exists()
    assert not (tmp_path / "nan-run" / "unlearn_log.json").exists()


@pytest.fixture(scope="module")
def fsdp_run(small_world, untrained_llava, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
           "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}
    proc = launch("fsdp", small_world, untrained_llava, out, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, reports(out, "fsdp")


@pytest.mark.parametrize("method", METHODS)
def test_fsdp2_step_equals_the_union_step_and_saves_one_loadable_folder(fsdp_run, union_runs, untrained_llava,
                                                                        method):
    out, (r0, _) = fsdp_run
    assert r0[method]["distributed_type"] == "FSDP" and r0[method]["processes"] == 2
    if method == "vkd":
        assert r0[method]["reference"] == "vision-copy-sharded"
    reloaded = load_model(out / f"fsdp-{method}")  # a gathered, plain HF folder, strictly loaded
    assert reloaded.model is not None
    assert_same_adamw_step(weights(out / f"fsdp-{method}"), weights(union_runs / method), weights(untrained_llava),
                           LR, method)


def test_fsdp2_checkpoint_is_written_in_shards_and_resume_runs_only_the_remaining_steps(fsdp_run):
    """Under FSDP2 on 2 processes: the checkpoint is a torch.distributed.checkpoint with one shard file per
    process (no process gathered the model), and the resumed run took steps 2 and 3 only and ends on the
    weights of the uninterrupted run."""
    out, (r0, r1) = fsdp_run
    for report in (r0, r1):
        seen = report["resume"]
        assert seen["crashed"] and seen["loop_state"]["format"] == "dcp" and seen["loop_state"]["step"] == 2
        assert seen["processes"] == 2 and seen["steps_run"] == 2
    files = r0["resume"]["files"]
    assert "state/.metadata" in files and "state/__0_0.distcp" in files and "state/__1_0.distcp" in files
    assert "rng_0.pt" in files and "rng_1.pt" in files
    straight, resumed = weights(out / "straight-fsdp"), weights(out / "resumed-fsdp")
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name


def test_fsdp2_keeps_only_each_process_s_shard_of_the_masks(fsdp_run, ddp_run):
    """Under FSDP2 the full bool masks computed before the loop are replaced by this process's shards for
    the run (nothing model-sized kept); under DDP every process keeps the whole (replicated) masks."""
    _, (f0, f1) = fsdp_run
    for report in (f0, f1):
        seen = report["vkd_masks"]
        assert seen["local"] and seen["dtypes"] == ["torch.bool"]
        assert 0 < seen["kept_numel"] < 0.75 * seen["full_numel"], seen  # about half on 2 processes
    assert f0["vkd_masks"]["kept_numel"] + f1["vkd_masks"]["kept_numel"] == f0["vkd_masks"]["full_numel"]
    _, (d0, _) = ddp_run
    assert not d0["vkd_masks"]["local"] and d0["vkd_masks"]["kept_numel"] == d0["vkd_masks"]["full_numel"]


def test_accelerate_config_file_launches_two_fsdp2_processes_through_the_cli(small_world, untrained_llava, tmp_path):
    """The repo's CPU FSDP2 launch file, the real CLI: two processes, sharded, one folder written by one."""
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "cpu-fsdp2.yaml"
    out = tmp_path / "run"
    from helpers import launch_two_process_npo

    proc, log = launch_two_process_npo(config, untrained_llava, small_world, out)
    assert log["processes"] == 2 and log["distributed_type"] == "FSDP" and log["global_batch"] == 4
    assert log["steps_run"] == 2 and log["reference"] == "copy-sharded"
    assert proc.stdout.count("npo: 2 steps") == 1  # the main process alone reports
    assert load_model(out).model is not None


def test_sharded_evaluation_equals_one_process(small_world, untrained_llava, tmp_path):
    """`mmunlearn eval` on two processes (each scores every other record) writes the summary and the
    per-record details that one process writes."""
    from typer.testing import CliRunner

    from mmunlearn.cli import app

    args = ["eval", "--model", str(untrained_llava), "--data", str(small_world), "--forget-split", "forget_15",
            "--splits", "forget,test,retain", "--max-records", "25"]
    single = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "eval-1")])
    assert single.exit_code == 0, single.output
    proc = launch("eval", small_world, untrained_llava, tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    one = json.loads((tmp_path / "eval-1" / "summary.json").read_text())
    two = json.loads((tmp_path / "eval-2" / "summary.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    rows1 = [json.loads(x) for x in (tmp_path / "eval-1" / "details.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (tmp_path / "eval-2" / "details.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows1] == [r["id"] for r in rows2] and len(rows1) == 75
    assert [r["generated"] for r in rows1] == [r["generated"] for r in rows2]
    for split, cells in one["metrics"].items():
        for modality, values in cells.items():
            for metric, value in values.items():
                assert two["metrics"][split][modality][metric] == pytest.approx(value, abs=1e-4), \
                    (split, modality, metric)
