"""Run inside `torchrun --nproc_per_node 2` by tests/test_deepspeed.py (not a test module itself).

With ACCELERATE_USE_DEEPSPEED=true and ACCELERATE_DEEPSPEED_ZERO_STAGE=N in the environment, every
process runs one-step GradDiff and NPO (NPO's θ0 is its own DeepSpeed engine) and a few masked SalUn
steps (under ZeRO-2 also LoRA NPO and GradDiff with 2 accumulation steps; under ZeRO-3 the LoRA
refusal), and writes what it saw to OUT/report-RANK.json.

    python -m torch.distributed.run --nproc_per_node 2 tests/deepspeed_driver.py WORLD MODEL OUT
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


# ZeRO-2 only: run as named, compared with one process on batch 4 (tests/test_deepspeed.py)
EXTRA = {"lora-npo": {"method": "npo", "scope": "lora"}, "accum-graddiff": {"method": "graddiff", "grad_accum": 2}}


def main() -> None:
    world_dir, model_dir, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mmunlearn.data.store import load_data
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    bundle = load_data(world_dir, "forget_15")
    report: dict = {}
    for method in ("graddiff", "npo"):
        result = unlearn(bundle, UnlearnConfig(method=method, steps=1, batch_size=2, lr=1e-3), out / method,
                         loaded=load_model(model_dir))
        report[method] = {k: result.log[k] for k in ("distributed_type", "processes", "global_batch", "reference",
                                                     "reference_params", "total_params")}

    import torch.distributed as dist

    rank = dist.get_rank()
    report["rank"], report["world"] = rank, dist.get_world_size()
    sys.path.insert(0, str(Path(__file__).parent))
    from dist_driver import salun_keeping_masks

    result = salun_keeping_masks(bundle, model_dir, out, rank, steps=2)
    report["salun"] = {"distributed_type": result.log["distributed_type"]}
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "2":  # LoRA (θ0: adapters off) and accumulation
        for name, extra in EXTRA.items():
            result = unlearn(bundle, UnlearnConfig(steps=1, batch_size=2, lr=1e-3, **extra), out / name,
                             loaded=load_model(model_dir))
            report[name] = {"reference": result.log["reference"], "global_batch": result.log["global_batch"]}
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        from dist_driver import crash_then_resume

        report["resume"] = crash_then_resume(bundle, model_dir, out, "zero3")
        try:
            unlearn(bundle, UnlearnConfig(method="graddiff", scope="lora", steps=1, batch_size=2), out / "lora",
                    loaded=load_model(model_dir))
            report["lora"] = "ran"
        except ValueError as exc:
            report["lora"] = str(exc)
    (out / f"report-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
