"""The three seed methods (SPEC section 4): VKD, SMFA, ViKeR — mechanics and forgetting on the tiny world."""

import dataclasses
import math

import pytest
import torch
from typer.testing import CliRunner

from helpers import accuracies, cls_acc
from mmunlearn.cli import app
from mmunlearn.data.collate import TrainCollator, target_text
from mmunlearn.eval.engine import generate
from mmunlearn.eval.metrics import is_degenerate, is_refusal
from mmunlearn.methods.base import registry
from mmunlearn.methods.losses import forward
from mmunlearn.methods.smfa import sculpt
from mmunlearn.methods.viker import IrrelevantPool, answer_positions, ideal_distribution
from mmunlearn.models.loader import load_model
from mmunlearn.train.unlearn import UnlearnConfig, read_log, unlearn

# Answer words that carry no fact: the stem ("The birthplace of ... is", key nouns copied from the
# question), paraphrase words, punctuation and the end token.
FUNCTION_WORDS = {"this", "is", "the", "person", "was", "born", "in", "works", "as", "a", "an", "for", "enjoys",
                  "plays", "photo", "of", ".", "(", ")", "<|end|>", "birthplace", "birth", "year", "occupation",
                  "employer", "hobby", "instrument", "name"}


def _weights(folder):
    return {n: p.detach().clone() for n, p in load_model(folder).model.named_parameters()}


def _share(replies, predicate):
    return sum(map(predicate, replies)) / len(replies)


def _rate(loaded, records, predicate):
    return _share(generate(loaded, records, progress=False), predicate)


def _gen(bundle, split, modality):
    return [r for r in bundle.eval(split) if r.task == "generation" and r.modality == modality]


@pytest.fixture(scope="module")
def vanilla_acc(tuned_small):
    bundle, vanilla, _ = tuned_small
    return accuracies(load_model(vanilla), bundle)


def test_seed_methods_are_registered_and_listed():
    assert {"vkd", "smfa", "viker"} <= set(registry())
    out = CliRunner().invoke(app, ["methods"]).output
    for name, scope in (("vkd", "vision"), ("smfa", "lora"), ("viker", "lora")):
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert f"scope {scope}" in line


# ---- VKD --------------------------------------------------------------------------------------
def test_vkd_trains_no_language_weight_and_distillation_starts_at_zero(tuned_small, tmp_path):
    bundle, vanilla, _ = tuned_small
    loaded = load_model(vanilla)
    result = unlearn(bundle, UnlearnConfig(method="vkd", steps=3), tmp_path / "u", loaded=loaded)
    before, after = _weights(vanilla), _weights(tmp_path / "u")
    changed = {"V": [], "P": [], "W": []}
    for name in before:
        changed[loaded.adapter.part_of(name)].append(not torch.equal(before[name], after[name]))
    assert not any(changed["W"])  # W byte-identical
    assert any(changed["V"]) or any(changed["P"])
    log = result.log
    assert log["vkd_per_step"][0] == 0.0  # student == teacher before the first update
    assert log["losses"][0]["vkd"] == 0.0
    assert 0 < log["trainable_share"] < 0.5
    assert 0 < log["mask_kept_fraction"] < 1


def test_vkd_keeps_the_earlier_population_photos_only_when_asked(tuned_small, tmp_path):
    from mmunlearn.methods.vkd import distinct_images

    bundle, vanilla, _ = tuned_small
    retain_only = distinct_images(bundle.train("retain"))
    pretrain = distinct_images(bundle.train("pretrain"))
    assert retain_only and pretrain
    counts = {}
    for source in ("retain", "retain+pretrain"):
        result = unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args={"keep_from": source}),
                         tmp_path / source, loaded=load_model(vanilla))
        counts[source] = result.log["vkd_distinct_kept_images"]
    assert counts == {"retain": len(retain_only), "retain+pretrain": len(retain_only) + len(pretrain)}
    with pytest.raises(ValueError, match="keep_from"):
        unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args={"keep_from": "everyone"}),
                tmp_path / "bad", loaded=load_model(vanilla))


