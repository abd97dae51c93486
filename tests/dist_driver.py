"""Run inside `torchrun --nproc_per_node 2` by tests/test_distributed.py (not a test module itself).

Each mode runs several short scenarios in one launch (a launch costs two imports of torch and
transformers on two cores) and every process writes what it saw to OUT/report-MODE-RANK.json, so the
tests can check the process count, each rank's samples and weights, and which path was taken.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_driver.py MODE WORLD MODEL OUT
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch


def digest(model: torch.nn.Module) -> dict[str, str]:
    """A hash of every parameter's bytes (full tensors, gathered if sharded)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    return out


def salun_keeping_masks(bundle, model_dir: Path, out: Path, rank: int, steps: int):
    """A short masked SalUn run that saves this rank's gradient masks to OUT/salun-mask-RANK.pt (the
    tests compare them across ranks and check the masked weights never moved)."""
    from mmunlearn.methods.salun import SalUn
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    original_prepare = SalUn.prepare

    def keep_mask(self, ctx):
        original_prepare(self, ctx)
        torch.save(ctx.grad_masks, out / f"salun-mask-{rank}.pt")

    SalUn.prepare = keep_mask
    try:
        return unlearn(bundle, UnlearnConfig(method="salun", steps=steps, batch_size=2, lr=1e-3), out / "salun",
                       loaded=load_model(model_dir))
    finally:
        SalUn.prepare = original_prepare


def one_step(bundle, model_dir: Path, out: Path, method: str, steps: int = 1, vkd_images: int = 8, **extra):
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    args = {"vkd_images": vkd_images} if method == "vkd" else {}
    cfg = UnlearnConfig(method=method, steps=steps, batch_size=2, lr=1e-3, method_args=args, **extra)
    return unlearn(bundle, cfg, out, loaded=load_model(model_dir))


def resume_cfg():
    """GradDiff, 4 steps, a checkpoint every 2: the run every resume scenario interrupts and resumes."""
    from mmunlearn.train.unlearn import UnlearnConfig

    return UnlearnConfig(method="graddiff", steps=4, batch_size=2, lr=1e-3, checkpoint_every=2)


def straight_then_crashed(bundle, model_dir: Path, straight: Path, resumed: Path) -> bool:
    """resume_cfg straight into `straight`; into `resumed` the same run stopped by an exception at step 3
    (after its checkpoint at step 2). True when it stopped there."""
    from mmunlearn.methods.graddiff import GradDiff
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import unlearn

    unlearn(bundle, resume_cfg(), straight, loaded=load_model(model_dir))
    original_loss = GradDiff.loss

    def crash(self, ctx, step):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        return original_loss(self, ctx, step)

    GradDiff.loss = crash
    try:
        unlearn(bundle, resume_cfg(), resumed, loaded=load_model(model_dir))
        return False
    except KeyboardInterrupt:
        return True
    finally:
        GradDiff.loss = original_loss


def crash_then_resume(bundle, model_dir: Path, out: Path, tag: str) -> dict:
    """GradDiff 4 steps straight into OUT/straight-TAG; the same run with a checkpoint every 2 steps,
    stopped by an exception at step 3 into OUT/resumed-TAG, then resumed in this very process. Returns
    what the checkpoint held (its format, which files each process wrote) and the resumed run's steps_run."""
    import torch.distributed as dist

    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import unlearn

    crashed = straight_then_crashed(bundle, model_dir, out / f"straight-{tag}", out / f"resumed-{tag}")
    dist.barrier()
    ckpt = out / f"resumed-{tag}" / "checkpoint"
    seen = {"crashed": crashed, "loop_state": json.loads((ckpt / "loop_state.json").read_text()),
            "files": sorted(str(f.relative_to(ckpt)) for f in ckpt.rglob("*") if f.is_file())}
    dist.barrier()
    result = unlearn(bundle, resume_cfg(), out / f"resumed-{tag}", loaded=load_model(model_dir), resume=True)
    seen["steps_run"] = result.log["steps_run"]
    seen["processes"] = result.log["processes"]
    return seen


