"""Loading a saved folder: dtype and device choice, refusal of mismatched checkpoints, processor caps,
and evaluation of a bf16 model (issue 15, "Precision and memory")."""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mmunlearn.data.record import Record
from mmunlearn.eval import engine
from mmunlearn.models.base import ModelLoadError
from mmunlearn.models.loader import build_tiny, load_model, parse_device, parse_dtype

FAMILIES = ["llava", "qwen2-vl", "idefics3"]
TEXTS = [
    "Who is this? This is Alice Moreau.",
    "Where was Alice Moreau born? She was born in Lyon.",
    "Bob Tanaka has short black hair and wears glasses.",
]


def _image(side: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One freshly built (untrained) tiny model per family, saved as an HF folder: {family: (folder, state)}."""
    out = {}
    for family in FAMILIES:
        loaded = build_tiny(f"tiny-{family}", TEXTS)
        folder = tmp_path_factory.mktemp(family.replace("-", "_")) / "model"
        loaded.save(folder)
        out[family] = (folder, {k: v.detach().clone() for k, v in loaded.model.state_dict().items()})
    return out


def _copy(saved, family, tmp_path):
    folder = tmp_path / family
    shutil.copytree(saved[family][0], folder)
    return folder


def _rewrite_weights(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _rewrite_json(folder, name, edit):
    path = folder / name
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ---- dtype / device parsing ----------------------------------------------------------------------

@pytest.mark.parametrize("spelling, expected", [
    ("bf16", torch.bfloat16), ("bfloat16", torch.bfloat16), ("BF16", torch.bfloat16),
    ("fp16", torch.float16), ("float16", torch.float16),
    ("fp32", torch.float32), ("float32", torch.float32), (" fp32 ", torch.float32),
    (torch.bfloat16, torch.bfloat16), ("auto", "auto"), ("AUTO", "auto"), (None, "auto"),
])
def test_parse_dtype_spellings(spelling, expected):
    assert parse_dtype(spelling) == expected


@pytest.mark.parametrize("bad", ["int8", "fp8", "", "bf-16", torch.int64, torch.float64])
def test_parse_dtype_rejects_with_the_choices(bad):
    with pytest.raises(ValueError) as err:
        parse_dtype(bad)
    assert "bf16|fp16|fp32" in str(err.value)


def test_parse_device():
    assert parse_device(None) is None
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        parse_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            parse_device("cuda")


def test_load_model_rejects_unknown_dtype_before_loading(saved):
    with pytest.raises(ValueError, match="bf16\\|fp16\\|fp32"):
        load_model(saved["llava"][0], dtype="int4")


# ---- clean reloads and refused checkpoints -------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_clean_save_reloads_same_weights_fp32_on_cpu(saved, family):
    folder, state = saved[family]
    loaded = load_model(folder)
    params = list(loaded.model.parameters())
    assert {p.dtype for p in params} == {torch.float32}  # saved fp32 → "auto" keeps fp32
    assert {p.device.type for p in params} == {"cpu"}  # device=None: the CPU, as before
    reloaded = loaded.model.state_dict()
    for key, tensor in state.items():
        assert torch.equal(reloaded[key], tensor), key


def _file_keys(folder):
    return sorted(load_file(folder / "model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_removed_weight_is_an_error(saved, family, tmp_path):
    """The file may spell names in a family's original layout (LLaVA: `language_model.model.…`); the error
    names the model's parameter, which ends the same way."""
    folder = _copy(saved, family, tmp_path)
    suffix = "layers.0.mlp.down_proj.weight"
    (victim,) = [k for k in _file_keys(folder) if k.endswith(suffix) and "vision" not in k]
    (param,) = [k for k in saved[family][1] if k.endswith(suffix) and "vision" not in k]
    _rewrite_weights(folder, lambda t: t.pop(victim))
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    message = str(err.value)
    assert "1 missing weight (" in message and param in message, message


@pytest.mark.parametrize("family", FAMILIES)
def test_extra_weight_is_an_error(saved, family, tmp_path):
    folder = _copy(saved, family, tmp_path)
    _rewrite_weights(folder, lambda t: t.update({"model.stray_head.weight": torch.zeros(4, 4)}))
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    message = str(err.value)
    assert "1 unexpected weight" in message and "model.stray_head.weight" in message, message


def test_many_missing_weights_counted_and_first_few_named(saved, tmp_path):
    folder = _copy(saved, "llava", tmp_path)
    dropped = [k for k in _file_keys(folder) if k.startswith("language_model.model.layers.1.")]
    assert len(dropped) == 9  # q k v o gate up down + 2 norms
    _rewrite_weights(folder, lambda t: [t.pop(k) for k in dropped])
    with pytest.raises(ModelLoadError) as err:
        load_model(folder)
    message = str(err.value)
    layer = "model.language_model.layers.1."
    # sorted: input_layernorm, mlp.down_proj, mlp.gate_proj are named; the rest is "..."
    assert f"9 missing weights ({layer}input_layernorm.weight, {layer}mlp.down_proj.weight, " \
           f"{layer}mlp.gate_proj.weight, ...)" in message, message
    assert f"{layer}self_attn.v_proj.weight" not in message


def test_wrong_shape_is_a_load_error(saved, tmp_path):
    folder = _copy(saved, "llava", tmp_path)
    (key,) = [k for k in _file_keys(folder) if k.endswith("multi_modal_projector.linear_2.bias")]
    _rewrite_weights(folder, lambda t: t.update({key: torch.zeros(129)}))  # the model's is (128,)
    with pytest.raises(ModelLoadError, match="1 weight of the wrong shape .*checkpoint \\(129,\\) vs model \\(128,\\)"):
        load_model(folder)


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_lm_head_is_not_a_missing_weight(saved, family, tmp_path):
    """A model whose lm_head is tied to the embeddings saves no lm_head: that is not 'missing'."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    folder = _copy(saved, family, tmp_path)
    config = AutoConfig.from_pretrained(folder)
    config.tie_word_embeddings = True
    config.get_text_config().tie_word_embeddings = True
    AutoModelForImageTextToText.from_config(config).save_pretrained(folder)
    assert not any(k.startswith("lm_head.") for k in load_file(folder / "model.safetensors"))
    model = load_model(folder).model
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_keys_transformers_declares_ignorable_are_not_errors(saved, tmp_path):
    """Old checkpoints carry buffers that are no longer saved (CLIP position_ids, Llama rotary inv_freq)."""
    folder = _copy(saved, "llava", tmp_path)
    keys = _file_keys(folder)
    (embed,) = [k for k in keys if k.endswith("embeddings.position_embedding.weight")]
    (query,) = [k for k in keys if k.endswith("layers.0.self_attn.q_proj.weight") and "language_model" in k]
    _rewrite_weights(folder, lambda t: t.update({
        embed.replace("position_embedding.weight", "position_ids"): torch.arange(17).unsqueeze(0),
        query.replace("q_proj.weight", "rotary_emb.inv_freq"): torch.ones(16),
    }))
    load_model(folder)


# ---- dtype / device of the loaded model ----------------------------------------------------------

def test_auto_dtype_follows_the_saved_dtype(saved, tmp_path):
    folder = _copy(saved, "llava", tmp_path)
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(folder).to(torch.bfloat16).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    assert {p.dtype for p in load_model(folder).model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_model(folder, dtype="auto").model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in load_model(folder, dtype="fp32").model.parameters()} == {torch.float32}


@pytest.mark.parametrize("dtype, expected", [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                             (torch.float32, torch.float32)])
def test_explicit_dtype(saved, dtype, expected):
    assert {p.dtype for p in load_model(saved["qwen2-vl"][0], dtype=dtype).model.parameters()} == {expected}


def test_device_auto(saved):
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert {p.device.type for p in load_model(saved["llava"][0], device="auto").model.parameters()} == {want}


# ---- processor caps ------------------------------------------------------------------------------

def _count(processor, prompt, image, token_id):
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    return int((enc["input_ids"] == token_id).sum())


def _idefics3_tokens(processor, image):
    prompt = "<image>Who is this?"
    enc = processor(text=[prompt], images=[[image]], return_tensors="pt")
    return int((enc["input_ids"] == processor.image_token_id).sum())


def test_idefics3_image_splitting_off_by_default_and_overridable(saved, tmp_path):
    """A folder saved with splitting on (max tile 32px, resize to 64px): a 64px photo is 2×2 tiles + the
    global view = 5 tiles × 4 tokens = 20 with splitting, one 32px tile = 4 tokens without."""
    folder = _copy(saved, "idefics3", tmp_path)

    def splitting_on(cfg):
        cfg["image_processor"]["do_image_splitting"] = True
        cfg["image_processor"]["size"] = {"longest_edge": 64}

    _rewrite_json(folder, "processor_config.json", splitting_on)
    photo = _image(64)
    capped = load_model(folder).processor
    assert capped.image_processor.do_image_splitting is False
    assert _idefics3_tokens(capped, photo) == 4
    split = load_model(folder, processor_kwargs={"do_image_splitting": True}).processor
    assert split.image_processor.do_image_splitting is True
    assert _idefics3_tokens(split, photo) == 20


def _qwen_tokens(processor, image):
    prompt = "<|vision_start|><|image_pad|><|vision_end|>Who is this?"
    enc = processor(text=[prompt], images=[image], return_tensors="pt")
    return int((enc["input_ids"] == processor.image_token_id).sum())


def test_qwen2_vl_max_pixels_capped_by_default_and_overridable(saved, tmp_path):
    """Tiny Qwen2-VL: patch 8, merge 2 → sides snap to multiples of 16, one token per 16×16 pixels.

    A 1024² photo (1048576 px) in a folder saved with the released max_pixels 12845056:
    - default cap 1280·28·28 = 1003520 px: scale 1024·sqrt(1003520/1048576) = 1001.76 → floor to 62·16 = 992
      → (992/16)² = 3844 tokens;
    - max_pixels=4096 given: 1024/sqrt(1048576/4096) = 64 → (64/16)² = 16 tokens;
    - max_pixels=12845056 given (above the cap, used as is): 1024 fits → (1024/16)² = 4096 tokens.
    """
    folder = _copy(saved, "qwen2-vl", tmp_path)
    _rewrite_json(folder, "processor_config.json",
                  lambda cfg: cfg["image_processor"]["size"].update({"longest_edge": 12845056}))
    photo = _image(1024)
    assert _qwen_tokens(load_model(folder).processor, photo) == 3844
    assert _qwen_tokens(load_model(folder, processor_kwargs={"max_pixels": 4096}).processor, photo) == 16
    assert _qwen_tokens(load_model(folder, processor_kwargs={"max_pixels": 12845056}).processor, photo) == 4096


def test_processor_settings_are_saved_with_the_image_processor_only(saved, tmp_path):
    """An override travels in the saved processor_config.json, never in tokenizer_config.json (from where
    it would override the image processor on every later call)."""
    folder = _copy(saved, "qwen2-vl", tmp_path)
    loaded = load_model(folder, processor_kwargs={"max_pixels": 4096})
    out = tmp_path / "resaved"
    loaded.save(out)
    assert json.loads((out / "processor_config.json").read_text())["image_processor"]["size"]["longest_edge"] == 4096
    assert "max_pixels" not in (out / "tokenizer_config.json").read_text()
    assert _qwen_tokens(load_model(out).processor, _image(1024)) == 16  # 4096 < the cap: kept


def test_unknown_processor_setting_is_a_load_error(saved):
    with pytest.raises(ModelLoadError, match="unknown processor setting 'do_image_splitting'"):
        load_model(saved["llava"][0], processor_kwargs={"do_image_splitting": False})


def test_tiny_processors_keep_their_own_settings(saved):
    """The tiny Qwen2-VL folder allows 2048 px (below the cap): a 1024² photo scales by sqrt(1048576/2048) =
    22.63 → 45.25 → floor to 2·16 = 32 px → 4 tokens, as a 32px photo; tiny Idefics3 never split."""
    qwen = load_model(saved["qwen2-vl"][0]).processor
    assert _qwen_tokens(qwen, _image(1024)) == 4
    assert _qwen_tokens(qwen, _image(32)) == 4
    idefics = load_model(saved["idefics3"][0]).processor
    assert _idefics3_tokens(idefics, _image(32)) == 4


# ---- evaluation in the model's dtype -------------------------------------------------------------

def _records():
    photo = Record(id="p", profile_id="alice", question="Who is this?", answer="This is Alice Moreau.",
                   modality="image+text", image=_image(32, seed=1))
    text = Record(id="t", profile_id="alice", question="Where was Alice Moreau born?", answer="She was born in Lyon.")
    return [photo, text]


def test_batches_reach_the_model_in_its_dtype():
    model = torch.nn.Linear(2, 2).to(torch.bfloat16)
    batch = {"input_ids": torch.tensor([[1, 2]]), "pixel_values": torch.zeros(1, 3, 4, 4),
             "pixel_attention_mask": torch.ones(1, 4, 4, dtype=torch.bool)}
    moved = engine._to_model(batch, model)
    assert moved["pixel_values"].dtype == torch.bfloat16
    assert moved["input_ids"].dtype == torch.int64
    assert moved["pixel_attention_mask"].dtype == torch.bool


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_model_scores_and_generates(saved, family, device):
    folder = saved[family][0]
    records = _records()
    answers = [r.answer for r in records]
    bf16 = load_model(folder, dtype="bf16", device=device)
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in bf16.model.parameters()} == {device}
    lp16 = engine.answer_logprobs(bf16, records, answers, progress=False)
    replies = engine.generate(bf16, records, max_new_tokens=3, progress=False)
    assert len(replies) == 2 and all(isinstance(r, str) for r in replies)
    # Same weights in fp32: per-token log-probs agree to bf16 precision.
    lp32 = engine.answer_logprobs(load_model(folder), records, answers, progress=False)
    for a, b in zip(lp16, lp32):
        assert len(a) == len(b) > 1
        assert all(np.isfinite(a))
        assert np.allclose(a, b, atol=0.1), (a, b)