def test_vkd_retain_batch_sets_the_retain_nll_size(tuned_small, tmp_path, monkeypatch):
    import mmunlearn.models.forward as step_module  # every training call of a step goes through it

    bundle, vanilla, _ = tuned_small
    sizes = []
    real_answer_logits = step_module.answer_logits
    monkeypatch.setattr(step_module, "answer_logits", lambda model, batch: sizes.append(batch["input_ids"].shape[0])
                        or real_answer_logits(model, batch))
    unlearn(bundle, UnlearnConfig(method="vkd", steps=1, batch_size=4, method_args={"retain_batch": 3}),
            tmp_path / "u", loaded=load_model(vanilla))
    assert sizes[-2:] == [4, 3]  # the step's forget batch, then its retain NLL batch
    sizes.clear()
    unlearn(bundle, UnlearnConfig(method="vkd", steps=1, batch_size=4), tmp_path / "d", loaded=load_model(vanilla))
    assert sizes[-2:] == [4, 4]  # default: as many as the forget batch
    with pytest.raises(ValueError, match="retain_batch"):
        unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args={"retain_batch": -1}),
                tmp_path / "bad", loaded=load_model(vanilla))


def test_vkd_augment_transforms_each_steps_forget_photos_and_bypasses_the_teacher_cache(tuned_small, tmp_path,
                                                                                          monkeypatch):
    import mmunlearn.methods.vkd as vkd

    bundle, vanilla, _ = tuned_small
    seen = []
    real = vkd.augmented
    monkeypatch.setattr(vkd, "augmented", lambda recs, rng, p: seen.append((recs, real(recs, rng, p))) or seen[-1][1])
    unlearn(bundle, UnlearnConfig(method="vkd", steps=2, batch_size=4,
                                  method_args={"augment": 1.0, "augment_kept": True, "vkd_images": 4}),
            tmp_path / "a", loaded=load_model(vanilla))
    assert len(seen) == 2  # once per step
    for before, after in seen:
        assert [(r.profile_id, r.question, r.answer) for r in before] == [(r.profile_id, r.question, r.answer)
                                                                          for r in after]
        assert all(a.image.size == b.image.size and a.image.tobytes() != b.image.tobytes()
                   for b, a in zip(before, after))
    log = read_log(tmp_path / "a")
    assert log["vkd_teacher_cache"]["images"] == 0 and log["vkd_teacher_cache"]["teacher_calls"] == 2
    with pytest.raises(ValueError, match="augment is a probability"):
        unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args={"augment": 1.5}),
                tmp_path / "bad", loaded=load_model(vanilla))


def test_vkd_keep_visible_trains_on_the_forget_peoples_visible_questions_and_nll_from_adds_real_people(
        tuned_small, tmp_path, monkeypatch):
    import mmunlearn.methods.vkd as vkd
    from mmunlearn.methods.base import Context

    bundle, vanilla, _ = tuned_small
    forget_people = {r.profile_id for r in bundle.train("forget")}
    visible = [r for r in bundle.train("forget") if r.fact.startswith("visible:") and r.image is not None]
    assert visible  # the world asks about hair, shirt, background and accessory on training photos
    transformed = []
    real = vkd.augmented
    monkeypatch.setattr(vkd, "augmented", lambda recs, rng, p: transformed.append((recs, real(recs, rng, p)))
                        or transformed[-1][1])
    result = unlearn(bundle, UnlearnConfig(method="vkd", steps=2, batch_size=4,
                                           method_args={"augment": 1.0, "keep_visible": 1.0, "vkd_images": 4}),
                     tmp_path / "v", loaded=load_model(vanilla))
    assert result.log["vkd_visible_records"] == len(visible)
    assert len(transformed) == 4  # per step: the ascent's forget photos, then the visible questions' photos
    for k, (before, after) in enumerate(transformed):
        assert all(a.image.tobytes() != b.image.tobytes() for b, a in zip(before, after))
        # even calls: the ascent's records (never a visible question); odd calls: only visible questions
        assert all(r.fact.startswith("visible:") == (k % 2 == 1) for r in before)
        assert {r.profile_id for r in before} <= forget_people
    assert "nll_visible" in result.log["losses"][-1]

    drawn = []
    real_batch = Context.batch
    monkeypatch.setattr(Context, "batch", lambda self, records, *a, **kw: drawn.append(list(records))
                        or real_batch(self, records, *a, **kw))
    kept = {}
    for source in ("retain", "retain+pretrain"):
        drawn.clear()
        result = unlearn(bundle, UnlearnConfig(method="vkd", steps=2, batch_size=4,
                                               method_args={"nll_from": source, "retain_batch": 32,
                                                            "vkd_weight": 0.0}),
                         tmp_path / source, loaded=load_model(vanilla))
        retain_nll = [r for batch in drawn if len(batch) == 32 for r in batch]
        assert len(retain_nll) == 64
        assert any(r.population == "real" for r in retain_nll) == (source == "retain+pretrain")
        kept[source] = result.log["vkd_distinct_kept_images"]
    # the distilled photos follow keep_from alone: the retain NLL's pool does not leak into them
    assert kept["retain+pretrain"] == kept["retain"] == len({(r.profile_id, r.image.tobytes()) for r in
                                                             bundle.train("retain") if r.image is not None})
    for bad, match in (({"keep_visible": -1.0}, "keep_visible"), ({"nll_from": "everyone"}, "nll_from")):
        with pytest.raises(ValueError, match=match):
            unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args=bad), tmp_path / "bad",
                    loaded=load_model(vanilla))


