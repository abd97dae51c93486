"""Scale benchmark: what each method family costs on real-size LLaVA-1.5-7B / Qwen2-VL-7B / Idefics3-8B.

Models are built in code from their real configurations with random weights (nothing from a hub):

* `full`   — the released sizes (below, `REAL`); on the CPU only their parameters are counted (meta device);
* `scaled` — the same depths, image sizes (so the same image-token counts) and width ratios, every width
  and the vocabulary ÷16 (attention heads ÷4): parameters ÷256, the V+P : W split kept. Runs on 2 cores;
* `smoke`  — a much smaller one (2 + 2 layers, 56-px photos) for the tests.

Every case goes through the real engine: `train/unlearn.unlearn` on synthetic image+text records (random
photos of the family's input size, random-word questions and answers, a processor built here with a small
BPE tokenizer), so what is measured is what a user runs — scope, θ0, saliency masks, the accelerate loop.
Two engine functions are swapped while a case runs: the loop logs every step (per-step times; the memory
probe is reset when the loop starts), and the final save is skipped (a 7B save is not a training step).
Evaluation cases time `eval/evaluator.score_records` (greedy generation + likelihood scoring).

    # CPU (2 cores): scaled configurations, one process per case, fp32 as a CPU run trains
    python benchmarks/scale.py --device cpu --config scaled --threads 2 \\
        --out benchmarks/results/scale-cpu.json --readme docs/scale.md
    # GPU: the real sizes in bf16 with gradient checkpointing at batch 1, 2, 8; one process per family;
    # starts no case after --budget-s seconds (default 400), so the command ends within 8 minutes
    python benchmarks/scale.py --device cuda --config full --out benchmarks/results/scale-gpu.json --readme docs/scale.md

The JSON is rewritten after every case; a case that runs out of memory is recorded as `oom` (and the same
method is not tried at a larger batch), one whose process dies as `crashed`. Memory: on the CPU the peak
resident set of the training loop (VmHWM, reset when the loop starts) and the same above the process's
size before the model was built ("run" = weights, θ0, gradients, optimiser state, activations); on a GPU
the peak allocated and reserved bytes over the loop. Step time: median over the steps after the first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILIES = ("llava", "qwen2-vl", "idefics3")
CONFIGS = ("full", "scaled", "smoke")
# name → (method, scope override, method_args): one of each family of methods
METHODS: dict[str, tuple[str, str | None, dict]] = {
    "ga": ("ga", None, {}),
    "graddiff": ("graddiff", None, {}),
    "npo": ("npo", None, {}),
    "graddiff-lora": ("graddiff", "lora", {}),
    # VKD's saliency mask from 1 batch per side instead of 4: a one-off before the loop (on 2 cores 4 batches
    # took 4.5 min of the scaled LLaVA's case); every step still applies it
    "vkd": ("vkd", None, {"mask_batches": 1}),
    "vkd-no-cache": ("vkd", None, {"mask_batches": 1, "teacher_cache_mb": 0}),  # the teacher runs every step
    "vkd-alpha0": ("vkd", None, {"mask_batches": 1, "alpha": 0.0}),  # no retain NLL: distillation only
    "vkd-16-photos": ("vkd", None, {"mask_batches": 1, "vkd_images": 16}),  # a quarter of the default photos
}
CPU_METHODS = ("ga", "graddiff", "npo", "graddiff-lora", "vkd")
VKD_VARIANTS = ("vkd-no-cache", "vkd-alpha0", "vkd-16-photos")  # first family only (each costs a VKD case)
GPU_METHODS = ("graddiff-lora", "vkd", "ga", "graddiff", "npo")  # smallest first: a later OOM costs least
LR = 1e-6  # the work of a step does not depend on it; random weights stay finite over a few steps
GPU_MEMORY_GB = 141  # what the issue asks to fit (an H200)
# A full MLLMU-Bench evaluation (forget_10 + retain_90 + test + the 153 celebrities) in records: about 14
# questions per person (the benchmark's paper) × (500 fictitious + 50 test + 153 real) people. An
# estimate for the extrapolation only: `mmunlearn eval` reports the exact count (summary.json "n").
MLLMU_EVAL_RECORDS = 14 * (500 + 50 + 153)


@dataclass(frozen=True)
class Dims:
    """One model's sizes: the language model (text_*), the vision tower (vision_*), the photo."""

    text_hidden: int
    text_layers: int
    text_mlp: int
    text_heads: int
    text_kv_heads: int
    vocab: int
    vision_hidden: int
    vision_layers: int
    vision_mlp: int
    vision_heads: int
    image_size: int  # the photo's side in pixels as the processor receives it
    patch: int = 14


