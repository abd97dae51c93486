"""The contract every family adapter must meet (the collator, trainer and methods rely on it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from mmunlearn.models.base import PART_NAMES, TinySize, families
from mmunlearn.models.tokenizer import train_tokenizer

FAMILIES = ["llava", "qwen2-vl", "idefics3"]
SENTENCES = [
    "Who is this? This is Alice Moreau.",
    "Where was Alice Moreau born? She was born in Lyon.",
    "Bob Tanaka has short black hair and wears glasses.",
    "The person in the photo is smiling in front of a blue wall.",
    "I cannot help with that request.",
]
PHOTO_TURN = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Who is this?"}]}]
TEXT_TURN = [{"role": "user", "content": [{"type": "text", "text": "Where was Alice Moreau born?"}]}]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(SENTENCES * 4, vocab_size=400)


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tokenizer):
    adapter = families()[request.param]
    model, processor = adapter.build_tiny(tokenizer, TinySize(), seed=0)
    return adapter, model.eval(), processor


def _image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _prompts(processor) -> tuple[str, str]:
    render = lambda turn: processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)  # noqa: E731
    return render(PHOTO_TURN), render(TEXT_TURN)


def test_chat_template_renders_placeholder(built):
    adapter, _, processor = built
    photo, text = _prompts(processor)
    assert adapter.image_placeholder in photo
    assert adapter.image_placeholder not in text


def test_save_load_round_trip_identical_logits(built, tmp_path):
    from transformers import AutoModelForImageTextToText

    adapter, model, processor = built
    photo, text = _prompts(processor)
    enc = adapter.encode(processor, [photo, text], [_image(), None], padding_side="right")
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    reprocessor = adapter.load_processor(tmp_path)
    assert type(reprocessor) is type(processor)
    enc2 = adapter.encode(reprocessor, [photo, text], [_image(), None], padding_side="right")
    assert enc.keys() == enc2.keys()
    for key in enc:
        assert torch.equal(enc[key], enc2[key]), key
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, reloaded(**enc2).logits)


def test_mixed_batch_forward_right_padding(built):
    adapter, model, processor = built
    photo, text = _prompts(processor)
    enc = adapter.encode(processor, [photo, text], [_image(), None], padding_side="right")
    assert (enc["attention_mask"][:, 0] == 1).all()  # right padding: every row starts with a real token
    with torch.no_grad():
        out = model(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape
    assert torch.isfinite(out.logits).all()


def test_text_only_batch_forward(built):
    adapter, model, processor = built
    _, text = _prompts(processor)
    enc = adapter.encode(processor, [text, text], [None, None], padding_side="right")
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()


def test_generate_left_padding(built):
    adapter, model, processor = built
    photo, text = _prompts(processor)
    enc = adapter.encode(processor, [text, photo], [None, _image()], padding_side="left")
    assert (enc["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 2
    assert 1 <= out.shape[1] - enc["input_ids"].shape[1] <= 3


def test_every_parameter_in_exactly_one_part(built):
    adapter, model, _ = built
    counts = {part: 0 for part in PART_NAMES}
    for name, param in model.named_parameters():
        owners = [
            part
            for part, prefixes in zip(PART_NAMES, (adapter.vision_prefixes, adapter.projector_prefixes, adapter.language_prefixes))
            if any(name.startswith(p) for p in prefixes)
        ]
        assert len(owners) == 1, (name, owners)
        assert adapter.part_of(name) == owners[0]
        counts[owners[0]] += param.numel()
    assert all(counts[p] > 0 for p in PART_NAMES), counts
    parts = adapter.parameters_by_part(model)
    assert sum(len(v) for v in parts.values()) == len(list(model.named_parameters()))


def test_lora_targets_in_language_model(built):
    adapter, model, _ = built
    targets = adapter.lora_targets(model, ("W",))
    assert targets
    assert all(adapter.part_of(t + ".weight") == "W" for t in targets)


def test_feature_hooks_fire_on_image_forward(built):
    adapter, model, processor = built
    photo, _ = _prompts(processor)
    modules = adapter.feature_modules(model)
    assert set(modules) == {"vision_layer", "projector"}
    assert adapter.part_of(next(n for n, m in model.named_modules() if m is modules["vision_layer"]) + ".x") == "V"
    assert adapter.part_of(next(n for n, m in model.named_modules() if m is modules["projector"]) + ".x") == "P"
    fired: dict[str, int] = {}
    handles = [
        module.register_forward_hook(lambda _m, _i, _o, key=key: fired.__setitem__(key, fired.get(key, 0) + 1))
        for key, module in modules.items()
    ]
    try:
        enc = adapter.encode(processor, [photo], [_image()], padding_side="right")
        with torch.no_grad():
            model(**enc)
    finally:
        for handle in handles:
            handle.remove()
    assert fired.keys() == modules.keys()
