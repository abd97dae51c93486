"""Masks that scale (issue #29 item 3): exact top-k by streaming selection, bool masks, the same masks on
every process, and masks sharded like their parameters. Expected masks are written out by hand in the
comments (never computed with the function under test); the random cases check against a plain sort
that spells out the documented tie rule."""

from __future__ import annotations

import random
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils._python_dispatch import TorchDispatchMode

from mmunlearn.methods import masks

T = torch.tensor


def as_lists(out: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    assert all(m.dtype == torch.bool for m in out.values()), {n: m.dtype for n, m in out.items()}
    return {n: m.int().tolist() for n, m in out.items()}


# a = (5, 2, 2, 0), b = (2, 7, 1, 2): two scores above 2 (5, 7) and four ties at 2 (a1, a2, b0, b3)
TIED = {"a": [5.0, 2.0, 2.0, 0.0], "b": [2.0, 7.0, 1.0, 2.0]}


@pytest.mark.parametrize("chunk", [1 << 22, 1, 3])
def test_exact_top_k_breaks_ties_in_parameter_then_index_order(monkeypatch, chunk):
    monkeypatch.setattr(masks, "CHUNK", chunk)  # 1 and 3: the ties fall in different pieces of a tensor
    scores = lambda order: {n: T(TIED[n]) for n in order}  # noqa: E731
    # keep 1/2 of 8 → k = 4: 7 and 5, then the first two ties in order: a1, a2
    assert as_lists(masks.top_fraction_mask(scores("ab"), 0.5)) == {"a": [1, 1, 1, 0], "b": [0, 1, 0, 0]}
    # k = 5: the third tie is b's first element, b0
    assert as_lists(masks.top_fraction_mask(scores("ab"), 5 / 8)) == {"a": [1, 1, 1, 0], "b": [1, 1, 0, 0]}
    # b before a: b's ties (b0, b3) come first
    assert as_lists(masks.top_fraction_mask(scores("ba"), 0.5)) == {"b": [1, 1, 0, 1], "a": [1, 0, 0, 0]}
    # k = 2: no tie needed (7, 5); k = 1: only 7
    assert as_lists(masks.top_fraction_mask(scores("ab"), 0.25)) == {"a": [1, 0, 0, 0], "b": [0, 1, 0, 0]}
    assert as_lists(masks.top_fraction_mask(scores("ab"), 0.1)) == {"a": [0, 0, 0, 0], "b": [0, 1, 0, 0]}
    # everything
    assert as_lists(masks.top_fraction_mask(scores("ab"), 1.0)) == {"a": [1, 1, 1, 1], "b": [1, 1, 1, 1]}


def test_selection_orders_signs_zeros_and_neighbouring_floats():
    # negatives: keep 2 of 3 → 0.5 and −1 (not −3)
    assert as_lists(masks.top_fraction_mask({"a": T([-1.0, 0.5, -3.0])}, 2 / 3)) == {"a": [1, 1, 0]}
    # 1 and the next float above it differ only in the low 16 bits (the second histogram): keep 1 of 3
    up = 1.0 + 2 ** -23  # fp32's next value above 1: its bits are 1's plus one
    assert float(torch.tensor(up, dtype=torch.float32)) == up
    assert as_lists(masks.top_fraction_mask({"a": T([1.0, up, 1.0])}, 1 / 3)) == {"a": [0, 1, 0]}
    # −0 equals +0: keep 2 of 4 → 5, then the first zero in order, a0 (which is −0)
    out = masks.top_fraction_mask({"a": T([-0.0, 5.0]), "b": T([0.0, 0.0])}, 0.5)
    assert as_lists(out) == {"a": [1, 1], "b": [0, 0]}
    # shapes kept, 2-D: keep 2 of 6 → the 9 and the 8
    out = masks.top_fraction_mask({"m": T([[1.0, 9.0, 3.0], [8.0, 0.0, 2.0]])}, 1 / 3)
    assert out["m"].shape == (2, 3) and as_lists(out) == {"m": [[0, 1, 0], [1, 0, 0]]}


def test_top_fraction_mask_frees_each_score_as_its_mask_is_built():
    scores = {"a": T([1.0, 2.0]), "b": T([3.0])}
    masks.top_fraction_mask(scores, 0.5)
    assert scores == {}  # consumed: no score tensor outlives its mask
    with pytest.raises(ValueError, match="saliency fraction"):
        masks.top_fraction_mask({"a": T([1.0])}, 0.0)


class LargestOutput(TorchDispatchMode):
    """Every aten op's outputs: the most elements any of them had, and the most any *new* tensor had
    (not a view, not the mask's own `empty`)."""

    def __init__(self):
        super().__init__()
        self.largest = self.largest_temporary = 0
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(str(func.overloadpacket))
        aliases = any(r.alias_info is not None for r in func._schema.returns)  # a view, or an out= write
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if not aliases and func.overloadpacket is not torch.ops.aten.empty:
                    self.largest_temporary = max(self.largest_temporary, t.numel())
        return out


def oracle(scores: dict[str, torch.Tensor], keep: float) -> dict[str, list[int]]:
    """The documented rule by a plain sort: descending score, ties by (parameter order, flat index)."""
    flat = [v for n in scores for v in scores[n].reshape(-1).tolist()]
    k = max(1, int(round(keep * len(flat))))
    chosen = set(sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k])
    out, start = {}, 0
    for n, s in scores.items():
        out[n] = [int(start + i in chosen) for i in range(s.numel())]
        start += s.numel()
    return out


