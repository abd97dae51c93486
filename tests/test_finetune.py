import torch
from transformers import AutoModelForImageTextToText

from helpers import accuracies
from mmunlearn.models.loader import load_model


def test_the_fixture_memorises_the_small_world(tuned_small):
    """The shipped fixture (or, with MMUNLEARN_TEST_REFIT=1, today's fine-tune with its recipe) knows the people;
    test_journey's quick demo holds the fine-tune a user runs to the same."""
    bundle, out, log = tuned_small
    loaded = load_model(out)
    acc = accuracies(loaded, bundle)
    # chance is 0.25; the people must be genuinely memorised, from the photo and from the name
    for key in ("forget/image+text", "forget/text", "retain/image+text", "retain/text"):
        assert acc[key] >= 0.85, acc
    assert acc["understanding_retain"] >= 0.85, acc
    assert log["parameters"] > 0 and log["wall_time_s"] > 0
    losses = [row["loss"] for row in log["log"]]
    assert losses[-1] < losses[0] / 5


def test_saved_model_loads_with_plain_from_pretrained(tuned_small):
    _, out, _ = tuned_small
    model = AutoModelForImageTextToText.from_pretrained(out)
    loaded = load_model(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)
