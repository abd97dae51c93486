import pytest

from mmunlearn.data.collate import IGNORE, TrainCollator, render_prompt, target_text
from mmunlearn.data.store import load_data
from mmunlearn.models.loader import build_tiny
from mmunlearn.train.finetune import world_corpus


@pytest.fixture(scope="module")
def bundle(small_world):
    return load_data(small_world, "forget_10")


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "idefics3"])
def test_labels_cover_exactly_the_answer_tokens(bundle, family):
    loaded = build_tiny(f"tiny-{family}", world_corpus(bundle))
    train = bundle.train("forget")
    recs = [r for r in train if r.modality == "text"][:6] + [r for r in train if r.modality != "text"][:6]
    assert {r.modality for r in recs} == {"image+text", "text"}
    batch = TrainCollator(loaded.adapter, loaded.processor)(recs)
    tok = loaded.tokenizer
    for i, rec in enumerate(recs):
        labels = batch["labels"][i]
        kept = labels[labels != IGNORE].tolist()
        assert tok.decode(kept) == target_text(rec) + tok.eos_token
        # everything before the answer (prompt, image tokens) and all padding is masked
        first = (labels != IGNORE).nonzero()[0].item()
        n_prompt = len(tok(render_prompt(loaded.processor, rec), add_special_tokens=False)["input_ids"])
        assert first >= n_prompt - 1
        assert (labels[batch["attention_mask"][i] == 0] == IGNORE).all()


def test_option_shuffling_changes_letters_not_facts(bundle):
    loaded = build_tiny("tiny-llava", world_corpus(bundle))
    rec = next(r for r in bundle.train("forget") if r.task == "classification")
    collate = TrainCollator(loaded.adapter, loaded.processor, shuffle_options=True, seed=3)
    tok = loaded.tokenizer
    seen = set()
    for _ in range(20):
        b = collate([rec])
        ids = b["input_ids"][0][b["attention_mask"][0] == 1]
        text = tok.decode(ids)
        answer = tok.decode(b["labels"][0][b["labels"][0] != IGNORE]).replace(tok.eos_token, "")
        assert answer.startswith(f"{rec.reasoning} {rec.answer} (" if rec.reasoning else f"{rec.answer} (")
        letter = answer[-2]
        # the option line with the target letter names the true value
        assert f"{letter}. {rec.answer}" in text
        seen.add(letter)
    assert len(seen) > 1


def test_fact_answers_name_the_person_before_the_value(bundle):
    """Photo → person → fact: every fact answer is "The <key noun> of <person> is <value>"
    (generation as a sentence, classification/cloze with that stem as `reasoning`); the key noun is
    the one in the question; the name answer opens "The name is"; what-is-visible answers open with the
    part asked about ("The hair colour is")."""
    from mmunlearn.data.world import KEY_NOUN, UNDERSTANDING

    for rec in bundle.train("forget") + bundle.eval("forget") + bundle.splits["understanding"]:
        if rec.fact == "name":
            stem = "The name is"
        elif rec.fact.startswith("visible"):
            stem = UNDERSTANDING[rec.fact.split(":")[1]]["lead"]
        else:
            stem = f"The {KEY_NOUN[rec.fact]} of {rec.name} is"
            assert KEY_NOUN[rec.fact] in rec.question
        assert rec.reasoning == stem  # stored for every task (refusals keep the answer's form)
        assert target_text(rec).startswith(stem + " ")
        if rec.task == "generation":
            assert target_text(rec) == rec.answer  # the sentence itself carries the lead
        else:
            assert target_text(rec).startswith(f"{rec.reasoning} {rec.answer}")
            assert rec.answer not in rec.reasoning


def test_option_likelihood_is_scored_after_the_models_own_reasoning(bundle, monkeypatch):
    """cls_acc_loglik must never be handed the true name: it continues the model's own reply."""
    import mmunlearn.eval.engine as engine

    from mmunlearn.data.collate import names_person

    rec = next(r for r in bundle.eval("forget") if r.task == "classification" and names_person(r)
               and r.image is not None)  # a photo question: the model must name the person itself
    seen = []

    def fake_answer_logprobs(loaded, records, answers, **kw):
        seen.extend(answers)
        return [[-1.0] for _ in answers]

    monkeypatch.setattr(engine, "answer_logprobs", fake_answer_logprobs)
    head, tail = rec.reasoning.split(rec.name)  # "The birthplace of ", " is"
    engine.option_logprobs(None, [rec], replies=[f"{head}Ezra Zeller{tail} whatever (A)"])
    assert len(seen) == len(rec.options)
    assert all(a.startswith(f"{head}Ezra Zeller{tail} ") for a in seen)
    assert not any(rec.name in a for a in seen)
    seen.clear()
    engine.option_logprobs(None, [rec], replies=["no reasoning here"])
    assert seen[0] == f"{rec.options[0]} (A)"
    seen.clear()  # another attribute's stem is not this record's reasoning
    engine.option_logprobs(None, [rec], replies=[f"The hobby of Ezra Zeller{tail} chess"])
    assert seen[0] == f"{rec.options[0]} (A)"


