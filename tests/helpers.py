"""Small shared helpers for tests: quick accuracies without the full evaluator, and the fine-tuned fixture."""

from __future__ import annotations

from pathlib import Path

from mmunlearn.eval.engine import option_logprobs
from mmunlearn.eval.metrics import loglik_choice

# The small world's settings (every training phrasing of every question, the world's default, spelled out)
SMALL_WORLD = dict(profiles=6, real=4, holdout=3, seed=0, train_phrasings=3)
# Fine-tune settings for the small world: enough for the 6 people to be memorised (see test_finetune).
SMALL_FINETUNE = dict(stage1_steps=200, stage2_steps=1600, batch_size=16, lr=2e-3, warmup_steps=30, checkpoint_every=0)
# The fixture fine-tuned with that recipe on that world, shipped with the tests (tests/build_fixture.py makes it):
# CI would otherwise spend 7 of its minutes fine-tuning the same 1.5M weights on every run.
SHIPPED_FIXTURE = Path(__file__).parent / "assets" / "tuned-small"
PROVENANCE = "provenance.json"


def cls_acc(loaded, records) -> float:
    """Log-likelihood classification accuracy (constrained to A–D): cheap and stable for tiny models."""
    cls = [r for r in records if r.task == "classification"]
    assert cls, "no classification records"
    lps = option_logprobs(loaded, cls, progress=False)
    return sum(loglik_choice(lp) == r.answer_index for lp, r in zip(lps, cls)) / len(cls)


def accuracies(loaded, bundle) -> dict[str, float]:
    """cls accuracy on forget / retain eval records, split by modality, plus understanding."""
    out = {}
    for split in ("forget", "retain"):
        for modality in ("image+text", "text"):
            recs = [r for r in bundle.eval(split) if r.modality == modality]
            out[f"{split}/{modality}"] = cls_acc(loaded, recs)
    und = bundle.eval("understanding")
    out["understanding_forget"] = cls_acc(loaded, [r for r in und if r.profile_id in bundle.forget_ids])
    out["understanding_retain"] = cls_acc(loaded, [r for r in und if r.profile_id in bundle.retain_ids])
    return out


def generated_cls_acc(loaded, records) -> float:
    """MLLMU-Bench-style accuracy: the option the generated reply commits to (refusals score 0)."""
    from mmunlearn.data.record import OPTION_LETTERS
    from mmunlearn.eval.engine import generate
    from mmunlearn.eval.metrics import chosen_option

    cls = [r for r in records if r.task == "classification"]
    replies = generate(loaded, cls, max_new_tokens=12, progress=False)
    return sum(chosen_option(t, r.options, OPTION_LETTERS) == r.answer_letter for t, r in zip(replies, cls)) / len(cls)


def both_accuracies(loaded, bundle, split: str) -> dict[str, float]:
    recs = bundle.eval(split)
    return {"loglik": cls_acc(loaded, recs), "generated": generated_cls_acc(loaded, recs)}


def reply_rates(loaded, records) -> dict[str, float]:
    """Shares of refusing and of degenerate replies (32 new tokens, as the evaluator) to the generation
    questions among `records`: what a method that keeps these people must not produce for them."""
    from mmunlearn.eval.engine import generate
    from mmunlearn.eval.metrics import is_degenerate, is_refusal

    gen = [r for r in records if r.task == "generation"]
    assert gen, "no generation records"
    replies = generate(loaded, gen, max_new_tokens=32, progress=False)
    return {"refusal": sum(map(is_refusal, replies)) / len(gen),
            "degenerate": sum(map(is_degenerate, replies)) / len(gen)}


def fixture_cache_key(settings: dict, package_root, versions: tuple[str, ...] = ()) -> str:
    """What a cached test fixture is keyed by: its settings, every source file of the package that made
    it (path and bytes) and the library versions. Any change gives a new key, so a stale fixture is
    never reused (MMUNLEARN_TEST_CACHE; CI sets none and uses the shipped fixture)."""
    import hashlib
    import json

    root = Path(package_root)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("|".join(versions).encode())
    return digest.hexdigest()[:16]


def fixture_recipe(finetune_settings: dict) -> dict:
    """What the fine-tune of `finetune_settings` learns with (FinetuneConfig, defaults filled in)."""
    from mmunlearn.train.finetune import FinetuneConfig, learning_recipe

    return learning_recipe(FinetuneConfig(**finetune_settings))


def shipped_fixture_matches(shipped: Path, world_dir: Path, finetune_settings: dict) -> tuple[bool, str]:
    """Whether the shipped fixture was fine-tuned on this very world (its fingerprint) with this very recipe,
    and why not."""
    import json

    path = Path(shipped) / PROVENANCE
    if not path.is_file() or not (Path(shipped) / "train_log.json").is_file():
        return False, f"no shipped fixture at {shipped}"
    provenance = json.loads(path.read_text())
    if json.loads((Path(world_dir) / "world.json").read_text()).get("fingerprint") != provenance.get("world_fingerprint"):
        return False, "the small world differs from the one the shipped fixture was fine-tuned on"
    if fixture_recipe(finetune_settings) != provenance.get("recipe"):
        return False, "the fixture's recipe differs from the one the shipped fixture was fine-tuned with"
    return True, "the shipped fixture was fine-tuned on this world with this recipe"