# The released configurations (config.json of each checkpoint; the transformers config classes' fields).
REAL: dict[str, Dims] = {
    # llava-hf/llava-1.5-7b-hf: Llama-2-7B text (vocab 32064 with the image and pad tokens); CLIP ViT-L/14-336
    # (feature layer −2, CLS dropped: 576 image tokens); 2-layer GELU MLP projector 1024 → 4096 → 4096
    "llava": Dims(4096, 32, 11008, 32, 32, 32064, 1024, 24, 4096, 16, 336),
    # Qwen/Qwen2-VL-7B-Instruct: Qwen2-7B text (28 heads, 4 KV heads, vocab 152064); 32-block ViT, width 1280,
    # MLP ×4, patch 14, 2×2 merger → 3584. Dynamic resolution: a 672-px photo is 48² patches = 576 tokens
    # (inside the 256–1280-token range the processor cap allows)
    "qwen2-vl": Dims(3584, 28, 18944, 28, 4, 152064, 1280, 32, 5120, 16, 672),
    # HuggingFaceM4/Idefics3-8B-Llama3: Llama-3.1-8B text (8 KV heads, vocab 128259); SigLIP-so400m vision
    # (27 layers, 1152 wide, MLP 4304) on 364-px tiles, pixel shuffle ×2 → 169 tokens per tile (no splitting)
    "idefics3": Dims(4096, 32, 14336, 32, 8, 128259, 1152, 27, 4304, 16, 364),
}


def dims_for(family: str, config: str) -> Dims:
    """`full`: REAL; `scaled`: widths and vocabulary ÷16, heads ÷4, depths and photo kept; `smoke`: tiny."""
    d = REAL[family]
    if config == "full":
        return d
    if config == "scaled":
        w, h, depth, image = 16, 4, 1, d.image_size
    elif config == "smoke":
        w, h, depth, image = 64, 16, 0, 56
    else:
        raise ValueError(f"unknown config {config!r}; choose one of {', '.join(CONFIGS)}")
    out = Dims(
        text_hidden=d.text_hidden // w, text_layers=d.text_layers if depth else 2, text_mlp=d.text_mlp // w,
        text_heads=max(1, d.text_heads // h), text_kv_heads=max(1, d.text_kv_heads // h), vocab=d.vocab // w,
        vision_hidden=d.vision_hidden // w, vision_layers=d.vision_layers if depth else 2,
        vision_mlp=d.vision_mlp // w, vision_heads=max(1, d.vision_heads // h), image_size=image, patch=d.patch)
    assert out.text_hidden % out.text_heads == 0 and out.text_heads % out.text_kv_heads == 0, out
    assert out.vision_hidden % out.vision_heads == 0, out
    return out


def image_tokens(family: str, d: Dims) -> int:
    """Language-model tokens one photo becomes."""
    side = d.image_size // d.patch
    return side * side if family == "llava" else (side * side) // 4


# ---- synthetic text, tokenizer, processor, model ---------------------------------------------------------

def _words(rng: random.Random, n: int) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(n)]


@dataclass
class TextPool:
    words: list[str]
    names: list[str]

    @classmethod
    def make(cls, seed: int = 0) -> "TextPool":
        rng = random.Random(seed)
        words = _words(rng, 300)
        names = [f"{a.title()} {b.title()}" for a, b in zip(_words(rng, 200), _words(rng, 200))]
        return cls(words, names)

    def sentence(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choice(self.words) for _ in range(n))


def build_processor_and_model(family: str, d: Dims, device: str = "cpu", dtype=None, seed: int = 0):
    """(LoadedModel, model vocabulary) with random weights on `device` ("meta": shapes only)."""
    import torch

    from mmunlearn.data.collate import OPTION_INSTRUCTION
    from mmunlearn.models.base import families
    from mmunlearn.models.loader import LoadedModel
    from mmunlearn.models.tokenizer import train_tokenizer

    adapter = families()[family]
    pool = TextPool.make(seed)
    rng = random.Random(seed)
    corpus = [pool.sentence(rng, 12) for _ in range(400)] + pool.names + [OPTION_INSTRUCTION, "A B C D"]
    tokenizer = train_tokenizer(corpus, vocab_size=1024)
    processor, config, model_cls = _family_parts(family, adapter, tokenizer, d)
    torch.manual_seed(seed)
    dtype = dtype or torch.float32
    with torch.device(device):
        model = model_cls._from_config(config, dtype=dtype)
    tok = processor.tokenizer
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = None
    return LoadedModel(model, processor, adapter)


def _text_settings(tokenizer, d: Dims) -> dict:
    return dict(vocab_size=max(d.vocab, len(tokenizer)), hidden_size=d.text_hidden, intermediate_size=d.text_mlp,
                num_hidden_layers=d.text_layers, num_attention_heads=d.text_heads,
                num_key_value_heads=d.text_kv_heads, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, bos_token_id=None, tie_word_embeddings=False)


def _family_parts(family: str, adapter, tokenizer, d: Dims):
    """(processor, config, model class) of a family at sizes `d`, as the released models wire them."""
    if family == "llava":
        from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                                  LlavaForConditionalGeneration, LlavaProcessor)

        vision = CLIPVisionConfig(hidden_size=d.vision_hidden, intermediate_size=d.vision_mlp,
                                  num_hidden_layers=d.vision_layers, num_attention_heads=d.vision_heads,
                                  image_size=d.image_size, patch_size=d.patch, projection_dim=768,
                                  hidden_act="quick_gelu")
        text = LlamaConfig(**_text_settings(tokenizer, d), max_position_embeddings=4096, rms_norm_eps=1e-5)
        config = LlavaConfig(vision_config=vision, text_config=text,
                             image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                             vision_feature_select_strategy="default", projector_hidden_act="gelu")
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": d.image_size},
                                                crop_size={"height": d.image_size, "width": d.image_size})
        processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=d.patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=adapter.template())
        return processor, config, LlavaForConditionalGeneration
    if family == "qwen2-vl":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

        from mmunlearn.models.qwen2_vl import IMAGE_PAD, MAX_PIXELS, Qwen2VLImageOnlyProcessor

        half = d.text_hidden // d.text_heads // 2  # rotary frequencies split temporal : height : width = 1 : 1.5 : 1.5
        mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]
        vision = dict(depth=d.vision_layers, embed_dim=d.vision_hidden, hidden_size=d.text_hidden,
                      mlp_ratio=d.vision_mlp // d.vision_hidden, num_heads=d.vision_heads, patch_size=d.patch,
                      spatial_merge_size=2, temporal_patch_size=2)
        text = dict(**_text_settings(tokenizer, d), max_position_embeddings=32768, rms_norm_eps=1e-6,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": mrope})
        config = Qwen2VLConfig(vision_config=vision, text_config=text,
                               image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_PAD),
                               video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
                               vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                               vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"))
        image_processor = Qwen2VLImageProcessorPil(patch_size=d.patch, merge_size=2, temporal_patch_size=2,
                                                   min_pixels=(2 * d.patch) ** 2, max_pixels=MAX_PIXELS)
        processor = Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                              chat_template=adapter.template())
        return processor, config, Qwen2VLForConditionalGeneration
    if family == "idefics3":
        import copy

        from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                                  Idefics3Processor)

        tokenizer = copy.deepcopy(tokenizer)  # the processor adds <end_of_utterance> to it
        image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": d.image_size},
                                                    max_image_size={"longest_edge": d.image_size})
        processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                      image_seq_len=image_tokens("idefics3", d), chat_template=adapter.template())
        vision = dict(hidden_size=d.vision_hidden, intermediate_size=d.vision_mlp, num_hidden_layers=d.vision_layers,
                      num_attention_heads=d.vision_heads, image_size=d.image_size, patch_size=d.patch)
        text = dict(model_type="llama", **_text_settings(tokenizer, d), max_position_embeddings=8192,
                    rms_norm_eps=1e-5, rope_theta=500000.0)
        config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=2,
                                image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                                pad_token_id=tokenizer.pad_token_id)
        return processor, config, Idefics3ForConditionalGeneration
    raise ValueError(f"unknown family {family!r}")