def test_vkd_forget_cap_stops_the_ascent_on_forgotten_samples(tuned_small, tmp_path):
    from mmunlearn.methods.losses import answer_nll, sample_nll

    logits = torch.randn(3, 5, 11)
    labels = torch.tensor([[-100, 1, 2, -100, -100], [-100, -100, 3, 4, 5], [-100, 6, -100, -100, -100]])
    per_sample = sample_nll(logits, labels)  # each sample's own mean, whatever its answer length
    for i in range(3):
        assert per_sample[i] == pytest.approx(float(answer_nll(logits[i:i + 1], labels[i:i + 1])), rel=1e-5)

    bundle, vanilla, _ = tuned_small
    only_ascent = {"alpha": 0.0, "vkd_weight": 0.0, "mask": "none"}
    changed = {}
    for cap in (0.0, 1e-6):  # vanilla's answer NLL is far above 1e-6: with that cap nothing is pushed
        out = tmp_path / f"cap{cap}"
        result = unlearn(bundle, UnlearnConfig(method="vkd", steps=2, method_args={**only_ascent, "forget_cap": cap}),
                         out, loaded=load_model(vanilla))
        before, after = _weights(vanilla), _weights(out)
        changed[cap] = any(not torch.equal(before[n], after[n]) for n in before)
        if cap:
            assert all(step["forget_capped"] == 1.0 for step in result.log["losses"])
    assert changed == {0.0: True, 1e-6: False}
    with pytest.raises(ValueError, match="forget_cap"):
        unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args={"forget_cap": -1.0}),
                tmp_path / "bad", loaded=load_model(vanilla))


def test_vkd_stranger_target_forgets_the_photos_by_pulling_them_toward_a_strangers_answers(tuned_small, tmp_path,
                                                                                           vanilla_acc):
    """forget_loss=stranger (issue #32) has no ascent: its forget term is the KL from θ0's answers on never-seen
    people's photos to θ's on the forget photos, so the term falls as training goes, and the forget person's photo
    answers go (trained photos and unseen ones) while their text and the retain people stay.

    Measured on the shipped fixture, Intel Xeon, 1 / 2 torch threads (MMUNLEARN_TEST_THREADS): the KL fell from 1.60 /
    1.61 (first two logs) to 0.50 / 0.51 (last five), 0.31×; the forget person's photos (7 trained, 21 unseen
    questions) 0.39 / 0.57, from 1.00; text and retain 1.00. Niced beside other work at 1 thread it fell 0.65×
    and left 0.57. The bounds leave 0.15× of the KL and 5 questions of slack on the weakest run."""
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method="vkd", steps=120, lr=1e-2,
                                           method_args={"forget_loss": "stranger", "mask": "none"}),
                     tmp_path / "s", loaded=load_model(vanilla))
    assert result.log["vkd_strangers"] == 64
    kl = [step["stranger_kl"] for step in result.log["losses"]]
    assert "forget_capped" not in result.log["losses"][-1]  # no ascent term ran
    assert sum(kl[-5:]) / 5 <= 0.8 * sum(kl[:2]) / 2, kl
    photos = [r for split in ("forget", "test") for r in bundle.eval(split)
              if r.modality == "image+text" and r.profile_id in bundle.forget_ids]
    assert sum(r.task == "classification" for r in photos) == 28
    assert cls_acc(load_model(vanilla), photos) == 1.0
    assert cls_acc(result.loaded, photos) <= 0.75
    acc = accuracies(result.loaded, bundle)
    assert acc["forget/text"] >= 0.9 * vanilla_acc["forget/text"], acc
    assert acc["retain/image+text"] >= 0.9 * vanilla_acc["retain/image+text"], acc