def test_streaming_selection_never_builds_anything_larger_than_one_tensor(monkeypatch):
    """No op inside the selection outputs more elements than the largest score tensor (a concatenation
    over parameters would: together they are 1.9× it), and every temporary fits in one piece of CHUNK
    elements or one histogram (65 536 bins, plus one for keys outside the chosen bin); the result is
    the rule's exact top-k."""
    monkeypatch.setattr(masks, "CHUNK", 4096)
    gen = torch.Generator().manual_seed(0)
    sizes = {"big": (300, 250), "mid": (50_000,), "small": (7, 11), "last": (20_000,)}  # 75 000 the largest
    # few distinct values: thousands of ties at the threshold, split over tensors and pieces
    scores = {n: torch.randint(0, 40, s, generator=gen).float() / 8 for n, s in sizes.items()}
    expected = {keep: oracle(scores, keep) for keep in (0.3, 0.5)}
    for keep in (0.3, 0.5):
        probe, copy = LargestOutput(), {n: s.clone() for n, s in scores.items()}
        with probe:
            out = masks.top_fraction_mask(copy, keep)
        assert probe.largest <= 75_000 and probe.largest_temporary <= max(masks.CHUNK, (1 << 16) + 1), probe.ops
        assert not probe.ops & {"aten.cat", "aten.stack", "aten.topk", "aten.sort", "aten.kthvalue"}, probe.ops
        got = {n: m.reshape(-1).int().tolist() for n, m in out.items()}
        assert got == expected[keep]
        assert sum(map(sum, got.values())) == round(keep * 145_077)


def test_random_scores_match_the_tie_rule_for_any_chunk(monkeypatch):
    rng = random.Random(1)
    for trial in range(40):
        monkeypatch.setattr(masks, "CHUNK", rng.choice([2, 5, 1 << 22]))
        scores = {f"p{i}": T([rng.choice([0.0, -0.0, 0.5, 1.0, 2.0, -1.5, rng.random()])
                              for _ in range(rng.randint(1, 9))]) for i in range(rng.randint(1, 4))}
        keep = rng.choice([0.05, 0.3, 0.5, 0.8, 1.0])
        expected = oracle(scores, keep)
        assert as_lists(masks.top_fraction_mask(dict(scores), keep)) == expected, (trial, scores, keep)


def test_salun_mask_is_the_top_fraction_of_absolute_summed_gradients_as_bool(monkeypatch):
    # Σ∇ = a (−3, 1), b (2, −0.5) → |·| = 3, 1, 2, 0.5; keep 1/2 → 3 and 2
    monkeypatch.setattr(masks, "accumulate_gradients",
                        lambda model, batches, square, names=None, **_: {"a": T([-3.0, 1.0]), "b": T([2.0, -0.5])})
    out = masks.salun_mask(SimpleNamespace(model=None, autocast=nullcontext, forget_records=[]), keep=0.5)
    assert as_lists(out) == {"a": [1, 0], "b": [1, 0]}


