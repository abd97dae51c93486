"""benchmarks/scale.py (smoke: every method family steps through the engine, an evaluation batch runs; no
timing checks) and VKD's cache of the frozen teacher's features (same losses and weights as recomputing
them; the teacher runs only for photos it has not seen)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from mmunlearn.data.store import load_data
from mmunlearn.methods.base import Context
from mmunlearn.methods.vkd import VKD, TeacherCache, split_per_image
from mmunlearn.models.loader import load_model
from mmunlearn.train.unlearn import UnlearnConfig, unlearn

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_bench", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


# ---- the benchmark's configurations -------------------------------------------------------------------

def test_llava_full_size_parameters_match_the_release(scale):
    """LLaVA-1.5-7B counted on the meta device, against the architecture's arithmetic."""
    loaded = scale.build_processor_and_model("llava", scale.dims_for("llava", "full"), device="meta")
    parts = scale.parameter_parts(loaded)
    h, mlp, vocab, layers = 4096, 11008, 32064, 32
    w = 2 * vocab * h + layers * (4 * h * h + 3 * h * mlp + 2 * h) + h  # embed + head, q/k/v/o + MLP + norms, norm
    vh, vmlp = 1024, 4096
    v = (3 * 14 * 14 * vh + vh + 577 * vh + 2 * vh  # patch conv, class token, positions, pre-norm
         + 24 * (4 * (vh * vh + vh) + (vh * vmlp + vmlp) + (vmlp * vh + vh) + 4 * vh) + 2 * vh)
    p = (vh * h + h) + (h * h + h)
    assert parts == {"V": v, "P": p, "W": w, "total": v + p + w}
    assert parts["total"] == 7_063_427_072  # the released llava-1.5-7b-hf
    assert next(loaded.model.parameters()).device.type == "meta"


def test_scaled_sizes_keep_depth_and_image_tokens(scale):
    for family, tokens in (("llava", 576), ("qwen2-vl", 576), ("idefics3", 169)):
        full, scaled = scale.dims_for(family, "full"), scale.dims_for(family, "scaled")
        assert (scaled.text_layers, scaled.vision_layers, scaled.image_size) == \
               (full.text_layers, full.vision_layers, full.image_size)
        assert scaled.text_hidden * 16 == full.text_hidden and scaled.vision_hidden * 16 == full.vision_hidden
        assert scale.image_tokens(family, scaled) == tokens
    assert scale.dims_for("llava", "scaled").vocab == 2004  # 32064 / 16


@pytest.mark.parametrize("family", ["llava", "qwen2-vl", "idefics3"])
def test_smoke_config_steps_every_method_family_and_evaluates(scale, family, tmp_path):
    d = scale.dims_for(family, "smoke")
    bundle, evals = scale.synthetic_bundle(d, scale.Workload(forget_people=2, retain_people=4, eval_records=4))
    loaded = scale.build_processor_and_model(family, d)
    names = [n for n, _ in loaded.model.named_parameters()]
    total = sum(p.numel() for p in loaded.model.parameters())
    vision = {"llava": ("model.vision_tower.", "model.multi_modal_projector."),
              "qwen2-vl": ("model.visual.",), "idefics3": ("model.vision_model.", "model.connector.")}[family]
    vp = sum(p.numel() for n, p in loaded.model.named_parameters() if n.startswith(vision))
    assert 0 < vp < total and names

    ev = scale.eval_case(loaded, evals, batch=4)
    assert ev["status"] == "ok" and ev["records"] == 4 and ev["records_per_s"] > 0

    expected = {"ga": ("full", None, total), "graddiff": ("full", None, total), "npo": ("full", "copy", total),
                "graddiff-lora": ("lora", None, None), "vkd": ("vision", "vision-copy", vp)}
    for name, (scope, reference, trainable) in expected.items():
        res = scale.step_case(loaded, bundle, name, batch=2, steps=1, cuda=False, workdir=tmp_path)
        assert res["status"] == "ok" and res["steps"] == 1 and res["scope"] == scope, (name, res)
        assert res["reference"] == reference, name
        if trainable is not None:
            assert res["trainable_params"] == trainable, name
        else:  # LoRA: adapters only
            assert 0 < res["trainable_params"] < vp, name
        assert res["peak_rss_mb"] > 0 and res["median_step_s"] > 0
        assert not hasattr(loaded.model, "peft_config")  # the LoRA case handed the plain model back
    assert res["teacher_cache"]["teacher_calls"] == 1  # VKD, one step