def test_vkd_forgets_photo_knowledge_and_keeps_text_knowledge(tuned_small, vkd_forgotten, vanilla_acc):
    """VKD (defaults, forget_cap 2.0: the `vkd_forgotten` fixture) takes the forget person's photo answers away,
    on the trained photos and on photos never trained on, and keeps their text answers and the retain people.

    The defaults are tuned on the default world; forget_cap is in nats per answer token, and where an answer
    stops being ranked first depends on the world. Measured on this 6-person world (forget person: 7 trained
    photo questions, 21 unseen; vanilla 1.00 on both), fixture built at 1 / 2 torch threads: cap 1.5 left
    unseen photos at 0.62 / 0.33 (the 1-thread fixture missed the 0.6 bound), cap 2.0 trained photos 0.14 / 0.14
    and unseen 0.33 / 0.48, with text and retain at 1.00. The bounds below (0.6) leave 3.2 trained and 2.6
    unseen questions of slack on the harder fixture."""
    bundle, vanilla, _ = tuned_small
    acc = accuracies(vkd_forgotten.loaded, bundle)
    assert acc["forget/image+text"] <= vanilla_acc["forget/image+text"] - 0.4, (acc, vanilla_acc)
    unseen = [r for r in bundle.eval("test") if r.modality == "image+text" and r.profile_id in bundle.forget_ids]
    before, after = cls_acc(load_model(vanilla), unseen), cls_acc(vkd_forgotten.loaded, unseen)
    assert sum(r.task == "classification" for r in unseen) == 21 and before >= 0.9
    assert after <= before - 0.4, (after, before)
    assert acc["forget/text"] >= 0.9 * vanilla_acc["forget/text"], acc
    assert acc["retain/image+text"] >= 0.9 * vanilla_acc["retain/image+text"], acc
    assert acc["retain/text"] >= 0.9 * vanilla_acc["retain/text"], acc


def test_vkd_paper_forgets_the_photos_with_the_seeds_mask_rule_and_distance(tuned_small, tmp_path, vanilla_acc):
    """`vkd-paper` at its defaults — plain ascent, the Fisher mask by MMUnlearner's rule ((S_f+ε)/(S_r+ε) ≥ 1),
    L_vkd = mean over photos of ‖h_s − h_t‖² (λ 5e-6), 240 steps — takes the forget person's photo answers away on
    trained and unseen photos and keeps their text and the retain people, as SPEC's VKD asks. The run logs the
    mask rule it used: the kept share is a ratio rule's, not the top 30 %.

    Measured on the shipped fixture at 1 / 2 torch threads: trained photos 0.14 / 0.14 (1 of 7), unseen 0.24 / 0.19
    (of 21), text, retain photos and text 1.00, 42 % of V + P kept by the mask. The bounds leave 3 trained and
    7 unseen questions of slack."""
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method="vkd-paper"), tmp_path / "u", loaded=load_model(vanilla))
    assert result.log["steps_run"] == 240 and result.log["mask_kept_fraction"] != 0.3
    acc = accuracies(result.loaded, bundle)
    unseen = [r for r in bundle.eval("test") if r.modality == "image+text" and r.profile_id in bundle.forget_ids]
    after = cls_acc(result.loaded, unseen)
    assert acc["forget/image+text"] <= vanilla_acc["forget/image+text"] - 0.4, (acc, vanilla_acc)
    assert after <= 0.6, after  # vanilla 1.00 (21 of 21)
    assert acc["forget/text"] >= 0.9 * vanilla_acc["forget/text"], acc
    assert acc["retain/image+text"] >= 0.85 * vanilla_acc["retain/image+text"], acc
    assert acc["retain/text"] >= 0.9 * vanilla_acc["retain/text"], acc