class Toy(torch.nn.Module):
    """An fp32 and a bf16 weight; the 'loss' of batch x is Σ w·x + Σ u·x, so ∇w = ∇u = x."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(2))
        self.u = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
        self.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)


def test_accumulate_gradients_sums_in_fp32_and_frees_each_gradient(monkeypatch):
    monkeypatch.setattr(masks, "forward", lambda model, batch: (model, batch))
    monkeypatch.setattr(masks, "answer_nll",
                        lambda model, x: (model.w * x).sum() + (model.u * x.to(torch.bfloat16)).float().sum())
    model, batches = Toy(), [T([1.0, 2.0]), T([3.0, -4.0])]
    total = masks.accumulate_gradients(model, batches, square=False)
    # Σ x = (4, −2); both in fp32, the bf16 weight's too; nothing left in .grad
    assert list(total) == ["w", "u"]
    assert all(t.dtype == torch.float32 for t in total.values())
    assert total["w"].tolist() == [4.0, -2.0] and total["u"].tolist() == [4.0, -2.0]
    assert model.w.grad is None and model.u.grad is None
    # mean of x² = ((1, 4) + (9, 16)) / 2 = (5, 10); names= restricts the accumulators
    fisher = masks.accumulate_gradients(model, batches, square=True, names=["u"])
    assert list(fisher) == ["u"] and fisher["u"].dtype == torch.float32 and fisher["u"].tolist() == [5.0, 10.0]
    assert model.w.grad is None and model.u.grad is None


def test_fisher_ratio_mask_keeps_ratio_at_or_above_threshold_with_epsilon_both_sides(monkeypatch):
    # S_f = (0, 2, 1, 4), S_p = (0, 1, 4, 2): ratios (ε/ε = 1, 2, 1/4, 2) →
    # threshold 2: (0, 1, 0, 1); threshold 1: (1, 1, 0, 1). "v" (V) is in no group: all False.
    calls = []

    def fake(model, batches, square, names=None, **_):
        calls.append(names)
        if names is None:
            return {"w": T([0.0, 2.0, 1.0, 4.0]), "v": T([5.0, 5.0])}
        return {"w": T([0.0, 1.0, 4.0, 2.0])}

    monkeypatch.setattr(masks, "accumulate_gradients", fake)
    ctx = SimpleNamespace(model=None, autocast=nullcontext,
                          adapter=SimpleNamespace(part_of=lambda n: {"w": "W", "v": "V"}[n]))
    out = masks.fisher_ratio_mask(ctx, lambda: [], {"W": lambda: []}, threshold=2.0)
    assert as_lists(out) == {"w": [0, 1, 0, 1], "v": [0, 0]}
    assert calls == [None, ["w"]]  # the preserve Fisher covers its group's weights only
    out = masks.fisher_ratio_mask(ctx, lambda: [], {"W": lambda: []}, threshold=1.0)
    assert as_lists(out) == {"w": [1, 1, 0, 1], "v": [0, 0]}


@pytest.mark.parametrize("threshold,expected", [
    # top share, ratios S_f / (S_r + ε): v (4/2, 1/1, 0/1, 2/0.5, 0/ε, 0/3) = (2, 1, 0, 4, 0, 0), w (3/1, 3/3) =
    # (3, 1); keep 3/8 of 8 → 4, 3, 2
    (0.0, {"v": [1, 0, 0, 1, 0, 0], "w": [1, 0]}),
    # threshold, MMUnlearner's (S_f + ε) / (S_r + ε) ≥ 1: the 5th v weight, which neither set reaches, is ε/ε = 1
    (1.0, {"v": [1, 1, 0, 1, 1, 0], "w": [1, 1]}),
])
def test_vkd_fisher_mask_by_hand(monkeypatch, threshold, expected):
    from mmunlearn.methods import vkd

    def fake(model, batches, square, names=None, **_):
        full = {"v": T([4.0, 1.0, 0.0, 2.0, 0.0, 0.0]), "w": T([3.0, 3.0])}
        keep = {"v": T([2.0, 1.0, 1.0, 0.5, 0.0, 3.0]), "w": T([1.0, 3.0])}
        return full if names is None else {n: keep[n] for n in names}

    monkeypatch.setattr(vkd, "accumulate_gradients", fake)
    monkeypatch.setattr(vkd, "record_batches", lambda *a, **k: iter(()))
    method = vkd.VKD(vkd.VKD.make_config({"mask_keep": 0.375, "mask_threshold": threshold}))
    method._kept_vqa = []
    ctx = SimpleNamespace(model=None, autocast=nullcontext, forget_records=[], retain_records=[],
                          adapter=SimpleNamespace(part_of=lambda n: {"v": "V", "w": "W"}[n]))
    assert as_lists(method._fisher_mask(ctx)) == expected


def test_zero_masks_stay_bool_and_multiply_as_zero_one():
    from mmunlearn.train import zero

    mask = T([[True, False, True], [False, True, True]])
    assert zero.fragment_mask(mask, start=2, numel=3, fragment_numel=3).tolist() == [True, False, True]
    assert zero.partition_mask(mask, rank=1, partition_numel=4).tolist() == [True, True, False, False]
    plain = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.bfloat16))
    plain.grad = torch.full((2, 3), 2.0, dtype=torch.bfloat16)
    local = zero.local_masks({"p": plain}, {"p": mask})
    assert local["p"].dtype == torch.bool
    assert zero.mask_partitioned_grads({"p": plain}, local) == 1
    assert plain.grad.dtype == torch.bfloat16 and plain.grad.tolist() == [[2, 0, 2], [0, 2, 2]]


def _two_processes(rank: int, world: int, init: str, out: str) -> None:
    """Rank r: masks that differ per rank before agreeing; an FSDP-style row-sharded (Shard(0)) weight
    of 5 × 2 over 2 processes (rows 0–2 on rank 0, 3–4 on rank 1) with its bool mask and gradient."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from mmunlearn.methods.masks import agree_across_processes
    from mmunlearn.train.loop import _sharded_like

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        mine = {"a": T([True, rank == 1, False]), "b": T([[rank == 0], [True]])}
        agreed = agree_across_processes(mine)
        mesh = init_device_mesh("cpu", (world,))
        param = distribute_tensor(torch.zeros(5, 2), mesh, [Shard(0)])
        full = T([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0]], dtype=torch.bool)
        local = _sharded_like(full, param)
        grad = distribute_tensor(torch.arange(1.0, 11.0).reshape(5, 2), mesh, [Shard(0)])
        grad.mul_(local)
        torch.save({"agreed": agreed, "local": local.to_local(), "dtype": str(local.dtype),
                    "own_bytes": local.to_local().untyped_storage().nbytes(), "grad": grad.to_local()},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_hold_rank_zeros_masks_and_shard_them_like_the_weight(tmp_path):
    """Real gloo collectives between two processes: different per-rank masks become rank 0's (a
    broadcast), and `_sharded_like` gives each process its rows of the bool mask, a copy of only those
    rows, which zero the gradient where the mask is False."""
    from helpers import free_port

    mp.spawn(_two_processes, args=(2, f"tcp://127.0.0.1:{free_port()}", str(tmp_path)), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for r in (r0, r1):  # rank 0 had a = (T, F, F), b = (T, T)
        assert as_lists(r["agreed"]) == {"a": [1, 0, 0], "b": [[1], [1]]}
        assert r["dtype"] == "torch.bool"
    assert r0["local"].int().tolist() == [[1, 0], [0, 1], [1, 1]] and r0["own_bytes"] == 6
    assert r1["local"].int().tolist() == [[0, 0], [1, 0]] and r1["own_bytes"] == 4
    # gradient rows (1, 2), (3, 4), (5, 6) | (7, 8), (9, 10), masked
    assert r0["grad"].tolist() == [[1, 0], [0, 4], [5, 6]] and r1["grad"].tolist() == [[0, 0], [9, 0]]


def test_one_process_keeps_its_masks_without_a_collective():
    m = {"a": T([True, False])}
    assert masks.agree_across_processes(m) is m and m["a"].tolist() == [True, False]


# --- the Fisher estimate one slice of the weights at a time -----------------------------------------------

def test_parameter_slices_cut_runs_of_about_equal_size_without_splitting_a_tensor():
    sizes = {"a": 10, "b": 30, "c": 20, "d": 40}  # 100 weights: quarters end at 25, 50, 75
    params = {n: torch.zeros(k) for n, k in sizes.items()}
    # middles: a 5 → run 0, b 25 → run 1, c 50 → run 2, d 80 → run 3
    assert masks.parameter_slices(params, 4) == [["a"], ["b"], ["c"], ["d"]]
    # halves end at 50: a (5), b (25) → run 0; c (50), d (80) → run 1
    assert masks.parameter_slices(params, 2) == [["a", "b"], ["c", "d"]]
    assert masks.parameter_slices(params, 1) == [["a", "b", "c", "d"]]
    # one tensor of 97 among 100: the runs it leaves empty are dropped
    assert masks.parameter_slices({"x": torch.zeros(97), "y": torch.zeros(3)}, 4) == [["x"], ["y"]]


class PeakBytes(TorchDispatchMode):
    """Bytes of the storages ops create while it is on (not views of their inputs), each counted until torch
    frees it: the running total's peak. Counts what autograd creates in the backward too."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        import weakref

        out = func(*args, **(kwargs or {}))
        flat = [*args, *(kwargs or {}).values()]
        inputs = {t.untyped_storage()._cdata for t in flat if isinstance(t, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage._cdata
                if key not in inputs and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def test_sliced_fisher_gives_the_same_masks_with_its_accumulators_within_one_bf16_copy(untrained_llava,
                                                                                       small_bundle, monkeypatch):
    """MMUnlearner's grouping on the tiny LLaVA (all 1.6M weights trainable, fp32): 4 slices give the very
    masks of one pass, over 4 × the forget passes, and the estimate's peak is at most 2 B per trainable weight
    above the peak of one training forward + backward on the same batches; one pass needs ~8 B above it (an
    fp32 forget Fisher of every weight and a preserve Fisher of the larger group)."""
    from mmunlearn.data.collate import TrainCollator
    from mmunlearn.models.loader import load_model

    loaded = load_model(untrained_llava)
    model, adapter = loaded.model, loaded.adapter
    collate = TrainCollator(adapter, loaded.processor)
    recs = lambda split, modality: [r for r in small_bundle.train(split) if r.modality == modality]  # noqa: E731
    batches = {key: [collate(records[i:i + 4]) for i in range(0, 12, 4)]
               for key, records in (("forget", recs("forget", "image+text")), ("VP", recs("retain", "image+text")),
                                    ("W", recs("retain", "text")))}
    ctx = SimpleNamespace(model=model, adapter=adapter, autocast=nullcontext)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    n_weights = sum(p.numel() for p in trainable.values())
    assert n_weights > 1_000_000 and all(p.dtype == torch.float32 for p in trainable.values())

    # the reference peak: one training pass (forward, backward, every gradient kept) on each batch
    one_pass = 0
    for batch in (b for side in batches.values() for b in side):
        model.zero_grad(set_to_none=True)
        with PeakBytes() as probe:
            masks.answer_nll(*masks.forward(model, batch)).backward()
        one_pass = max(one_pass, probe.peak)
    model.zero_grad(set_to_none=True)

    passes = {"n": 0}
    real_forward = masks.forward

    def counted(m, batch):
        passes["n"] += 1
        return real_forward(m, batch)

    monkeypatch.setattr(masks, "forward", counted)
    results, extra = {}, {}
    for slices in (1, 4):
        passes["n"] = 0
        with PeakBytes() as probe:
            results[slices] = masks.fisher_ratio_mask(
                ctx, lambda: iter(batches["forget"]),
                {"VP": lambda: iter(batches["VP"]), "W": lambda: iter(batches["W"])}, slices=slices)
        extra[slices] = (probe.peak - one_pass) / n_weights
        if slices == 1:
            assert passes["n"] == 9  # 3 forget batches, 3 for each group
        else:  # each slice: the 3 forget batches, then 3 for each group it holds weights of
            runs = masks.parameter_slices(trainable, 4)
            groups = [len({adapter.part_of(n) in "VP" for n in run}) for run in runs]
            assert len(runs) == 4 and passes["n"] == sum(3 + 3 * g for g in groups) > 9
    assert all(p.requires_grad for p in trainable.values())  # every slice's switch undone
    assert results[1].keys() == results[4].keys() == trainable.keys()
    assert all(torch.equal(results[1][n], results[4][n]) for n in trainable)
    assert 0.0 < float(sum(m.sum() for m in results[4].values())) < n_weights  # a mask, not all or nothing
    assert extra[4] <= 2.0, extra  # B per weight: one bf16 copy
    assert extra[1] >= 5.0, extra  # the unsliced estimate, for contrast


def test_mmunlearner_with_four_slices_trains_the_same_weights_as_with_one(untrained_llava, small_bundle, tmp_path):
    """The whole method: `mask_slices=4` draws the same estimate batches (and leaves the run's later draws where
    one pass leaves them), so 3 steps end on byte-equal weights; the log says which estimate ran."""
    from safetensors.torch import load_file

    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    weights, logs = {}, {}
    for slices in (1, 4):
        cfg = UnlearnConfig(method="mmunlearner", steps=3, batch_size=4, lr=1e-3,
                            method_args={"mask_slices": slices, "mask_batches": 2, "ascent_every": 2})
        logs[slices] = unlearn(small_bundle, cfg, tmp_path / str(slices), loaded=load_model(untrained_llava)).log
        weights[slices] = load_file(str(tmp_path / str(slices) / "model.safetensors"))
    before = load_file(str(untrained_llava / "model.safetensors"))
    assert (logs[1]["mask_slices"], logs[4]["mask_slices"]) == (1, 4)
    assert logs[1]["mask_kept_fraction"] == logs[4]["mask_kept_fraction"]
    assert any(not torch.equal(before[k], weights[1][k]) for k in before)  # the steps moved weights
    assert all(torch.equal(weights[1][k], weights[4][k]) for k in weights[1])


def test_auto_mask_slices_is_one_on_tiny_models_and_the_fewest_that_keep_a_quarter_at_real_size():
    # ten 3200×3200 weights (102.4M, 10.24M each). 4 slices: the middles (i + ½)·10.24M fall in quarters
    # 0, 0, 1, 1, 1, 2, 2, 3, 3, 3 → a run of 3 weights (30.72M) > 25.6M; 5 slices: fifths 0, 0, 1, 1, 2, 2,
    # 3, 3, 4, 4 → runs of 2 (20.48M) ≤ 25.6M
    ten = torch.nn.Sequential(*[torch.nn.Linear(3200, 3200, bias=False, device="meta") for _ in range(10)])
    assert masks.auto_mask_slices(ten) == 5
    assert masks.auto_mask_slices(ten.requires_grad_(False)) == 1  # only trainable weights count
    assert masks.auto_mask_slices(torch.nn.Linear(9_000, 11_000, device="meta")) == 1  # 99,011,000 < 100M
    # one tensor of 100M: no count keeps a quarter and more slices cannot help; the fewest, 4
    assert masks.auto_mask_slices(torch.nn.Linear(10_000, 10_000, bias=False, device="meta")) == 4
    # 100M + 2 × 1M: every count leaves the big one alone in its run (largest 100M) → 4
    three = torch.nn.ParameterList([torch.nn.Parameter(torch.empty(n, device="meta"))
                                    for n in (1_000_000, 100_000_000, 1_000_000)])
    assert masks.auto_mask_slices(three) == 4


def test_an_estimate_batch_in_pieces_weights_each_by_its_share_of_answer_tokens(monkeypatch):
    """Piece a holds 1 answer token and gradient x = (1, 2), piece b 3 tokens and x = (3, −4): the batch's token
    mean is (1·(1, 2) + 3·(3, −4)) / 4 = (2.5, −2.5), not the pieces' plain sum (4, −2) or mean (2, −1)."""
    from mmunlearn.data.collate import IGNORE as I

    monkeypatch.setattr(masks, "forward", lambda model, batch: (model, batch["x"]))
    monkeypatch.setattr(masks, "answer_nll", lambda model, x: (model.w * x).sum())
    a = {"labels": torch.tensor([[I, 5, I, I]]), "x": T([1.0, 2.0])}  # labels[:, 1:]: one answer token
    b = {"labels": torch.tensor([[I, 5, 6, 7]]), "x": T([3.0, -4.0])}  # three
    c = {"labels": torch.tensor([[I, 5]]), "x": T([1.0, 1.0])}  # a batch in one forward
    entered = []

    class Counted:
        def __enter__(self):
            entered.append(1)

        def __exit__(self, *exc):
            return False

    model = Toy()
    total = masks.accumulate_gradients(model, [[a, b], c], square=False, names=["w"], autocast=Counted)
    assert total["w"].tolist() == [3.5, -1.5]  # (2.5, −2.5) + (1, 1)
    assert len(entered) == 3  # every forward under the engine's autocast
    # Fisher: the batch's gradient is squared, not each piece's: ((6.25, 6.25) + (1, 1)) / 2 batches
    fisher = masks.accumulate_gradients(model, [[a, b], c], square=True, names=["w"])
    assert fisher["w"].tolist() == [3.625, 3.625]
    assert model.w.grad is None


def _record_forwards(monkeypatch) -> list[int]:
    """The records of every forward the mask estimates run, in order (the list fills as they run)."""
    sizes, real_forward = [], masks.forward

    def recorded(model, batch):
        sizes.append(len(batch["labels"]))
        return real_forward(model, batch)

    monkeypatch.setattr(masks, "forward", recorded)
    return sizes


def _estimate_context(untrained_llava, small_bundle, rows: int):
    from mmunlearn.data.collate import TrainCollator
    from mmunlearn.methods.base import Context
    from mmunlearn.models.loader import load_model

    loaded = load_model(untrained_llava)
    forget = [r for r in small_bundle.train("forget") if r.modality == "image+text"]
    return Context(model=loaded.model, adapter=loaded.adapter, processor=loaded.processor,
                   collate=TrainCollator(loaded.adapter, loaded.processor), device=torch.device("cpu"),
                   forget_records=forget, retain_records=[], next_forget=list, next_retain=list,
                   rng=random.Random(0), estimate_rows=rows)


def test_an_estimate_in_pieces_gives_the_gradient_of_the_whole_batch_on_the_tiny_llava(untrained_llava, small_bundle,
                                                                                       monkeypatch):
    """Five forget questions of unequal answer lengths, cut into forwards of at most 2 records (2, 2, 1): the
    summed and the squared gradients equal those of one forward over the five (autograd on the whole batch,
    a path that shares nothing with the pieces' weighting), while the pieces' unweighted means do not."""
    ctx = _estimate_context(untrained_llava, small_bundle, rows=2)
    records = [r for r in ctx.forget_records if r.task == "generation"][:3] + \
              [r for r in ctx.forget_records if r.task == "classification"][:2]
    pieces = ctx.estimate_batch(records)
    assert [len(p["labels"]) for p in pieces] == [2, 2, 1]
    per_row = [int((row[1:] != -100).sum()) for p in pieces for row in p["labels"]]
    assert len(set(per_row)) > 1, per_row  # unequal answers: the weighting matters
    whole = ctx.batch(records, shard=False)
    sizes = _record_forwards(monkeypatch)
    for square in (False, True):
        sizes.clear()
        cut = masks.accumulate_gradients(ctx.model, [pieces], square=square)
        assert sizes == [2, 2, 1]
        one = masks.accumulate_gradients(ctx.model, [whole], square=square)
        assert sizes == [2, 2, 1, 5]
        scale = max(float(t.abs().max()) for t in one.values())
        assert scale > 0
        assert all(torch.allclose(cut[n], one[n], rtol=1e-4, atol=1e-6 * scale) for n in one), square
    unweighted = masks.accumulate_gradients(ctx.model, [[p] for p in pieces], square=False)
    assert not all(torch.allclose(unweighted[n], one[n], rtol=1e-2, atol=1e-6 * scale) for n in one)


def test_the_engine_runs_a_mask_estimate_in_forwards_no_larger_than_its_batch(untrained_llava, small_bundle,
                                                                                tmp_path, monkeypatch):
    """SalUn sums its saliency over the whole forget set in batches of 16; with --batch-size 4 every forward of
    that estimate holds at most 4 records (a 7B run sized to fit batch 4 fits its mask too), and every forget
    record is read once."""
    from mmunlearn.methods.salun import SalUn
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, forget_records, unlearn

    sizes = _record_forwards(monkeypatch)
    cfg = UnlearnConfig(method="salun", steps=1, batch_size=4, lr=1e-3)
    result = unlearn(small_bundle, cfg, tmp_path / "run", loaded=load_model(untrained_llava))
    n_forget = len(forget_records(small_bundle, SalUn))
    assert n_forget > 16 and sum(sizes) == n_forget, (n_forget, sizes)
    assert max(sizes) == 4 and result.log["batch_size"] == 4