# ---- VKD's teacher-feature cache ----------------------------------------------------------------------

def test_split_per_image_cuts_batch_first_and_flattened_outputs():
    rows = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(3, 2, 2)  # 3 images, batch first
    cut = split_per_image({"projected": rows, "a": rows}, {"pixel_values": torch.zeros(3, 1)}, 3)
    assert set(cut) == {"a"} and [t.tolist() for t in cut["a"]] == [rows[i:i + 1].tolist() for i in range(3)]
    # Qwen2-VL style: patches of 2 images flattened (1×2×2 = 4 and 1×4×2 = 8 patches), merged 4:1 after
    grid = torch.tensor([[1, 2, 2], [1, 4, 2]])
    patches, merged = torch.arange(12.0).reshape(12, 1), torch.arange(3.0).reshape(3, 1)
    cut = split_per_image({"layer": patches, "merger": merged}, {"image_grid_thw": grid}, 2)
    assert [t.flatten().tolist() for t in cut["layer"]] == [[0, 1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11]]
    assert [t.flatten().tolist() for t in cut["merger"]] == [[0], [1, 2]]
    assert split_per_image({"odd": torch.zeros(5, 1)}, {"image_grid_thw": grid}, 2) is None


def test_teacher_cache_holds_copies_up_to_its_cap():
    cache = TeacherCache(cap_bytes=2 * 4 * 4)  # room for two 4-float pieces
    base = torch.ones(3, 4)
    assert cache.put(0, {"a": base[0:1]}) and cache.put(1, {"a": base[1:2]})
    assert not cache.put(2, {"a": base[2:3]}) and 2 not in cache and len(cache) == 2 and cache.bytes == 32
    base.zero_()  # the cache kept copies, not views of the batch
    assert torch.equal(cache.get(0)["a"], torch.ones(1, 4))


@pytest.fixture(scope="module")
def bundle(small_world):
    return load_data(small_world, "forget_15")


def _vkd_run(bundle, model_dir, out, monkeypatch, **method_args):
    """Three VKD steps; returns (teacher calls per step, loss terms per step, log, final weights)."""
    calls, terms, step_now = [], [], [None]
    original_features, original_loss = Context.reference_features, VKD.loss

    def counted(self, pixel_inputs, points):
        calls.append(step_now[0])
        return original_features(self, pixel_inputs, points)

    def recorded(self, ctx, step):
        step_now[0] = step
        out = original_loss(self, ctx, step)
        terms.append({k: v.detach().clone() for k, v in out.items()})
        return out

    monkeypatch.setattr(Context, "reference_features", counted)
    monkeypatch.setattr(VKD, "loss", recorded)
    cfg = UnlearnConfig(method="vkd", steps=3, batch_size=4, lr=1e-3, method_args={"mask": "none", **method_args})
    result = unlearn(bundle, cfg, out, loaded=load_model(model_dir))
    monkeypatch.undo()
    return calls, terms, result.log, {k: v.clone() for k, v in result.loaded.model.state_dict().items()}


def _assert_same(a_terms, b_terms, a_weights, b_weights):
    assert len(a_terms) == len(b_terms) == 3
    for a, b in zip(a_terms, b_terms):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert a_weights.keys() == b_weights.keys()
    for key in a_weights:
        assert torch.equal(a_weights[key], b_weights[key]), key


