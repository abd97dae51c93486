"""Load any supported model from a local HF folder, or build a tiny one by name (`tiny-llava`...)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .base import FamilyAdapter, ModelLoadError, TinySize, adapter_chain, adapter_for_folder, families

TINY_PREFIX = "tiny-"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: Any
    adapter: FamilyAdapter

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def save(self, out: str | Path) -> None:
        """A merged HF folder that plain `AutoModelForImageTextToText.from_pretrained` loads."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()
        model.save_pretrained(out, safe_serialization=True)
        self.processor.save_pretrained(out)
        from ..data.store import honour_umask

        honour_umask(out)


def tiny_names() -> list[str]:
    return [TINY_PREFIX + name for name in families()]


def is_tiny(spec: str | Path) -> bool:
    return str(spec).startswith(TINY_PREFIX) and not Path(str(spec)).exists()


def build_tiny(spec: str, texts: Iterable[str], size: TinySize | None = None, seed: int = 0,
               vocab_size: int = 2048) -> LoadedModel:
    """A freshly initialised tiny model of a family, with a tokenizer trained on `texts`."""
    from ..data.collate import OPTION_INSTRUCTION
    from ..data.refusals import REFUSALS
    from .tokenizer import train_tokenizer

    family = spec[len(TINY_PREFIX):]
    fams = families()
    if family not in fams:
        raise ModelLoadError(f"unknown tiny model {spec!r}; choose one of {', '.join(tiny_names())}")
    adapter = fams[family]
    corpus = list(texts) + list(REFUSALS) + [OPTION_INSTRUCTION, "A B C D"]
    tokenizer = train_tokenizer(corpus, vocab_size=vocab_size)
    model, processor = adapter.build_tiny(tokenizer, size or TinySize(), seed=seed)
    return LoadedModel(model, processor, adapter)


# --dtype spellings → torch dtypes ("auto": the dtype recorded in the folder's config).
_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16,
    "fp32": torch.float32, "float32": torch.float32,
}
DTYPE_CHOICES = "bf16|fp16|fp32 (or auto)"
# How many offending weight names a ModelLoadError quotes.
_KEYS_SHOWN = 3


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | str:
    """A --dtype value → a torch dtype, or the string "auto" (the folder's own dtype; None means "auto" too).

    Accepts bf16|fp16|fp32, their long names bfloat16|float16|float32 (any case) and a torch dtype of
    those three. Anything else is a ValueError whose message lists the choices (the CLI's `error:` line).
    """
    if value is None:
        return "auto"
    if isinstance(value, torch.dtype):
        if value in _DTYPES.values():
            return value
        raise ValueError(f"unsupported dtype {value}: choose {DTYPE_CHOICES}")
    key = str(value).strip().lower()
    if key == "auto":
        return "auto"
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {value!r}: choose {DTYPE_CHOICES}")
    return _DTYPES[key]


