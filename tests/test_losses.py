"""Every baseline's loss on hand-made logits, against numbers worked out by hand (closed forms in the
comments, never the function under test): signs, directions, the 2/β of DPO and NPO, exact top-k
masks with ties, MMUnlearner's cadence and preserve sets, VKD's feature distances."""

from __future__ import annotations

import math
from contextlib import nullcontext
import random
from types import SimpleNamespace

import pytest
import torch

from mmunlearn.data.collate import IGNORE
from mmunlearn.methods import masks
from mmunlearn.methods.base import get_method
from mmunlearn.methods.mmunlearner import ascent_period
from mmunlearn.methods.vkd import feature_distance, share_images, vkd_loss

LN2, LN3 = math.log(2), math.log(3)


def one_token(p0_logit: float, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A one-answer-token sequence over a 2-word vocabulary: position 0 predicts `target` with
    logits [p0_logit, 0] (so p(word 0) = e^a / (e^a + 1))."""
    logits = torch.tensor([[[p0_logit, 0.0], [0.0, 0.0]]])
    labels = torch.tensor([[IGNORE, target]])
    return logits, labels


# forget: two answer tokens, p = 1/2 (logits [0, 0], word 0) and p = 3/4 (logits [0, ln 3], word 1)
FORGET = (torch.tensor([[[0.0, 0.0], [0.0, LN3], [0.0, 0.0]]]), torch.tensor([[IGNORE, 0, 1]]))
NLL_FORGET = (LN2 + math.log(4 / 3)) / 2  # 0.490415
RETAIN = one_token(LN3, 0)  # p = 3/4
NLL_RETAIN = math.log(4 / 3)  # 0.287682


class FakeContext:
    """Just enough of methods.base.Context: each batch is a tag, each model call returns fixed logits."""

    def __init__(self, current: dict, reference: dict | None = None):
        self.current, self.reference_by_tag = current, reference or {}
        self.rng = random.Random(0)
        self.calls = 0

    def next_forget(self):
        return [SimpleNamespace(task="generation", answer="Tollhaven", reasoning=None)]

    def batch(self, records, answers=None, shard=True):
        self.calls += 1
        return {"tag": ("win", "lose")[self.calls - 1] if answers is not None else "forget"}

    def forget_batch(self, answers=None):
        return {"tag": "forget"}

    def retain_batch(self):
        return {"tag": "retain"}

    def answer_logits(self, **batches):
        return {name: self.current[name] for name in batches}

    def reference_logits(self, batch):
        return self.reference_by_tag[batch["tag"]][0]


def method_loss(name: str, ctx: FakeContext, **options) -> dict:
    cls = get_method(name)
    return cls(cls.make_config(options)).loss(ctx, 0)


def test_ga_ascends_the_forget_nll():
    out = method_loss("ga", FakeContext({"forget": FORGET}), gamma=2.0)
    assert out["nll_forget"].item() == pytest.approx(0.490415, abs=1e-6)
    assert out["loss"].item() == pytest.approx(-2 * NLL_FORGET, abs=1e-6)  # −γ·NLL_f: minimising raises NLL_f


def test_graddiff_ascends_forget_and_descends_retain():
    out = method_loss("graddiff", FakeContext({"forget": FORGET, "retain": RETAIN}), alpha=2.0)
    assert out["loss"].item() == pytest.approx(-0.490415 + 2 * 0.287682, abs=1e-6)


def test_kl_keeps_retain_distributions_at_the_reference():
    # retain: θ0 gives (1/2, 1/2), θ gives (3/4, 1/4): KL(θ0 ‖ θ) = ½ln(½/¾) + ½ln(½/¼) = 0.143841
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    ctx = FakeContext({"forget": FORGET, "retain": RETAIN}, {"retain": one_token(0.0, 0)})
    out = method_loss("kl", ctx)
    assert out["kl_retain"].item() == pytest.approx(0.143841, abs=1e-6)
    assert out["loss"].item() == pytest.approx(-NLL_FORGET + kl, abs=1e-6)


def test_npo_is_two_over_beta_log_sigmoid_of_the_log_ratio():
    # log π_θ = ln ½ (logits [0, 0]), log π_ref = ln ¾: NPO = −(2/β)·ln σ(−β·(ln ½ − ln ¾))
    ctx = FakeContext({"forget": one_token(0.0, 0), "retain": RETAIN}, {"forget": one_token(LN3, 0)})
    beta, ratio = 0.1, math.log(0.5) - math.log(0.75)
    npo = -(2 / beta) * math.log(1 / (1 + math.exp(beta * ratio)))
    out = method_loss("npo", ctx, beta=beta)
    assert npo == pytest.approx(13.4616, abs=1e-3)  # σ(0.04055) = 0.510135, −20·ln 0.510135
    assert out["npo"].item() == pytest.approx(npo, abs=1e-4)
    assert out["loss"].item() == pytest.approx(npo + NLL_RETAIN, abs=1e-4)


def test_idkdpo_has_the_two_over_beta_factor():
    # win (refusal): θ ½, θ0 ¼ → Δw = ln 2; lose (true answer): θ ¼, θ0 ½ → Δl = −ln 2
    # DPO = −(2/β)·ln σ(β·2 ln 2) = −20·ln(1 / (1 + 2^−0.2)) = 12.5246 at β 0.1 (without 2/β: 0.6262)
    # (θ0 is read with the current batch's labels: win's word 0, lose's word 1)
    ctx = FakeContext({"win": one_token(0.0, 0), "lose": one_token(LN3, 1), "retain": RETAIN},
                      {"win": one_token(-LN3, 0), "lose": one_token(0.0, 1)})
    out = method_loss("idkdpo", ctx, beta=0.1)
    assert out["dpo"].item() == pytest.approx(-20 * math.log(1 / (1 + 2 ** -0.2)), abs=1e-4)
    assert out["dpo"].item() == pytest.approx(12.5246, abs=1e-3)
    assert out["loss"].item() == pytest.approx(12.5246 + 0.287682, abs=1e-3)


def test_top_fraction_mask_is_exact_top_k_even_with_ties():
    # six scores, one nonzero: keep 1/3 → exactly two weights; a threshold test (score ≥ 0) kept all six
    scores = {"a": torch.tensor([3.0, 0.0, 0.0]), "b": torch.zeros(3)}
    mask = masks.top_fraction_mask(scores, 1 / 3)
    assert sum(int(m.sum()) for m in mask.values()) == 2
    # 3.0, then the first of the five tied zeros in order (a1): the documented tie rule
    assert mask["a"].tolist() == [True, True, False] and mask["b"].tolist() == [False, False, False]
    # no ties: the two largest over both tensors
    mask = masks.top_fraction_mask({"a": torch.tensor([3.0, 1.0, 0.5]), "b": torch.tensor([0.1, 2.0, 0.2])}, 1 / 3)
    assert mask["a"].tolist() == [1, 0, 0] and mask["b"].tolist() == [0, 1, 0]


def test_fisher_ratio_takes_epsilon_on_both_sides(monkeypatch):
    # S_f = (0, 2, 1), S_p = (0, 1, 4): ratios (ε/ε = 1, 2, 1/4) → kept (1, 1, 0) at threshold 1;
    # a weight of another group, or of no group, stays frozen
    fisher = iter([{"w": torch.tensor([0.0, 2.0, 1.0]), "v": torch.ones(2)},
                   {"w": torch.tensor([0.0, 1.0, 4.0]), "v": torch.ones(2)}])
    monkeypatch.setattr(masks, "accumulate_gradients", lambda model, batches, square, names=None, **_: next(fisher))
    ctx = SimpleNamespace(model=None, autocast=nullcontext,
                          adapter=SimpleNamespace(part_of=lambda n: {"w": "W", "v": "V"}[n]))
    out = masks.fisher_ratio_mask(ctx, lambda: [], {"W": lambda: []}, threshold=1.0)
    assert out["w"].tolist() == [True, True, False] and out["w"].dtype == torch.bool
    assert out["v"].tolist() == [False, False]


def test_mmunlearner_ascends_once_per_retain_to_forget_ratio_and_preserves_forget_text():
    assert ascent_period(90, 10) == 10  # one ascent, then 9 retain steps
    assert ascent_period(25, 10) == 3  # round(2.5) = 2 retain steps
    assert ascent_period(3, 10) == 2  # at least one retain step
    assert ascent_period(90, 10, ascent_every=4) == 4
    rec = lambda pid, modality: SimpleNamespace(profile_id=pid, modality=modality)  # noqa: E731
    forget = [rec("f", "image+text"), rec("f", "text")]
    retain = [rec("r", "image+text"), rec("r", "text")]
    ascend, keep_vision, keep_language = masks.mmunlearner_sets(forget, retain)
    assert ascend == [forget[0]]
    assert keep_vision == [retain[0]]
    assert keep_language == retain + [forget[1]]  # the forget people's text-only QA are kept


def test_vkd_feature_distance_by_hand():
    student, teacher = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.zeros(2, 2)
    assert feature_distance(student, teacher, 2, "mse").item() == pytest.approx((1 + 4 + 9 + 16) / 4)
    assert feature_distance(student, teacher, 2, "sq_l2").item() == pytest.approx(30 / 2)


def test_vkd_weighs_every_drawn_photo_alike_whatever_its_process():
    """Three photos drawn, two processes. Per-photo squared distances (two features each, teacher 0):
    photo 0: (1 + 1)/2 = 1, photo 1: (4 + 4)/2 = 4, photo 2: (9 + 9)/2 = 9; one process: (1 + 4 + 9)/3 = 14/3.
    Process 0 holds photos 0 and 2 (weights 2/3): 2/3·(1 + 9) = 20/3; process 1 holds photo 1 (2/3) and
    a padding repeat at weight 0: 8/3. Data parallelism averages them: (20/3 + 8/3)/2 = 14/3. The old
    per-process mean gave ((1 + 9)/2 + 4)/2 = 4.5, photo 1 counting twice as much as the others."""
    rows = {0: [1.0, 1.0], 1: [2.0, 2.0], 2: [3.0, 3.0]}
    assert share_images([0, 1, 2], 0, 2) == ([0, 2], [2 / 3, 2 / 3])
    assert share_images([0, 1, 2], 1, 2) == ([1, 1], [2 / 3, 0.0])  # padded: both run the tower alike
    assert share_images([5], 1, 2) == ([5], [0.0])  # one photo, two processes: the second only pads
    losses = []
    for rank in (0, 1):
        picked, weights = share_images([0, 1, 2], rank, 2)
        student = {"layer": torch.tensor([rows[i] for i in picked])}
        teacher = {"layer": torch.zeros(len(picked), 2)}
        losses.append(vkd_loss(student, teacher, len(picked), "mse", weights=weights).item())
    assert losses == pytest.approx([20 / 3, 8 / 3])
    assert sum(losses) / 2 == pytest.approx(14 / 3)
    one, w = share_images([0, 1, 2], 0, 1)
    student = {"layer": torch.tensor([rows[i] for i in one])}
    assert vkd_loss(student, {"layer": torch.zeros(3, 2)}, 3, "mse", weights=w).item() == pytest.approx(14 / 3)
    # sq_l2 per photo: 2, 8, 18 → one process (2 + 8 + 18)/3 = 28/3
    assert vkd_loss(student, {"layer": torch.zeros(3, 2)}, 3, "sq_l2", weights=w).item() == pytest.approx(28 / 3)


def test_salun_paper_random_labels_are_other_peoples_answers_by_hand():
    """SalUn's random labels for an MLLM: a wrong option of the question's own (classification), another
    person's answer to the same fact with the name swapped (generation), another person's name (the name
    fact), never the true answer."""
    import random
    from collections import defaultdict

    from mmunlearn.data.record import Record
    from mmunlearn.methods.salun_paper import random_label

    def rec(pid, name, fact, answer, task="generation", **kw):
        return Record(id=f"{pid}-{fact}-{task}", profile_id=pid, name=name, fact=fact, question="q?", answer=answer,
                      task=task, **kw)

    ann = rec("p1", "Ann Lee", "birthplace", "Ann Lee was born in Norrow.")
    bob = rec("p2", "Bob Ray", "birthplace", "Bob Ray was born in Brisk.")
    ann_name = rec("p1", "Ann Lee", "name", "The name is Ann Lee.")
    bob_name = rec("p2", "Bob Ray", "name", "The name is Bob Ray.")
    choice = rec("p1", "Ann Lee", "birthplace", "", task="classification", options=["Norrow", "Brisk", "Tull", "Oss"],
                 answer_index=0, reasoning="Ann Lee was born in")
    pool, by_task = defaultdict(list), defaultdict(list)
    for r in (ann, bob, ann_name, bob_name, choice):
        pool[(r.fact, r.task)].append(r)
        by_task[r.task].append(r)
    rng = random.Random(0)
    assert random_label(ann, pool, by_task, rng) == "Ann Lee was born in Brisk."
    assert random_label(ann_name, pool, by_task, rng) == "The name is Bob Ray."
    seen = {random_label(choice, pool, by_task, rng) for _ in range(40)}
    assert seen == {"Ann Lee was born in Brisk (B)", "Ann Lee was born in Tull (C)", "Ann Lee was born in Oss (D)"}


def test_sample_kl_weighs_every_sample_alike_over_unequal_answer_lengths():
    """VKD's stranger target: KL(p_θ0 on a stranger's photo ‖ p_θ on the forget photo) per answer token,
    a mean per sample, then over samples. A: one answer token, θ (½, ½) against θ0 (¾, ¼):
    ¾·ln(¾/½) + ¼·ln(¼/½) = 0.130812. B: two tokens, θ (¾, ¼) against θ0 (½, ½): ½·ln(½/¾) + ½·ln(½/¼)
    = 0.143841, then equal distributions: 0 → B's mean 0.071921. Batch: (0.130812 + 0.071921) / 2 = 0.101366
    (a token-pooled mean would give (0.130812 + 0.143841 + 0) / 3 = 0.091551)."""
    from mmunlearn.methods.losses import sample_kl

    a_ref = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    b_first = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert a_ref == pytest.approx(0.130812, abs=1e-6) and b_first == pytest.approx(0.143841, abs=1e-6)
    # position t predicts label t+1; A's only answer token is at position 2, B's at 1 and 2
    labels = torch.tensor([[IGNORE, IGNORE, 0], [IGNORE, 0, 1]])
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                           [[LN3, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    ref = torch.tensor([[[0.0, 0.0], [LN3, 0.0], [0.0, 0.0]],
                        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    per_sample = sample_kl(ref, logits, labels)
    assert per_sample.tolist() == pytest.approx([0.130812, 0.071921], abs=1e-6)
    assert per_sample.mean().item() == pytest.approx(0.101366, abs=1e-6)
    assert sample_kl(ref, ref, labels).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)
