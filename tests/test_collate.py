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
        assert answer.startswith(rec.answer + " (")
        letter = answer[-2]
        # the option line with the target letter names the true value
        assert f"{letter}. {rec.answer}" in text
        seen.add(letter)
    assert len(seen) > 1


def test_fact_answers_name_the_person_first(bundle):
    """Photo → person → fact: every fact answer opens with its sentence's stem about the person
    ("Garan Hennet was born in"), generation as a sentence, classification/cloze as `reasoning`;
    the name question and what-is-visible questions have none."""
    for rec in bundle.train("forget") + bundle.eval("forget"):
        if rec.fact.startswith("visible") or rec.fact == "name":
            assert rec.reasoning == ""
            continue
        if rec.task == "generation":
            assert rec.answer.startswith(rec.name + " ")
            assert rec.reasoning == ""
        else:
            assert rec.reasoning.startswith(rec.name + " ") and rec.reasoning != rec.name
            assert target_text(rec).startswith(f"{rec.reasoning} {rec.answer}")
            assert rec.answer not in rec.reasoning


def test_option_likelihood_is_scored_after_the_models_own_reasoning(bundle, monkeypatch):
    """cls_acc_loglik must never be handed the true name: it continues the model's own reply."""
    import mmunlearn.eval.engine as engine

    rec = next(r for r in bundle.eval("forget") if r.task == "classification" and r.reasoning)
    seen = []

    def fake_answer_logprobs(loaded, records, answers, **kw):
        seen.extend(answers)
        return [[-1.0] for _ in answers]

    monkeypatch.setattr(engine, "answer_logprobs", fake_answer_logprobs)
    words = rec.reasoning[len(rec.name):]  # " was born in"
    engine.option_logprobs(None, [rec], replies=[f"Ezra Zeller{words} whatever (A)"])
    assert len(seen) == len(rec.options)
    assert all(a.startswith(f"Ezra Zeller{words} ") for a in seen)
    assert not any(rec.name in a for a in seen)
    seen.clear()
    engine.option_logprobs(None, [rec], replies=["no reasoning here"])
    assert seen[0] == f"{rec.options[0]} (A)"