def parse_device(value: str | torch.device | None) -> torch.device | None:
    """None → None (load on the CPU, as before); "auto" → cuda if available (transformers then loads onto
    cuda:$LOCAL_RANK), else cpu; else a torch device (cpu, cuda, cuda:N).

    ValueError for a spelling torch does not know or a CUDA device on a machine without CUDA.
    """
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {value!r} asked for, but CUDA is not available here (use auto or cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {value!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def _check_loading_info(path: str | Path, info: dict) -> None:
    """Missing, unexpected or mis-shaped weights → ModelLoadError (never a silent fresh init).

    `info` is `from_pretrained(..., output_loading_info=True)`'s report, read after transformers has
    already dropped tied weights (an lm_head tied to the embeddings is not saved) and the keys the model
    class declares ignorable (`_keys_to_ignore_on_load_missing/unexpected`, old rotary buffers).
    """
    problems = []
    for kind in ("missing", "unexpected"):
        keys = sorted(info.get(f"{kind}_keys") or ())
        if keys:
            shown = ", ".join(keys[:_KEYS_SHOWN]) + (", ..." if len(keys) > _KEYS_SHOWN else "")
            problems.append(f"{len(keys)} {kind} weight{'s' if len(keys) != 1 else ''} ({shown})")
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda m: str(m[0]))
    if mismatched:
        shown = ", ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:_KEYS_SHOWN])
        problems.append(f"{len(mismatched)} weight{'s' if len(mismatched) != 1 else ''} of the wrong shape ({shown}"
                        + (", ...)" if len(mismatched) > _KEYS_SHOWN else ")"))
    if info.get("error_msgs"):
        problems.append(f"loading errors ({str(info['error_msgs'][0]).splitlines()[0]})")
    if problems:
        raise ModelLoadError(f"{path}: the checkpoint does not match the model's architecture: {'; '.join(problems)}; "
                             "refusing to continue with freshly initialised weights")


def load_model(path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | torch.device | None = None,
               processor_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """A local HF image-text-to-text folder. Never reaches a hub (`local_files_only`).

    dtype: "auto" (default; also None) keeps the dtype recorded in the folder's config — a model saved in
    bf16 loads in bf16, a tiny one saved in fp32 stays fp32; or bf16|fp16|fp32 / a torch dtype (see
    `parse_dtype`). device: None loads on the CPU; "auto" picks cuda when available, else cpu; or any
    torch device spelling (weights go straight there). processor_kwargs override the family's processor
    caps and saved settings (e.g. {"do_image_splitting": True} for Idefics3, {"max_pixels": N} for
    Qwen2-VL; see each adapter's `processor_caps`).
    `path` may also be a peft adapter folder (adapter_config.json + adapter weights, e.g. a LoRA run's
    OUT/adapter/): its base model (adapter_config.json's base_model_name_or_path) is loaded as above and
    the adapter merged into it, so callers always get a plain model.
    Raises ModelLoadError for an unloadable folder or a checkpoint with missing / unexpected weights
    (an adapter: a missing base, weights that do not fit it), ValueError for an unknown dtype or device.
    """
    from transformers import AutoModelForImageTextToText

    full, adapters = adapter_chain(path)
    if adapters:
        loaded = load_model(full, dtype=dtype, device=device, processor_kwargs=processor_kwargs)
        for folder in adapters:
            loaded.model = _merge_adapter(loaded.model, folder, full)
        return loaded
    torch_dtype = parse_dtype(dtype)
    target = parse_device(device)
    adapter = adapter_for_folder(path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra: dict[str, Any] = {}
    if target is not None and target.type != "cpu":
        # straight onto the device, no full copy in host memory; a bare "cuda" is cuda:$LOCAL_RANK there
        extra["device_map"] = str(target)
    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False, dtype=torch_dtype,
            # mis-shaped weights are reported (then refused below) rather than raised as a bare RuntimeError
            output_loading_info=True, ignore_mismatched_sizes=True, **extra,
        )
        processor = adapter.load_processor(path, **(processor_kwargs or {}))
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load the model in {path}: {first}") from exc
    _check_loading_info(path, info)
    if not hasattr(processor, "tokenizer"):
        raise ModelLoadError(f"{path}: the processor has no tokenizer (expected a multimodal processor)")
    return LoadedModel(model, processor, adapter)


def _merge_adapter(model: torch.nn.Module, folder: Path, base: Path) -> torch.nn.Module:
    """The model with the peft adapter in `folder` applied and merged in; every adapter weight must fit
    (ModelLoadError for missing, unexpected or mis-shaped ones: a silently skipped LoRA weight is a no-op)."""
    from peft import PeftConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    try:
        config = PeftConfig.from_pretrained(str(folder))
        config.inference_mode = True
        weights = load_peft_weights(str(folder), device="cpu")
        wrapped = get_peft_model(model, config)
        expected = set(get_peft_model_state_dict(wrapped))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot apply the adapter in {folder} to its base model {base}: {first}") from exc
    problems = []
    for kind, keys in (("missing", expected - set(weights)), ("unexpected", set(weights) - expected)):
        if keys:
            shown = ", ".join(sorted(keys)[:_KEYS_SHOWN]) + (", ..." if len(keys) > _KEYS_SHOWN else "")
            problems.append(f"{len(keys)} {kind} adapter weight{'s' if len(keys) != 1 else ''} ({shown})")
    if not problems:
        try:
            set_peft_model_state_dict(wrapped, weights)
        except (RuntimeError, ValueError, KeyError) as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            detail = next((line for line in lines if "size mismatch" in line),
                          lines[0] if lines else type(exc).__name__)
            problems.append(f"weights of the wrong shape ({detail})")
    if problems:
        raise ModelLoadError(f"{folder}: the adapter does not fit its base model {base}: {'; '.join(problems)}")
    return wrapped.merge_and_unload()