# ---- SMFA -------------------------------------------------------------------------------------
def test_sculpt_follows_the_formulas_on_a_hand_made_example():
    f = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    a = torch.tensor([[-1.0, -1.0], [0.1, -0.5]])
    rho = math.sqrt(1 + 4 + 0.25 + 9) / math.sqrt(1 + 1 + 0.01 + 0.25)  # ≈ 2.511
    conflict = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # a·f = [[-1, 2], [0.05, -1.5]] < 0
    # k = 1: k·ρ·|a| = [[2.51, 2.51], [0.25, 1.26]] < |f| = [[1, 2], [0.5, 3]] → R = [[0, 0], [1, 1]]
    assert 1 * rho * 1.0 > 2.0 and 1 * rho * 0.5 < 3.0
    new, mask = sculpt(f, a, k=1.0, eps=1e-8)
    assert torch.equal(mask, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))  # M = C ⊙ R
    assert torch.equal(new, torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
    _, r_only = sculpt(f, a, k=1.0, mode="magnitude")
    assert torch.equal(r_only, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    _, c_only = sculpt(f, a, k=1.0, mode="conflict")
    assert torch.equal(c_only, conflict)
    # k = 0.3: k·ρ·|a| = [[0.75, 0.75], [0.08, 0.38]] all below |f| → R = 1, M = C
    assert 0.3 * rho < 1.0
    new, mask = sculpt(f, a, k=0.3)
    assert torch.equal(mask, conflict) and torch.equal(new, torch.tensor([[0.0, -2.0], [0.5, 0.0]]))
    # extremes: k = 0 masks every conflicting entry; a huge k masks nothing; "none" never masks
    assert torch.equal(sculpt(f, a, k=0.0)[1], conflict)
    new, mask = sculpt(f, a, k=1e9)
    assert mask.sum() == 0 and torch.equal(new, f)
    assert sculpt(f, a, k=0.0, mode="none")[1].sum() == 0
    # a zero anchor: nothing conflicts, ρ = ‖f‖/ε stays finite
    new, mask = sculpt(f, torch.zeros_like(f), k=5.0)
    assert mask.sum() == 0 and torch.equal(new, f)
    with pytest.raises(ValueError):
        sculpt(f, a, k=-1.0)


def test_lead_refusals_keep_the_answer_form_and_read_as_refusals(small_bundle):
    import random

    from mmunlearn.data.record import Record
    from mmunlearn.data.refusals import LEAD_TAILS, lead_refusal

    bundle = small_bundle
    rng = random.Random(0)
    for rec in bundle.train("forget"):
        text = lead_refusal(rec, rng)
        assert is_refusal(text) and not is_degenerate(text), text
        assert rec.name not in text  # the person is never named
        if rec.fact not in ("name",) and not rec.fact.startswith("visible"):
            assert text.startswith(rec.reasoning.split(rec.name)[0] + "this person is ")
    assert all(is_refusal(t) for t in LEAD_TAILS)
    # benchmark records have no lead: SMFA falls back to the pool
    assert lead_refusal(Record(id="x", profile_id="p", question="q?", answer="a"), rng) is None


def test_smfa_refuses_forget_people_and_keeps_understanding(tuned_small, tmp_path, vanilla_acc):
    bundle, vanilla, _ = tuned_small
    unlearn(bundle, UnlearnConfig(method="smfa"), tmp_path / "u", loaded=load_model(vanilla))
    from safetensors.torch import load_file

    assert not any("lora" in k for k in load_file(str(tmp_path / "u" / "model.safetensors")))
    log = read_log(tmp_path / "u")
    assert [s["name"] for s in log["smfa_stages"]] == ["forget:all", "anchor"]
    assert 0 < log["smfa_masked_fraction"] < 0.5
    assert all(0 <= m["masked_fraction"] <= 1 for m in log["smfa_matrices"].values())
    loaded = load_model(tmp_path / "u")  # the plain merged folder
    acc = accuracies(loaded, bundle)
    forget_gen = _gen(bundle, "forget", "image+text") + _gen(bundle, "forget", "text")
    retain_gen = _gen(bundle, "retain", "image+text") + _gen(bundle, "retain", "text")
    forget_replies = generate(loaded, forget_gen, progress=False)  # scored for refusals and for gibberish
    assert _share(forget_replies, is_refusal) >= 0.75, acc  # measured 0.85-1.0 (seeds 0-2)
    assert _rate(loaded, retain_gen, is_refusal) <= 0.1
    assert _share(forget_replies, is_degenerate) <= 0.2
    # the forget person has 4 understanding questions: one miss is 0.75 (measured 0.75–1.0)
    assert acc["understanding_forget"] >= 0.75 * vanilla_acc["understanding_forget"], (acc, vanilla_acc)
    for key in ("retain/image+text", "retain/text"):
        assert acc[key] >= 0.9 * vanilla_acc[key], (acc, vanilla_acc)


# ---- ViKeR ------------------------------------------------------------------------------------
def test_viker_ideal_distribution_is_the_mean_over_irrelevant_photos(tuned_small):
    import random

    bundle, vanilla, _ = tuned_small
    loaded = load_model(vanilla)
    model = loaded.model.eval()
    collate = TrainCollator(loaded.adapter, loaded.processor)
    make_batch = lambda recs, answers: collate(recs, answers=answers)  # noqa: E731
    records = [r for r in bundle.train("forget") if r.modality == "image+text"][:3]
    answers = [target_text(r) for r in records]
    rng = random.Random(0)
    for kind in ("others", "scenes", "noise"):
        pool = IrrelevantPool(kind, bundle.train("retain"))
        draws = [pool.draw(r, 4, rng) for r in records]
        assert all(im.size == r.image.size for r, d in zip(records, draws) for im in d)
        irrelevant = [[d[j] for d in draws] for j in range(4)]
        p_hat = ideal_distribution(lambda b: forward(model, b), make_batch, records, answers, irrelevant)
        manual = []
        with torch.no_grad():
            for imgs in irrelevant:
                swapped = [dataclasses.replace(r, image=im) for r, im in zip(records, imgs)]
                logits, labels = forward(model, make_batch(swapped, answers))
                manual.append(torch.softmax(answer_positions(logits, labels), -1))
        assert torch.allclose(p_hat, torch.stack(manual).mean(0), atol=1e-5)
        assert torch.allclose(p_hat.sum(-1), torch.ones(p_hat.shape[0]), atol=1e-4)
    # "others" never shows the forget person's own photo
    pool = IrrelevantPool("others", bundle.train("retain"))
    assert all(pid != records[0].profile_id for pid, _ in pool.photos)


def test_viker_forget_terms_follow_the_formulas_on_hand_made_tokens():
    """Two tokens of one sample: an ordinary one (p̂ puts 0.9 on it) and a key one (p̂ puts 0.01 on it,
    and the model already gives it less)."""
    from mmunlearn.methods.viker import forget_terms, token_kl

    p_hat = torch.tensor([[0.9, 0.05, 0.05], [0.01, 0.495, 0.495]])
    logits = torch.log(torch.tensor([[0.95, 0.03, 0.02], [0.005, 0.5, 0.495]]))
    ids, owner = torch.tensor([0, 0]), torch.tensor([0, 0])
    logp_y = torch.log(torch.tensor([0.95, 0.005]))
    kls = token_kl(p_hat, logits)
    ascent, kl, share = forget_terms(logits, p_hat, ids, owner, 1, "all", ascent_floor=False)
    assert torch.allclose(ascent, -logp_y.mean()) and torch.allclose(kl, kls.mean()) and share == 0.5
    # the floor drops the key token (0.005 < 0.01) from the ascent; "ordinary" weighs each KL by p̂(y)
    ascent, kl, _ = forget_terms(logits, p_hat, ids, owner, 1, "ordinary", ascent_floor=True)
    assert torch.allclose(ascent, -logp_y[0] / 2)
    assert torch.allclose(kl, (kls * torch.tensor([0.9, 0.01])).mean())



def test_viker_paper_cancels_the_ascent_on_ordinary_tokens_of_unequal_answers():
    """viker-paper's loss −γ·NLL_f + λ·(1/|y|)Σ KL with λ = γ = 1, both terms averaged per answer (1/|y|, then
    over the B answers). By hand, on token i of answer s: d(−NLL)/dz = onehot(y_i) − p and dKL/dz = p − p̂_i,
    each times 1/(B·|y_s|), so the gradient is (onehot(y_i) − p̂_i)/(B·|y_s|) whatever p_θ is: 0 where p̂_i is the
    answer itself (an ordinary token), and (1 − 1/3, −1/3, −1/3)/(B·|y_s|) where p̂_i is uniform over V = 3.
    Two answers of 2 and 8 tokens (B = 2); a global token mean for the ascent (1/10 on every token) left
    +0.00511 and −0.02046 on such tokens (issue #30)."""
    from mmunlearn.methods.base import registry
    from mmunlearn.methods.viker import forget_terms

    cfg = registry()["viker-paper"].Config()
    assert (cfg.gamma, cfg.kl_weight, cfg.kl_tokens, cfg.ascent_floor, cfg.ascent_mean) == (1.0, 1.0, "all", False,
                                                                                             "sample")
    owner = torch.tensor([0, 0] + [1] * 8)
    ids = torch.zeros(10, dtype=torch.long)
    p_y = 0.864  # the model's probability of every answer token
    logits = torch.log(torch.tensor([[p_y, (1 - p_y) / 2, (1 - p_y) / 2]] * 10)).requires_grad_()
    p_hat = torch.tensor([[1.0, 0.0, 0.0]] * 10)
    p_hat[1] = p_hat[9] = torch.tensor([1 / 3, 1 / 3, 1 / 3])  # one key token in each answer
    ascent, kl, _ = forget_terms(logits, p_hat, ids, owner, 2, cfg.kl_tokens, cfg.ascent_floor, cfg.ascent_mean)
    (-cfg.gamma * ascent + cfg.kl_weight * kl).backward()
    expected = torch.zeros(10, 3)
    key = torch.tensor([2 / 3, -1 / 3, -1 / 3])
    expected[1] = key / (2 * 2)  # the short answer's key token: B·|y| = 2·2
    expected[9] = key / (2 * 8)  # the long answer's: 2·8
    assert torch.allclose(logits.grad, expected, atol=1e-6), logits.grad
    assert logits.grad[[0, 2, 3, 4, 5, 6, 7, 8]].abs().max() < 1e-7  # ordinary tokens: cancelled exactly

def test_viker_key_tokens_are_the_fact_bearing_answer_tokens(tuned_small, tmp_path):
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method="viker", steps=0, method_args={"log_samples": 100}),
                     tmp_path / "u", loaded=load_model(vanilla))
    samples = result.log["viker_key_tokens"]
    records = {r.id: r for r in bundle.train("forget")}
    values = {(r.profile_id, r.fact): r.answer for r in records.values() if r.task in ("cloze", "classification")}
    assert len(samples) >= 20
    for key, best in (("weight", max), ("entropy", max), ("p_hat_y", min)):
        fact_hits = function_hits = 0
        for s in samples:
            rec = records[s["id"]]
            value = (rec.answer if rec.task != "generation" else values[(rec.profile_id, rec.fact)]).lower()
            token = best(s["tokens"], key=lambda t: t[key])["token"].strip().lower()
            if token in FUNCTION_WORDS:
                function_hits += 1
            # the fact's value, or on a photo question the pictured person's name (the identity the
            # photo supplies; issue #5 counts names among fact-bearing tokens). Single letters: the
            # option letter.
            elif len(token) > 1 and (token in value or (rec.modality == "image+text" and token in rec.name.lower())):
                fact_hits += 1
        assert fact_hits > function_hits, (key, fact_hits, function_hits)
        assert fact_hits >= 0.6 * len(samples), (key, fact_hits, len(samples))
    tok = samples[0]["tokens"][0]
    assert set(tok) >= {"token", "entropy", "p_hat_y", "weight"}