def parameter_parts(loaded) -> dict[str, int]:
    """Parameters of V, P, W and in all (works on the meta device)."""
    parts = {"V": 0, "P": 0, "W": 0}
    for name, p in loaded.model.named_parameters():
        parts[loaded.adapter.part_of(name)] += p.numel()
    return {**parts, "total": sum(parts.values())}


# ---- synthetic records --------------------------------------------------------------------------------

@dataclass
class Workload:
    """The records of a case: people with one random photo each, image+text questions only (every method
    family trains on the same records, so batches are equal)."""

    forget_people: int = 8
    questions_per_person: int = 2
    retain_people: int = 64  # distinct photos VKD distils: its default draws 64 a step
    eval_records: int = 16  # half generation, half 4-option classification
    question_words: int = 14
    answer_words: int = 8


def synthetic_bundle(d: Dims, work: Workload, seed: int = 0):
    """A DataBundle of random photos (d.image_size square) and random-word questions and answers."""
    import numpy as np
    from PIL import Image

    from mmunlearn.data.record import Record
    from mmunlearn.data.store import DataBundle

    pool = TextPool.make(seed)
    rng, nprng = random.Random(seed + 1), np.random.default_rng(seed)

    def photo():
        return Image.fromarray(nprng.integers(0, 256, (d.image_size, d.image_size, 3), dtype=np.uint8))

    def people(prefix: str, n: int, questions: int, phase: str, start: int) -> list[Record]:
        out = []
        for i in range(n):
            name, image = pool.names[start + i], photo()
            for q in range(questions):
                out.append(Record(id=f"{prefix}{i}-{q}", profile_id=f"{prefix}{i}", name=name, phase=phase,
                                  question=pool.sentence(rng, work.question_words) + "?",
                                  answer=f"{name} {pool.sentence(rng, work.answer_words)}.",
                                  task="generation", modality="image+text", split=prefix, image=image).validate())
        return out

    forget = people("forget", work.forget_people, work.questions_per_person, "unlearn", 0)
    retain = people("retain", work.retain_people, 1, "unlearn", work.forget_people)
    evals = []
    start = work.forget_people + work.retain_people
    for i in range(work.eval_records):
        name = pool.names[start + i % 50]
        if i % 2:
            options = [pool.sentence(rng, 2) for _ in range(4)]
            evals.append(Record(id=f"eval{i}", profile_id=f"eval{i}", name=name, task="classification",
                                modality="image+text", question=pool.sentence(rng, work.question_words) + "?",
                                answer="", options=options, answer_index=i % 4, image=photo()).validate())
        else:
            evals.append(Record(id=f"eval{i}", profile_id=f"eval{i}", name=name, task="generation",
                                modality="image+text", question=pool.sentence(rng, work.question_words) + "?",
                                answer=f"{name} {pool.sentence(rng, work.answer_words)}.", image=photo()).validate())
    bundle = DataBundle("synthetic", Path(tempfile.gettempdir()), "forget_synthetic",
                        {"forget": forget, "retain": retain, "pretrain": [], "eval": evals},
                        forget_ids={r.profile_id for r in forget}, retain_ids={r.profile_id for r in retain})
    return bundle, evals