def test_cached_teacher_gives_the_same_losses_and_runs_only_on_the_first_step(bundle, untrained_llava, tmp_path,
                                                                              monkeypatch):
    # vkd_images (64) ≥ the kept photos: every step distils every kept photo, in a new order
    calls_off, terms_off, log_off, w_off = _vkd_run(bundle, untrained_llava, tmp_path / "off", monkeypatch,
                                                    teacher_cache_mb=0)
    calls_on, terms_on, log_on, w_on = _vkd_run(bundle, untrained_llava, tmp_path / "on", monkeypatch)
    assert calls_off == [0, 1, 2]  # recomputed every step
    assert calls_on == [0]  # the second and third steps never call the teacher
    kept = log_on["vkd_distinct_kept_images"]
    assert log_on["vkd_teacher_cache"]["images"] == kept and log_on["vkd_teacher_cache"]["teacher_calls"] == 1
    assert log_off["vkd_teacher_cache"]["images"] == 0
    assert terms_on[1]["vkd"] > 0
    _assert_same(terms_on, terms_off, w_on, w_off)


def test_partial_and_capped_caches_give_the_same_losses(bundle, untrained_llava, tmp_path, monkeypatch):
    """4 photos a step out of the kept ones: later steps mix cached photos with new ones (the teacher runs
    on the new ones only); a cap of 0.05 MiB holds only some photos."""
    _, terms_off, _, w_off = _vkd_run(bundle, untrained_llava, tmp_path / "off", monkeypatch, vkd_images=4,
                                      teacher_cache_mb=0)
    calls, terms_on, log, w_on = _vkd_run(bundle, untrained_llava, tmp_path / "on", monkeypatch, vkd_images=4)
    assert calls == [0, 1, 2] and log["vkd_teacher_cache"]["images"] > 4  # photos from several steps kept
    _assert_same(terms_on, terms_off, w_on, w_off)
    _, terms_cap, log_cap, w_cap = _vkd_run(bundle, untrained_llava, tmp_path / "cap", monkeypatch, vkd_images=4,
                                            teacher_cache_mb=0.05)
    assert 0 < log_cap["vkd_teacher_cache"]["mb"] <= 0.05
    _assert_same(terms_cap, terms_off, w_cap, w_off)


def test_negative_cache_size_is_refused(bundle, untrained_llava, tmp_path):
    with pytest.raises(ValueError, match="teacher_cache_mb"):
        unlearn(bundle, UnlearnConfig(method="vkd", steps=1, method_args={"teacher_cache_mb": -1}), tmp_path / "x",
                loaded=load_model(untrained_llava))


# ---- fake-tensor mode: the released sizes traced without weights --------------------------------------

def test_fake_trace_counts_flops_and_bytes_by_hand(scale):
    """A tiny Llama's full-scope step traced under fake tensors: FLOPs and bytes from the config by hand.

    Forward: 2·tokens·(weights in the linears) for the matmuls (the head projects every position here, all
    of them answers) + 4·tokens²·hidden per layer for attention (q·kᵀ and p·v, full square). Backward of a
    full-scope step: twice the matmuls; attention's (flash) backward recomputes q·kᵀ, 5 products against the
    forward's 2, so 2.5× its forward. Bytes, as the engine trains a bf16 checkpoint:
    every weight trainable, upcast to a 4-B fp32 master weight; 4-B gradients; AdamW 2 × 4 B. With
    `pure_bf16`: 2 B each, moments 2 × 2 B."""
    d = scale.Dims(text_hidden=64, text_layers=2, text_mlp=128, text_heads=4, text_kv_heads=4, vocab=256,
                   vision_hidden=16, vision_layers=1, vision_mlp=32, vision_heads=1, image_size=28)
    h, layers, mlp, vocab, tokens, batch = 64, 2, 128, 256, 64, 2
    linear = layers * (4 * h * h + 3 * h * mlp) + h * vocab  # q, k, v, o, gate, up, down; the head
    n = vocab * h + layers * (4 * h * h + 3 * h * mlp + 2 * h) + h + h * vocab  # + embeddings and norms
    matmuls, attention = 2 * batch * tokens * linear, layers * 4 * batch * tokens**2 * h  # forward
    res = scale.fake_text_case(d, vocab, tokens, batch=batch)
    assert res["total_params"] == n and res["trainable_params"] == n
    assert res["flops_by_op"]["mm"] == 3 * matmuls
    assert res["flops"] == 3 * matmuls + attention + 5 * attention // 2
    assert res["start"]["params"] == 4 * n and res["start"]["optimiser"] == 8 * n
    assert res["category_max"]["grads"] == 4 * n and res["after_backward"]["grads"] == 4 * n
    assert res["end"] == res["start"]  # gradients and every activation released after the step
    assert res["peak_bytes"] >= 16 * n and res["trace_s"] >= 0
    pure = scale.fake_text_case(d, vocab, tokens, batch=batch, pure_bf16=True)
    assert pure["flops"] == res["flops"]
    assert pure["start"]["params"] == 2 * n and pure["start"]["optimiser"] == 4 * n
    assert pure["category_max"]["grads"] == 2 * n