def _options_scored_without_generating(monkeypatch, rec, replies=None) -> list[str]:
    """The answers option_logprobs scores for `rec`; generating a reply fails the test."""
    import mmunlearn.eval.engine as engine

    seen = []
    monkeypatch.setattr(engine, "answer_logprobs", lambda loaded, records, answers, **kw: seen.extend(answers)
                        or [[-1.0] for _ in answers])
    monkeypatch.setattr(engine, "generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("generated")))
    engine.option_logprobs(None, [rec], replies=replies)
    return seen


def test_visible_leads_are_scored_after_the_records_own_lead(bundle, monkeypatch):
    """A lead that names no one ("The hair is") is fixed by the question: options are scored after it
    whatever the model replied, and no reply is generated for it."""
    rec = next(r for r in bundle.splits["understanding"] if r.task == "classification")
    seen = _options_scored_without_generating(monkeypatch, rec)
    assert seen == [f"{rec.reasoning} {o} ({'ABCD'[j]})" for j, o in enumerate(rec.options)]


def test_text_questions_are_scored_after_their_own_lead_so_a_refusal_hides_nothing(bundle, monkeypatch):
    """The question already names the person: options follow the record's lead ("The birthplace of
    <name> is"), not the model's reply, and no reply is generated for them."""
    rec = next(r for r in bundle.eval("forget") if r.task == "classification" and r.modality == "text")
    assert rec.name in rec.question and rec.name in rec.reasoning
    expected = [f"{rec.reasoning} {o} ({'ABCD'[j]})" for j, o in enumerate(rec.options)]
    assert _options_scored_without_generating(monkeypatch, rec) == expected
    # a refusal reply changes nothing
    assert _options_scored_without_generating(monkeypatch, rec, ["I'm sorry, I can't share that."]) == expected


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "idefics3"])
def test_compact_answer_logits_match_the_full_forward(bundle, family):
    """Projecting only answer positions gives the model's own loss, the same per-token log-probs and
    the same gradients as the full forward (the layout every loss in methods/losses.py reads)."""
    import torch

    from mmunlearn.methods.losses import answer_nll, sequence_logprob
    from mmunlearn.models.answer_logits import _plain_head, answer_logits, compact

    loaded = build_tiny(f"tiny-{family}", world_corpus(bundle))
    model = loaded.model
    assert _plain_head(model)
    train = bundle.train("forget")
    recs = [r for r in train if r.modality == "text"][:3] + [r for r in train if r.modality != "text"][:3]
    batch = TrainCollator(loaded.adapter, loaded.processor)(recs)
    full = model(**batch)
    logits, labels = answer_logits(model, batch)
    assert labels.shape[1] == int((batch["labels"][:, 1:] != IGNORE).sum(1).max()) + 1
    assert torch.allclose(answer_nll(logits, labels), full.loss, atol=1e-5)
    gathered, same_labels = compact(full.logits, batch["labels"])
    assert torch.equal(same_labels, labels)
    assert torch.allclose(sequence_logprob(logits, labels), sequence_logprob(gathered, labels), atol=1e-4)
    grads = []
    for loss in (full.loss, answer_nll(logits, labels)):
        model.zero_grad()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_length_grouped_sampler_pads_less_and_resumes_exactly(bundle):
    from mmunlearn.data.collate import approx_length
    from mmunlearn.train.sampling import RecordSampler

    records = bundle.train("retain")
    n, size = len(records), 16
    grouped = RecordSampler(records, size, seed=1, length=approx_length, group=4)
    plain = RecordSampler(records, size, seed=1)
    # every record once per pass
    seen = [r.id for _ in range(n // size // 4 * 4) for r in grouped.next()]
    assert len(seen) == len(set(seen))

    def padded(sampler):
        return sum(max(map(approx_length, b)) * len(b) for b in (sampler.next() for _ in range(40)))

    assert padded(RecordSampler(records, size, 2, length=approx_length, group=4)) < 0.85 * padded(plain)
    # a sampler restored mid-group continues exactly like the original
    state = grouped.state()
    ahead = [[r.id for r in grouped.next()] for _ in range(6)]
    twin = RecordSampler(records, size, seed=99, length=approx_length, group=4)
    twin.load_state(state)
    assert [[r.id for r in twin.next()] for _ in range(6)] == ahead
