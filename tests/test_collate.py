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