@pytest.fixture(scope="module")
def fake_smoke(scale, tmp_path_factory):
    """One `--device fake` run at the smoke sizes: four step cases and the three mask estimates."""
    root = tmp_path_factory.mktemp("fake")
    out, readme = root / "fake.json", root / "page.md"
    readme.write_text("before\n<!-- scale-fake:start -->\nSTALE BLOCK\n<!-- scale-fake:end -->\nafter\n")
    argv = ["--device", "fake", "--config", "smoke", "--families", "llava", "--methods",
            "graddiff,graddiff-lora,vkd,vkd-batch-photos,salun-mask,mmunlearner-mask,vkd-mask", "--batches", "1",
            "--ckpt", "on", "--out", str(out), "--readme", str(readme)]
    assert scale.main(argv) == 0
    return argv, out, readme


def test_fake_mode_traces_method_families_and_writes_its_table(scale, fake_smoke):
    """The smoke sizes through `--device fake`: the project's scopes, θ0 and losses under fake tensors,
    parts by hand (frozen bf16 2 B, trainable fp32 4 B + AdamW 8 B, bool masks 1 B), the table written
    between its markers, and a second run that finds every case done."""
    argv, out, readme = fake_smoke
    data = json.loads(out.read_text())
    cases = data["cases"]
    assert all(c["status"] == "ok" for c in cases.values()), [c.get("error") for c in cases.values()]
    gd, lora = cases["llava/graddiff/b1/ckpt"], cases["llava/graddiff-lora/b1/ckpt"]
    vkd, paper = cases["llava/vkd/b1/ckpt"], cases["llava/vkd-batch-photos/b1/ckpt"]
    total = gd["total_params"]
    assert gd["trainable_params"] == total and gd["start"] == {"params": 4 * total, "buffers": gd["start"]["buffers"],
                                                               "optimiser": 8 * total}
    assert gd["per_rank_8"]["layout"] == "FSDP2" and lora["per_rank_8"]["layout"] == "DDP"
    for c in (lora, vkd):  # frozen weights stay bf16, the trainable ones are fp32 masters
        t = c["trainable_params"]
        assert 0 < t < total and c["start"]["params"] == 2 * (c["total_params"] - t) + 4 * t
        assert c["start"]["optimiser"] == 8 * t
    assert lora["category_max"]["grads"] == 4 * lora["trainable_params"]
    # VKD: the projector reads the second-to-last vision layer (feature layer −2): the last one gets no gradient
    assert 0 < vkd["category_max"]["grads"] < 4 * vkd["trainable_params"]
    assert vkd["start"]["masks"] == vkd["trainable_params"]  # one bool per V + P weight
    assert vkd["start"]["teacher_cache"] > 0 and vkd["teacher_calls_in_step"] == 0  # a later, cached step
    assert vkd["reference"] == "vision-copy" and vkd["distilled_photos"] == 64 and paper["distilled_photos"] == 1
    assert vkd["flops"] > paper["flops"] > 0 and vkd["placeholder_scalars"] == 1
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE BLOCK" not in text
    assert "| llava | vkd-batch-photos |" in text and "VKD against full-scope GradDiff" in text
    stamps = {k: c["case_s"] for k, c in cases.items()}
    assert scale.main(argv) == 0  # resumed: nothing left to trace
    assert {k: c["case_s"] for k, c in json.loads(out.read_text())["cases"].items()} == stamps