def main() -> None:
    mode, world_dir, model_dir, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from accelerate import PartialState

    from mmunlearn.data.store import load_data

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    report: dict = {"rank": rank, "world": world, "backend": state.backend}
    bundle = load_data(world_dir, "forget_15")

    if mode in ("ddp", "fsdp"):
        from mmunlearn.methods.vkd import VKD

        kept = []  # VKD's masks dict, as the run leaves it
        original_prepare = VKD.prepare

        def keep_masks(self, ctx):
            original_prepare(self, ctx)
            kept.append((ctx.grad_masks, sum(m.numel() for m in ctx.grad_masks.values())))

        VKD.prepare = keep_masks
        for method in ("graddiff", "npo", "vkd"):
            result = one_step(bundle, model_dir, out / f"{mode}-{method}", method)
            report[method] = {"distributed_type": result.log["distributed_type"], "processes": result.log["processes"],
                              "global_batch": result.log["global_batch"], "reference": result.log["reference"],
                              "losses": result.log["losses"], "peaks": result.log["peak_memory_mb_per_process"]}
        VKD.prepare = original_prepare
        from mmunlearn.train.loop import LOCAL_MASKS

        masks, full = kept[0]
        local = {n: m for n, m in masks.items() if n != LOCAL_MASKS}
        report["vkd_masks"] = {"local": bool(masks.get(LOCAL_MASKS)), "full_numel": full,
                               "kept_numel": sum(m.to_local().numel() if hasattr(m, "to_local") else m.numel()
                                                 for m in local.values()),
                               "dtypes": sorted({str(m.dtype) for m in local.values()})}
        # VKD distilling one photo a step on two processes (one process has none of the draw: it used to
        # crash in the vision forward), two steps so the distillation term is not zero (θ = θ0 at step 0)
        result = one_step(bundle, model_dir, out / f"{mode}-vkd-1", "vkd", steps=2, vkd_images=1)
        report["vkd-1"] = {"processes": result.log["processes"], "losses": result.log["losses"]}

    if mode == "fsdp":  # a sharded checkpoint, and a resume that skips the steps it holds
        report["resume"] = crash_then_resume(bundle, model_dir, out, "fsdp")

    if mode == "ddp":
        from mmunlearn.train.sampling import RecordSampler

        # the samples each rank draws over three passes of 10 items, 2 per rank per step
        sampler = RecordSampler(list(range(10)), 2, seed=3, rank=rank, world=world)
        report["sampler"] = [sampler.next_local() for _ in range(15)]

        # replicas after several steps, and SalUn's mask on each rank
        result = salun_keeping_masks(bundle, model_dir, out, rank, steps=3)
        report["salun_digest"] = digest(result.loaded.model)

        # 4 steps straight, and the same run stopped after step 3 with a checkpoint at step 2
        report["crashed"] = straight_then_crashed(bundle, model_dir, out / "straight", out / "resumed")

    if mode == "resume":
        from mmunlearn.models.loader import load_model
        from mmunlearn.train.unlearn import unlearn

        result = unlearn(bundle, resume_cfg(), out / "resumed", loaded=load_model(model_dir), resume=True)
        report["steps_run"] = result.log["steps_run"]
        report["processes"] = result.log["processes"]

    if mode == "nan":
        from mmunlearn.cli import app
        from mmunlearn.methods.graddiff import GradDiff

        original_loss = GradDiff.loss

        def poisoned(self, ctx, step):
            terms = original_loss(self, ctx, step)
            if step == 1 and ctx.rank == 1:
                terms["loss"] = terms["loss"] * float("nan")
            return terms

        GradDiff.loss = poisoned
        try:
            app(["unlearn", "--method", "graddiff", "--model", str(model_dir), "--data", str(world_dir),
                 "--forget-split", "forget_15", "--out", str(out / "nan-run"), "--steps", "3", "--batch-size", "2",
                 "--no-eval"])
            report["exit"] = 0
        except SystemExit as exc:
            report["exit"] = exc.code

    if mode == "eval":
        from mmunlearn.cli import app

        try:
            app(["eval", "--model", str(model_dir), "--data", str(world_dir), "--forget-split", "forget_15",
                 "--out", str(out / "eval-2"), "--splits", "forget,test,retain", "--max-records", "25"])
        except SystemExit as exc:
            report["exit"] = exc.code

    (out / f"report-{mode}-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