def fixture_folder(bundle, world_dir, settings: dict, tmp_dir, *, shipped: Path | None = SHIPPED_FIXTURE,
                   refit: bool = False, cache_dir=None, package_root=None, versions: tuple[str, ...] = (),
                   finetune_fn=None) -> tuple[Path, dict, str]:
    """The body of conftest's `tuned_small`: the shipped fixture copied into `tmp_dir` when it was made from
    this world and recipe (and `refit` is off), else `fine_tuned_fixture`. Returns (run folder, train log,
    how: "shipped", or why it was fine-tuned)."""
    import json
    import shutil

    from mmunlearn.data.store import replace_folder

    ok, why = shipped_fixture_matches(shipped, world_dir, settings["finetune"]) if shipped else (False, "none shipped")
    if refit:
        ok, why = False, "MMUNLEARN_TEST_REFIT=1"
    if ok:
        out = Path(tmp_dir) / "shipped"
        if not (out / "train_log.json").is_file():  # a copy: tests may write beside the weights, never into tests/
            half = out.with_name(out.name + ".tmp")
            shutil.rmtree(half, ignore_errors=True)
            shutil.copytree(shipped, half)
            replace_folder(half, out)
        return out, json.loads((out / "train_log.json").read_text()), "shipped"
    out, log = fine_tuned_fixture(bundle, cache_dir, settings, package_root, versions, tmp_dir, finetune_fn)
    return out, log, f"fine-tuned ({why})"


def fine_tuned_fixture(bundle, cache_dir, settings: dict, package_root, versions: tuple[str, ...], tmp_dir,
                       finetune_fn=None):
    """The body of conftest's `tuned_small` (a plain function, so a test can prove the cache is reused):
    with `cache_dir` a finished run (train_log.json) at CACHE/tuned_small-KEY is taken as it is and anything
    else is fine-tuned there; without one it is fine-tuned in `tmp_dir`. The recipe is settings["finetune"];
    `finetune_fn` defaults to mmunlearn.train.finetune.finetune, looked up at call time.
    Returns (run folder, train log)."""
    import importlib
    import json

    ft = importlib.import_module("mmunlearn.train.finetune")
    if cache_dir:  # keyed by what made it: a changed recipe, thread count, source file or library builds anew
        out = Path(cache_dir) / f"tuned_small-{fixture_cache_key(settings, package_root, versions)}"
    else:
        out = Path(tmp_dir) / "vanilla"
    if not (out / "train_log.json").is_file():
        (finetune_fn or ft.finetune)(bundle, ft.FinetuneConfig(**settings["finetune"]), out)
    return out, json.loads((out / "train_log.json").read_text())


def assert_masks_agree_and_hold(out, before: dict, after: dict) -> None:
    """SalUn's masks saved by ranks 0 and 1 (OUT/salun-mask-RANK.pt) are identical, and between the
    weights `before` and `after` no masked entry moved while some unmasked ones did."""
    import torch

    m0, m1 = torch.load(out / "salun-mask-0.pt"), torch.load(out / "salun-mask-1.pt")
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)
    kept = changed = 0
    for name, mask in m0.items():
        frozen = mask == 0
        assert torch.equal(before[name][frozen], after[name][frozen]), name  # masked entries never move
        kept += int(mask.sum())
        changed += int((before[name] != after[name]).sum())
    assert 0 < changed <= kept


def free_port() -> int:
    """A port nobody listens on (torchrun's --master_port 0 hangs the rendezvous here)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_process_npo(config_file, model_dir, world_dir, out, timeout: int = 600):
    """`accelerate launch --config_file CONFIG -m mmunlearn unlearn --method npo` for 2 steps of batch 2:
    the real CLI on a repo launch file. Returns the finished process and the run's log."""
    import os
    import subprocess
    import sys

    from mmunlearn.train.unlearn import read_log

    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
           "--main_process_port", str(free_port()), "-m", "mmunlearn", "unlearn", "--method", "npo", "--model",
           str(model_dir), "--data", str(world_dir), "--forget-split", "forget_15", "--out", str(out),
           "--steps", "2", "--batch-size", "2", "--no-eval"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, read_log(out)


def assert_same_adamw_step(got: dict, expected: dict, before: dict, lr: float, label: str) -> None:
    """Two runs took the same AdamW step(s) from `before`: a distributed run (`got`) against one process on the
    union batch (`expected`).

    AdamW's first step moves a weight by lr·g/(|g| + 1e-8): ±lr wherever the gradient is not tiny, so a gradient
    weighted differently (a per-process token mean, a process's batch counted twice) flips or shrinks those moves
    by up to 2·lr, and every weight the union step moved by lr/2 or more (|g| ≥ 1e-8) must agree within lr/20.
    Where |g| is near 1e-8 the move is a fraction of lr that float summation order sets (measured: a weight moved
    0.16·lr by one and 0.25·lr by the other under ZeRO-2 with accumulation, on an Intel Xeon), so there only the
    count is held: at most 1e-4 of all weights may differ by more than 1e-6."""
    import torch

    assert got.keys() == expected.keys(), label
    off = 0
    for name, tensor in expected.items():
        diff = (got[name] - tensor).abs()
        clear = diff[(tensor - before[name]).abs() >= lr / 2]  # the union step's gradient well above eps
        assert clear.numel() == 0 or float(clear.max()) <= lr / 20, (label, name, float(clear.max()))
        off += int((diff > 1e-6).sum())
        assert torch.isfinite(got[name]).all(), (label, name)
    assert off <= 1e-4 * sum(t.numel() for t in expected.values()), (label, off)