def test_viker_paper_forgets_photo_facts_without_degenerate_outputs(tuned_small, tmp_path, vanilla_acc):
    """The formula as SPEC and the paper write it (`viker-paper`: KL to p̂ on every token, both terms averaged per
    answer, λ = γ, person-free scenes) forgets the forget person's photo facts, on trained and unseen photos,
    and keeps the retain people.

    Our `viker` (KL weighted to ordinary tokens, ascent floor, λ 20) is tuned on the 100-person world; with 6
    people p̂ under other people's photos keeps enough mass on the true answer that it stops early: 300 steps
    left trained photos at 0.86 / 0.57 (fixture built at 1 / 2 threads), 0.71 / 0.57 with the KL on every token
    and no floor, 0.71 / 0.43 with the KL on every token and the floor (the 1-thread fixture failed this test
    with it). viker-paper at 200 steps, measured 1 / 2 threads: trained photos 0.00 / 0.29 (7 questions),
    unseen 0.05 / 0.14 (21), retain photos and text 1.00 / 1.00. Bound 0.6: 2.2 trained questions of slack."""
    bundle, vanilla, _ = tuned_small
    result = unlearn(bundle, UnlearnConfig(method="viker-paper", steps=200), tmp_path / "u",
                     loaded=load_model(vanilla))
    acc = accuracies(result.loaded, bundle)
    assert acc["forget/image+text"] <= 0.6 * vanilla_acc["forget/image+text"], (acc, vanilla_acc)
    unseen = [r for r in bundle.eval("test") if r.modality == "image+text" and r.profile_id in bundle.forget_ids]
    assert cls_acc(result.loaded, unseen) <= 0.6, "unseen photos"  # vanilla 1.00 (21 of 21)
    assert acc["retain/image+text"] >= 0.8 * vanilla_acc["retain/image+text"], (acc, vanilla_acc)
    assert acc["retain/text"] >= 0.85 * vanilla_acc["retain/text"], (acc, vanilla_acc)
    assert _rate(result.loaded, _gen(bundle, "forget", "image+text"), is_degenerate) <= 0.2
    assert _rate(result.loaded, _gen(bundle, "retain", "image+text"), is_degenerate) <= 0.1
    assert result.log["losses"][0]["kl_ideal"] > 0