# ---- memory probes ------------------------------------------------------------------------------------

def _proc_status(key: str) -> float:
    """A /proc/self/status field in MiB (VmRSS, VmHWM); 0 where there is none."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0.0
    m = re.search(rf"{key}:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else 0.0


def _trim_heap() -> None:
    """Hand freed heap back to the system, so the next peak is this loop's, not an earlier phase's."""
    gc.collect()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryProbe:
    """Peak memory of the training loop: CPU resident set (VmHWM, reset at the loop's start through
    /proc/self/clear_refs) or CUDA allocated / reserved peaks (reset likewise)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.result: dict[str, float] = {}

    def start(self) -> None:
        import torch

        _trim_heap()
        self._clock = (time.perf_counter(), time.process_time())
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.result["loop_start_allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        else:
            with contextlib.suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self.result["loop_start_rss_mb"] = _proc_status("VmRSS")

    def stop(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.result["peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            self.result["peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        else:
            self.result["peak_rss_mb"] = _proc_status("VmHWM")
            # CPU time over wall time of the loop, per thread: ~1.0 when nothing else shared the cores
            wall, cpu = time.perf_counter() - self._clock[0], time.process_time() - self._clock[1]
            self.result["cpu_share"] = cpu / wall / max(1, torch.get_num_threads()) if wall > 0 else 0.0


@contextlib.contextmanager
def engine_probes(probe: MemoryProbe):
    """While a case runs: the loop logs every step and resets the memory probe when it starts; the
    run's final save is skipped (a LoRA model is unloaded, not merged: the weights are random anyway)."""
    import mmunlearn.train.unlearn as engine

    real_loop, real_save = engine.run_loop, engine.save_run_model

    def loop(module, step_loss, cfg, **kwargs):
        probe.start()
        try:
            return real_loop(module, step_loss, dataclasses.replace(cfg, log_every=1), **kwargs)
        finally:
            probe.stop()

    def no_save(accelerator, model, loaded, out, **_options):
        return model.unload() if hasattr(model, "peft_config") else model

    engine.run_loop, engine.save_run_model = loop, no_save
    try:
        yield
    finally:
        engine.run_loop, engine.save_run_model = real_loop, real_save


# ---- cases --------------------------------------------------------------------------------------------

def _is_oom(exc: BaseException) -> bool:
    import torch

    text = str(exc).lower()
    return (isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in text
            or "can't allocate memory" in text)


def default_cpu_memory_gb() -> float:
    """70 % of the machine's memory: what a CPU case may map before its allocations fail (an `oom` result)
    instead of the kernel's OOM killer picking a process on a shared machine."""
    try:
        total = int(re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    except (OSError, AttributeError):
        return 0.0
    return round(0.7 * total, 1)


def limit_cpu_memory(gb: float) -> None:
    """Cap this process's address space at `gb` GiB (0: no cap)."""
    if gb > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (int(gb * 2**30), int(gb * 2**30)))


def step_case(loaded, bundle, name: str, batch: int, steps: int, cuda: bool, workdir: Path) -> dict:
    """One method family at one batch size through `unlearn`; timings from the loop's per-step log."""
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    method, scope, args = METHODS[name]
    cfg = UnlearnConfig(method=method, steps=steps, lr=LR, batch_size=batch, scope=scope, seed=0,
                        mixed_precision="bf16" if cuda else "no", gradient_checkpointing=cuda,
                        method_args=dict(args))
    probe = MemoryProbe(cuda)
    t0 = time.perf_counter()
    with engine_probes(probe):
        result = unlearn(bundle, cfg, workdir / f"{name}-b{batch}", loaded=loaded)
    log = result.log
    marks = [row["time_s"] for row in log["losses"]]
    per_step = [b - a for a, b in zip([0.0] + marks, marks)]
    timed = per_step[1:] or per_step
    median = statistics.median(timed)
    out = {"status": "ok", "unlearn_method": method, "scope": log["config"]["scope"], "steps": len(per_step),
           "step_s": [round(t, 4) for t in per_step], "median_step_s": round(median, 4),
           "samples_per_s": round(log["global_batch"] / median, 3), "global_batch": log["global_batch"],
           "trainable_params": log["trainable_params"], "total_params": log["total_params"],
           "reference": log["reference"], "reference_params": log["reference_params"],
           "prepare_s": log["prepare_time_s"], "case_wall_s": round(time.perf_counter() - t0, 2),
           **{k: round(v, 2 if k == "cpu_share" else 1) for k, v in probe.result.items()}}
    if "vkd_teacher_cache" in log:
        out["teacher_cache"] = log["vkd_teacher_cache"]
    return out


def eval_case(loaded, records: list, batch: int) -> dict:
    """Generated and scored records per second (`score_records`: greedy replies, then likelihoods)."""
    from mmunlearn.eval.evaluator import EvalConfig, score_records

    cfg = EvalConfig(batch_size=batch, progress=False)
    score_records(loaded, records[: min(2, len(records))], cfg, "warm-up")
    t0 = time.perf_counter()
    score_records(loaded, records, cfg, "scale")
    wall = time.perf_counter() - t0
    return {"status": "ok", "records": len(records), "eval_batch": batch, "eval_s": round(wall, 3),
            "records_per_s": round(len(records) / wall, 3),
            "full_mllmu_eval_h": round(MLLMU_EVAL_RECORDS / (len(records) / wall) / 3600, 2)}


def run_cases(spec: dict) -> None:
    """A child process: build one family's model once, run `spec["cases"]` in order, and merge each
    result into the JSON file as soon as it is known."""
    import torch
    import transformers  # noqa: F401  (imported before the baseline is read: not the run's memory)

    import mmunlearn.eval.evaluator  # noqa: F401
    import mmunlearn.train.unlearn  # noqa: F401

    torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    if not cuda:
        limit_cpu_memory(spec.get("cpu_memory_gb", default_cpu_memory_gb()))
    family, d = spec["family"], dims_for(spec["family"], spec["config"])
    work = Workload(**spec.get("workload", {}))
    bundle, evals = synthetic_bundle(d, work)
    _trim_heap()
    base_rss = _proc_status("VmRSS")  # libraries and the records; the model and all it costs come after
    dtype = torch.bfloat16 if cuda else torch.float32
    loaded = build_processor_and_model(family, d, device="cuda" if cuda else "cpu", dtype=dtype)
    workdir = Path(tempfile.mkdtemp(prefix="scale-"))
    failed_at: dict[str, int] = {}
    for case in spec["cases"]:
        key = case_key(case)
        if time.time() > spec["deadline"]:
            record(spec["json"], key, {**case, "status": "not run", "why": "time budget"})
            continue
        name = case["method"]
        if name in failed_at and case.get("batch", 0) > failed_at[name]:
            record(spec["json"], key, {**case, "status": "not run", "why": f"oom at batch {failed_at[name]}"})
            continue
        try:
            if name == "eval":
                res = eval_case(loaded, evals, case["batch"])
            else:
                res = step_case(loaded, bundle, name, case["batch"], spec["steps"], cuda, workdir)
                if not cuda:
                    res["base_rss_mb"] = round(base_rss, 1)
                    res["peak_rss_run_mb"] = round(res["peak_rss_mb"] - base_rss, 1)
        except Exception as exc:  # an out-of-memory case is a result; anything else is recorded too
            oom = _is_oom(exc)
            res = {"status": "oom" if oom else "error", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if oom:
                failed_at[name] = case.get("batch", 0)
            del exc
        finally:
            if hasattr(loaded.model, "peft_config"):  # a LoRA case that failed half-way
                loaded.model = loaded.model.unload()
            for p in loaded.model.parameters():  # gradients left by a step that failed half-way
                p.grad = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        record(spec["json"], key, {**case, **res})
        print(f"{key}: {res.get('status')} {res.get('median_step_s', res.get('records_per_s', ''))}", flush=True)


# ---- orchestration ------------------------------------------------------------------------------------

def case_key(case: dict) -> str:
    return f"{case['family']}/{case['method']}/b{case['batch']}"


def record(path: str | Path, key: str, value: dict) -> None:
    """Merge one case into the results file (read, update, atomic rewrite)."""
    from mmunlearn.data.store import atomic_write_json

    data = json.loads(Path(path).read_text())
    data["cases"][key] = value
    atomic_write_json(path, data)


def model_table(config: str) -> dict:
    """Each family's parameters by part at the full and at the benchmarked size (meta device)."""
    out = {}
    for family in FAMILIES:
        row = {"image_tokens": image_tokens(family, REAL[family])}
        for size in dict.fromkeys(("full", config)):
            d = dims_for(family, size)
            loaded = build_processor_and_model(family, d, device="meta")
            row[size] = {**parameter_parts(loaded), "dims": dataclasses.asdict(d)}
        out[family] = row
    return out


def plan(args) -> list[tuple[str, list[dict]]]:
    """Groups of cases, one process each: on the CPU one case per process (a peak resident set cannot be
    reset between cases reliably enough); on a GPU one family per process (its model is built once)."""
    groups = []
    for family in args.families:
        cases = [{"family": family, "method": "eval", "batch": args.eval_batch}] if args.eval else []
        names = args.methods + (args.vkd_variants if family == args.families[0] else [])
        for name in names:
            for batch in args.batches:
                cases.append({"family": family, "method": name, "batch": batch})
        if family == args.families[0]:  # the VKD / GradDiff pair at more batch sizes
            for batch in args.compare_batches:
                cases += [{"family": family, "method": name, "batch": batch} for name in ("graddiff", "vkd")
                          if batch not in args.batches]
        if args.device == "cuda":
            groups.append((family, cases))
        else:
            groups += [(family, [c]) for c in cases]
    return groups


def _gpu_name() -> str | None:
    """The GPU's name and memory from nvidia-smi: the parent process never touches CUDA, so it holds no
    context (and no memory) on the device the cases measure."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def orchestrate(args) -> int:
    import torch
    import transformers

    from mmunlearn.data.store import atomic_write_json

    out = Path(args.out)
    start = time.time()
    kept: dict = {}
    if args.resume and out.is_file():  # cases already measured are kept; the rest (not run, crashed) run again
        kept = {k: c for k, c in json.loads(out.read_text())["cases"].items()
                if c.get("status") in ("ok", "oom", "error")}
    data = {
        "device": args.device, "config": args.config, "threads": args.threads,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "gpu": _gpu_name() if args.device == "cuda" else None,
        "settings": {"steps": args.steps, "timed_steps": args.steps - 1, "lr": LR, "batches": args.batches,
                     "compare_batches": args.compare_batches,
                     "dtype": "bf16" if args.device == "cuda" else "fp32",
                     "mixed_precision": "bf16" if args.device == "cuda" else "no",
                     "gradient_checkpointing": args.device == "cuda",
                     "malloc_mmap_threshold": args.malloc_mmap_threshold,
                     "cpu_memory_gb": args.cpu_memory_gb if args.device == "cpu" else None,
                     "workload": dataclasses.asdict(args.workload), "mllmu_eval_records": MLLMU_EVAL_RECORDS},
        "models": model_table(args.config),
        "cases": kept,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_json(out, data)
    deadline = start + args.budget_s
    for family, cases in plan(args):
        cases = [c for c in cases if case_key(c) not in kept]
        if not cases:
            continue
        spec = {"json": str(out), "family": family, "config": args.config, "device": args.device,
                "threads": args.threads, "steps": args.steps, "cases": cases, "deadline": deadline,
                "workload": dataclasses.asdict(args.workload), "cpu_memory_gb": args.cpu_memory_gb}
        remaining = deadline - time.time()
        if remaining <= 0:
            for case in cases:
                record(out, case_key(case), {**case, "status": "not run", "why": "time budget"})
            continue
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(spec, fh)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        if args.malloc_mmap_threshold:  # glibc: every block this large or larger is its own mapping, freed at once
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", fh.name], env=env, capture_output=True,
                                  text=True, timeout=remaining + 90)
            rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-600:]
        except subprocess.TimeoutExpired as exc:
            rc, tail = "timeout", str(exc.stderr or "")[-600:]
        finally:
            os.unlink(fh.name)
        done = json.loads(out.read_text())["cases"]
        for case in cases:
            if case_key(case) not in done:  # the process died before writing it (killed for memory...)
                record(out, case_key(case), {**case, "status": "crashed", "returncode": rc, "tail": tail})
        for case in cases:
            print(f"{case_key(case)}: {json.loads(out.read_text())['cases'][case_key(case)].get('status')}", flush=True)
    data = json.loads(out.read_text())
    data["comparison"] = comparison(data)
    data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    data["wall_s"] = round(time.time() - start, 1)
    atomic_write_json(out, data)
    return publish(data, args.readme)


def publish(data: dict, readme: str | None) -> int:
    """Print the tables; with `readme`, put them between its `scale` (CPU) or `scale-gpu` markers."""
    text = tables(data)
    print(text)
    if readme:
        from mmunlearn.report.tables import update_readme

        try:
            update_readme(Path(readme), "scale" if data["device"] == "cpu" else "scale-gpu", text)
        except ValueError as err:
            print(f"error: {readme}: {err}", file=sys.stderr)
            return 2
    return 0


# ---- tables -------------------------------------------------------------------------------------------

def comparison(data: dict) -> list[dict]:
    """VKD against full-model GradDiff at the same batch, per family: step-time and memory ratios."""
    cases, rows = data["cases"], []
    mem = "peak_rss_mb" if data["device"] == "cpu" else "peak_allocated_mb"
    for family in FAMILIES:
        for batch in sorted({c["batch"] for c in cases.values() if c["method"] != "eval"}):
            gd = cases.get(f"{family}/graddiff/b{batch}", {})
            for name in ("vkd", *VKD_VARIANTS):
                vkd = cases.get(f"{family}/{name}/b{batch}", {})
                if gd.get("status") != "ok" or vkd.get("status") != "ok":
                    continue
                row = {"family": family, "batch": batch, "vkd": name,
                       "graddiff_step_s": gd["median_step_s"], "vkd_step_s": vkd["median_step_s"],
                       "speedup": round(gd["median_step_s"] / vkd["median_step_s"], 2),
                       "graddiff_peak_mb": gd[mem], "vkd_peak_mb": vkd[mem],
                       "memory_ratio": round(gd[mem] / vkd[mem], 2)}
                if data["device"] == "cpu":
                    row["memory_ratio_run"] = round(gd["peak_rss_run_mb"] / vkd["peak_rss_run_mb"], 2)
                    if gd.get("cpu_share") and vkd.get("cpu_share"):  # step time × the CPU share it had
                        row["speedup_cpu_time"] = round(gd["median_step_s"] * gd["cpu_share"]
                                                        / (vkd["median_step_s"] * vkd["cpu_share"]), 2)
                rows.append(row)
    return rows


def ordered(cases: dict) -> list[dict]:
    """Cases by family, then method (as METHODS lists them), then batch."""
    names = list(METHODS)
    return sorted(cases.values(), key=lambda c: (FAMILIES.index(c["family"]), c["method"] != "eval",
                                                 names.index(c["method"]) if c["method"] in names else 99,
                                                 c["batch"]))


def _m(x: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if x is None else fmt.format(x)


def tables(data: dict) -> str:
    cpu = data["device"] == "cpu"
    cfg = data["config"]
    s = data["settings"]
    lines = [f"_Generated by `benchmarks/scale.py --device {data['device']} --config {cfg}` "
             f"({'%d CPU thread(s)' % data['threads'] if cpu else data.get('gpu') or 'GPU'}, torch {data['torch']}, "
             f"transformers {data['transformers']}; {s['dtype']} weights, autocast {s['mixed_precision']}, "
             f"gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}; {s['steps']} steps a case, "
             f"median of the last {s['timed_steps']}"
             + (f"; glibc mmap threshold fixed at {s['malloc_mmap_threshold']} B" if s.get("malloc_mmap_threshold")
                else "") + ")._", ""]
    lines += ["| model | image tokens | params (full) | V | P | W |"
              + (f" params ({cfg}) |" if cfg != "full" else ""),
              "|---|---:|---:|---:|---:|---:|" + ("---:|" if cfg != "full" else "")]
    for family, row in data["models"].items():
        full = row["full"]
        lines.append(f"| {family} | {row['image_tokens']} | {full['total'] / 1e9:.2f} B | {full['V'] / 1e6:.0f} M | "
                     f"{full['P'] / 1e6:.0f} M | {full['W'] / 1e9:.2f} B |"
                     + (f" {row[cfg]['total'] / 1e6:.1f} M |" if cfg != "full" else ""))
    lines.append("")
    mem_head = "peak RSS (MiB) | run's own (MiB) | CPU share" if cpu else "peak allocated (GiB) | peak reserved (GiB)"
    lines += [f"| model | method | scope | batch | θ0 | trainable | median step (s) | samples/s | {mem_head} | note |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if cpu else "") + "---|"]
    for c in ordered(data["cases"]):
        if c["method"] == "eval":
            continue
        if c.get("status") != "ok":
            lines.append(f"| {c['family']} | {c['method']} | — | {c['batch']} | — | — | — | — | — | — | "
                         + ("— | " if cpu else "") + f"{c.get('status')}{': ' + c['why'] if c.get('why') else ''}"
                         + (f" ({c['error'][:80]})" if c.get("error") else "") + " |")
            continue
        if cpu:
            mem = f"{_m(c.get('peak_rss_mb'))} | {_m(c.get('peak_rss_run_mb'))} | {_m(c.get('cpu_share'), '{:.2f}')}"
        else:
            mem = f"{c['peak_allocated_mb'] / 1024:.1f} | {c['peak_reserved_mb'] / 1024:.1f}"
        note = ""
        if "teacher_cache" in c:
            tc = c["teacher_cache"]
            note = (f"teacher ran {tc['teacher_calls']}× in {c['steps']} steps"
                    + (f", {tc['images']} photos cached ({tc['mb']:.1f} MiB)" if tc.get("images") else ""))
        lines.append(f"| {c['family']} | {c['method']} | {c['scope']} | {c['batch']} | {c['reference'] or '—'} | "
                     f"{c['trainable_params'] / 1e6:.2f} M | {c['median_step_s']:.2f} | {c['samples_per_s']:.2f} | "
                     f"{mem} | {note} |")
    evals = [c for c in ordered(data["cases"]) if c["method"] == "eval"]
    if evals:
        hours = "" if cpu else f" full MLLMU-Bench (~{MLLMU_EVAL_RECORDS:,} records), h |"
        lines += ["", "| model | evaluation: records | batch | generated + scored records/s |" + hours,
                  "|---|---:|---:|---:|" + ("" if cpu else "---:|")]
        for c in evals:
            if c.get("status") == "ok":
                lines.append(f"| {c['family']} | {c['records']} | {c['eval_batch']} | {c['records_per_s']:.2f} |"
                             + ("" if cpu else f" {c['full_mllmu_eval_h']:.1f} |"))
            else:
                lines.append(f"| {c['family']} | — | {c['batch']} | {c.get('status')} |" + ("" if cpu else " — |"))
    comp = comparison(data)
    if comp:
        lines += ["", "VKD against full-model GradDiff at the same batch (targets: ≥ 1.5× faster per step, ≥ 3× "
                      "less peak memory):", "",
                  "| model | batch | VKD | GradDiff step (s) | VKD step (s) | speed-up |"
                  + (" speed-up in CPU time |" if cpu else "") + " GradDiff peak | VKD peak | memory ratio |"
                  + (" ratio of the run's own memory |" if cpu else ""),
                  "|---|---:|---|---:|---:|---:|" + ("---:|---:|" if cpu else "") + "---:|---:|---:|"]
        unit = "MiB" if cpu else "MiB allocated"
        for r in comp:
            lines.append(f"| {r['family']} | {r['batch']} | {r['vkd']} | {r['graddiff_step_s']:.2f} | "
                         f"{r['vkd_step_s']:.2f} | {r['speedup']:.2f}× | "
                         + (f"{_m(r.get('speedup_cpu_time'), '{:.2f}×')} | " if cpu else "")
                         + f"{_m(r['graddiff_peak_mb'])} {unit} | "
                         f"{_m(r['vkd_peak_mb'])} {unit} | {r['memory_ratio']:.2f}× |"
                         + (f" {r['memory_ratio_run']:.2f}× |" if cpu else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--config", choices=CONFIGS, default=None, help="default: scaled on cpu, full on cuda")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--methods", default=None, help=f"default: {','.join(CPU_METHODS)} (cpu) / "
                                                    f"{','.join(GPU_METHODS)} (cuda)")
    ap.add_argument("--vkd-variants", default=None, help=f"VKD variants run on the first family; default "
                                                         f"{','.join(VKD_VARIANTS)} (cpu) / none (cuda)")
    ap.add_argument("--batches", default=None, help="forget records per step; default 2 (cpu) / 1,2,8 (cuda)")
    ap.add_argument("--compare-batches", default=None,
                    help="GradDiff and VKD also at these batches, first family only; default 4 (cpu) / none (cuda)")
    ap.add_argument("--steps", type=int, default=None, help="steps a case (the first is not timed); default 4 / 3")
    ap.add_argument("--eval-batch", type=int, default=None)
    ap.add_argument("--no-eval", dest="eval", action="store_false")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--budget-s", type=float, default=None, help="start no case after this; default 400 (cuda)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--readme", default=None)
    ap.add_argument("--cpu-memory-gb", type=float, default=None,
                    help="CPU: address-space cap of a case process, past which it is an `oom` result; default 70 %% "
                         "of the machine's memory, 0 = none")
    ap.add_argument("--malloc-mmap-threshold", type=int, default=0, metavar="BYTES",
                    help="CPU: fix glibc's mmap threshold in the case processes (e.g. 131072), so the resident set "
                         "follows the live tensors instead of a fragmented heap (steps get slower)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the cases --out already holds (ok / oom / error) and run only the others")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="only print (and with --readme write) the tables of an existing results file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_cases(json.loads(Path(args.child).read_text()))
        return 0
    if args.render:
        data = json.loads(Path(args.render).read_text())
        return publish(data, args.readme)
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            print("error: --device cuda but CUDA is not available here", file=sys.stderr)
            return 2
    args.config = args.config or ("full" if cuda else "scaled")
    if args.config == "full" and not cuda:
        print("error: the full-size models are only run on a GPU (on the CPU their parameters are counted in "
              "every results file)", file=sys.stderr)
        return 2
    args.families = [f.strip() for f in args.families.split(",") if f.strip()]
    args.methods = [m.strip() for m in (args.methods or ",".join(GPU_METHODS if cuda else CPU_METHODS)).split(",")]
    variants = args.vkd_variants if args.vkd_variants is not None else ("" if cuda else ",".join(VKD_VARIANTS))
    args.vkd_variants = [m.strip() for m in variants.split(",") if m.strip()]
    bad = [f for f in args.families if f not in FAMILIES] + [m for m in args.methods + args.vkd_variants
                                                             if m not in METHODS]
    if bad:
        print(f"error: unknown family or method: {', '.join(bad)}", file=sys.stderr)
        return 2
    args.batches = [int(b) for b in (args.batches or ("1,2,8" if cuda else "2")).split(",")]
    compare = args.compare_batches if args.compare_batches is not None else ("" if cuda else "4")
    args.compare_batches = [int(b) for b in compare.split(",") if b.strip()]
    args.steps = args.steps or (3 if cuda else 4)
    args.eval_batch = args.eval_batch or (64 if cuda else 8)
    args.budget_s = args.budget_s or (400.0 if cuda else 6 * 3600.0)
    args.workload = Workload(eval_records=128 if cuda else 16)
    args.out = args.out or f"benchmarks/results/scale-{args.device}.json"
    args.cpu_memory_gb = default_cpu_memory_gb() if args.cpu_memory_gb is None else args.cpu_memory_gb
    return orchestrate(args)


if __name__ == "__main__":
    raise SystemExit(main())
