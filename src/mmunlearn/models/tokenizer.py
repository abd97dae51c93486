"""A byte-level BPE tokenizer trained locally on the world's own text.

No tokenizer can be downloaded here, so tiny models get one trained in seconds on the records they
will see. Byte-level BPE can still encode any string (real benchmark text, refusals) — words outside
the corpus just cost more tokens.
"""

from __future__ import annotations

from typing import Iterable

from transformers import PreTrainedTokenizerFast

PAD, EOS, UNK = "<pad>", "<|end|>", "<unk>"
ROLE_TOKENS = ["<|user|>", "<|assistant|>", "<|system|>"]
# One tokenizer serves every tiny family, so it carries each family's image tokens.
IMAGE_TOKENS = [
    "<image>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<fake_token_around_image>",
    "<global-img>",
]
SPECIAL_TOKENS = [PAD, EOS, UNK, *ROLE_TOKENS, *IMAGE_TOKENS]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train byte-level BPE on `texts`; returns a HF fast tokenizer with pad/eos set."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
    )
    fast.add_special_tokens({"additional_special_tokens": ROLE_TOKENS + IMAGE_TOKENS})
    fast.padding_side = "right"
    return fast


def chat_template(image_placeholder: str) -> str:
    """A minimal chat template; `image_placeholder` is what the family's processor expands."""
    return (
        "{% for message in messages %}"
        "<|{{ message['role'] }}|>{{ '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'image' %}" + image_placeholder + "{{ '\\n' }}"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "<|end|>{{ '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
    )