def test_smfa_on_tied_embeddings_moves_the_head_not_the_input_embeddings(small_world, tmp_path):
    """A checkpoint whose output head shares its weights with the input embeddings (SmolVLM, Qwen2-VL-2B):
    SMFA's head delta goes into an untied copy of the head. The input embeddings come out exactly as they
    went in, the head moved, and the saved folder loads untied with both as saved."""
    from mmunlearn.data.store import load_data
    from mmunlearn.models.loader import build_tiny, load_model
    from mmunlearn.train.finetune import world_corpus

    bundle = load_data(small_world, "forget_15")
    loaded = build_tiny("tiny-qwen2-vl", world_corpus(bundle))
    model = loaded.model
    for config in (model.config, model.config.get_text_config()):
        config.tie_word_embeddings = True
    model.tie_weights()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    embeddings_before = model.get_input_embeddings().weight.detach().clone()
    result = unlearn(bundle, UnlearnConfig(method="smfa", steps=3, batch_size=4, lr=5e-2),
                     tmp_path / "u", loaded=loaded)
    after = result.loaded.model
    assert torch.equal(after.get_input_embeddings().weight, embeddings_before)
    assert result.log["smfa_untied_head"] is True
    assert not torch.equal(after.get_output_embeddings().weight, embeddings_before)  # the head did move
    reloaded = load_model(tmp_path / "u").model
    assert torch.equal(reloaded.get_input_embeddings().weight, embeddings_before)
    assert torch.equal(reloaded.get_output_embeddings().weight, after.get_output_embeddings().weight)