def test_fake_mode_traces_the_mask_estimates_with_their_accumulators_by_hand(scale, fake_smoke):
    """The one-off mask estimates at the smoke sizes: forwards of one record (the batch), 2 a batch and one batch
    a side; their accumulators by hand from the parts (n trainable weights, |W| language, |V|+|P| vision side).
    SalUn: no accumulator (its fp32 sum is the master weights' own .grad). MMUnlearner, one slice at this size:
    the forget Fisher (4n) with the vision side's preserve Fisher (4(|V|+|P|)), then the language side's
    forget and preserve Fishers (8|W|) — the larger. VKD on V + P (n = |V|+|P|): both Fishers at once, 8n. Each
    leaves one bool per trainable weight; the table sets each beside its method's step."""
    _, out, readme = fake_smoke
    data = json.loads(out.read_text())
    parts, cases = data["models"]["llava"]["parts"], data["cases"]
    assert all(c["status"] == "ok" for c in cases.values()), [c.get("error") for c in cases.values()]
    n, w, vp = parts["total"], parts["W"], parts["V"] + parts["P"]
    salun, mmu, vkd = (cases[f"llava/{m}-mask/b1/ckpt"] for m in ("salun", "mmunlearner", "vkd"))
    assert salun["forwards"] == [1, 1] and salun["category_max"].get("sums", 0) == 0
    assert 0 < salun["category_max"]["grads"] <= 4 * n
    assert mmu["mask_slices"] == 1 and mmu["forwards"] == [1] * 6  # forget, vision side, language side
    assert mmu["category_max"]["sums"] == max(4 * n + 4 * vp, 8 * w) == 8 * w
    assert vkd["trainable_params"] == vp and vkd["forwards"] == [1] * 4 and vkd["category_max"]["sums"] == 8 * vp
    for c in (salun, mmu, vkd):
        assert c["end"] == {**c["start"], "masks": c["trainable_params"]}  # only the bool masks stay
    rows = {r["method"]: r for r in scale.estimate_rows(data)}
    vkd_step = cases["llava/vkd/b1/ckpt"]["peak_bytes"]
    assert rows["vkd-mask"]["step_peak"] == vkd_step and rows["vkd-mask"]["bound"] == 2 * vp
    assert rows["vkd-mask"]["extra"] == max(0, vkd["peak_bytes"] - vkd_step)
    assert rows["salun-mask"]["step_peak"] is None and rows["salun-mask"]["within"] is None  # no step: no verdict
    text = readme.read_text()
    assert "| llava | vkd-mask | vision | on | 1 |" in text and "| llava | mmunlearner-mask |" in text


def test_mask_slices_table_keeps_every_released_size_within_one_bf16_copy(scale, tmp_path):
    """benchmarks/mask_slices.py on the meta device: at every released size the slices `mask_slices=0` picks
    keep MMUnlearner's fp32 sums within one bf16 copy (2 B a weight), where one pass would hold ~8 B a
    weight; the docs' block is rewritten between its markers."""
    import subprocess

    page = tmp_path / "page.md"
    page.write_text("before\n<!-- mask-slices:start -->\nold\n<!-- mask-slices:end -->\nafter\n")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mask_slices.py"), "--readme", str(page)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split(" | ") for line in page.read_text().splitlines() if line.startswith("| ") and "B |" in line]
    assert [r[0] for r in rows] == ["| LLaVA-1.5-7B", "| Qwen2-VL-7B", "| Idefics3-8B"]
    for r in rows:
        slices, sliced, one_pass, bf16 = int(r[2]), float(r[4]), float(r[5]), float(r[6].rstrip(" |"))
        weights = float(r[1].rstrip("B")) * 1e9
        assert slices >= 4 and sliced <= bf16 and one_pass >= 3.5 * bf16, r
        assert bf16 == pytest.approx(2 * weights / 1e9, abs=0.06), r  # 2 B a weight, by hand from the count
    assert page.read_text().startswith("before\n") and "old" not in page.read_text()
