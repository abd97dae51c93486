"""Run folders (issue 19, items 3 and 6): a LoRA run's adapter loads anywhere a model does and gives the
merged model's logits; every run folder has a model card and a run.json from which `rerun` reproduces it."""

import json
import os
import shlex
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mmunlearn.cli import app
from mmunlearn.models.base import ModelLoadError
from mmunlearn.models.loader import load_model

FORGET = "forget_15"


@pytest.fixture(scope="module")
def bundle(small_world):
    from mmunlearn.data.store import load_data

    return load_data(small_world, FORGET)


@pytest.fixture(scope="module")
def lora_run(bundle, untrained_llava, tmp_path_factory):
    """A few LoRA steps of graddiff on the untrained tiny LLaVA (lr high enough for the adapter to matter)."""
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    out = tmp_path_factory.mktemp("lora") / "run"
    unlearn(bundle, UnlearnConfig(method="graddiff", model=str(untrained_llava), scope="lora", steps=3, lr=5e-2,
                                  batch_size=4), out)
    return out


def _logits(loaded, records) -> torch.Tensor:
    from mmunlearn.data.collate import TrainCollator

    batch = TrainCollator(loaded.adapter, loaded.processor)(records)
    batch.pop("labels")
    with torch.no_grad():
        return loaded.model.eval()(**batch).logits.float()


def _some_records(bundle):
    recs = bundle.eval("forget")
    return [r for r in recs if r.image is not None][:2] + [r for r in recs if r.image is None][:2]


# ---- adapters --------------------------------------------------------------------------------------

def test_adapter_is_kept_aside_and_names_the_input_folder(lora_run, untrained_llava):
    assert not (lora_run / "adapter_config.json").exists()  # transformers would apply it again on load
    config = json.loads((lora_run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(untrained_llava).resolve())


def test_adapter_gives_the_merged_models_logits(lora_run, untrained_llava, bundle):
    records = _some_records(bundle)
    merged = _logits(load_model(lora_run), records)
    adapted = _logits(load_model(lora_run / "adapter"), records)
    base = _logits(load_model(untrained_llava), records)
    assert (merged - base).abs().max() > 1e-3  # the adapter changed something, so equality below means something
    assert (adapted - merged).abs().max() < 1e-5
    assert not any("lora" in name for name, _ in load_model(lora_run / "adapter").model.named_parameters())


def test_adapter_base_relative_to_the_adapter_folder(lora_run, untrained_llava, bundle, tmp_path):
    """A moved pair (adapter + base side by side) still loads when the base is recorded relative to it."""
    shutil.copytree(untrained_llava, tmp_path / "base")
    shutil.copytree(lora_run / "adapter", tmp_path / "adapter")
    cfg_file = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = "../base"
    cfg_file.write_text(json.dumps(cfg))
    records = _some_records(bundle)
    diff = _logits(load_model(tmp_path / "adapter"), records) - _logits(load_model(lora_run), records)
    assert diff.abs().max() < 1e-5


def _broken_adapter(lora_run, tmp_path, edit_config=None, edit_weights=None) -> Path:
    folder = tmp_path / "adapter"
    shutil.copytree(lora_run / "adapter", folder)
    if edit_config:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        edit_config(cfg)
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if edit_weights:
        weights = load_file(folder / "adapter_model.safetensors")
        edit_weights(weights)
        save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    return folder


def _first_key(weights, part="lora_A"):
    return sorted(k for k in weights if part in k)[0]


@pytest.mark.parametrize("case, needle", [
    ("missing base", "not a local model folder"),
    ("tiny base", "built in memory"),
    ("no base", "records no base"),
    ("wrong shape", "wrong shape"),
    ("missing weight", "1 missing adapter weight"),
    ("extra weight", "1 unexpected adapter weight"),
    ("no weights file", "cannot apply the adapter"),
])
def test_bad_adapter_is_a_load_error(lora_run, tmp_path, case, needle):
    def set_base(value):
        return lambda cfg: cfg.__setitem__("base_model_name_or_path", value)

    def reshape(w):
        key = _first_key(w)
        w[key] = torch.zeros(w[key].shape[0] + 1, w[key].shape[1])

    def drop(w):
        del w[_first_key(w)]

    def add(w):
        key = _first_key(w)
        w[key.replace("lora_A", "lora_C")] = w[key].clone()

    edits = {
        "missing base": dict(edit_config=set_base(str(tmp_path / "gone"))),
        "tiny base": dict(edit_config=set_base("tiny-llava")),
        "no base": dict(edit_config=set_base(None)),
        "wrong shape": dict(edit_weights=reshape),
        "missing weight": dict(edit_weights=drop),
        "extra weight": dict(edit_weights=add),
        "no weights file": {},
    }
    folder = _broken_adapter(lora_run, tmp_path, **edits[case])
    if case == "no weights file":
        (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=needle):
        load_model(folder)


def test_cli_bad_adapter_is_one_error_line(lora_run, small_world, tmp_path):
    folder = _broken_adapter(lora_run, tmp_path, edit_config=lambda c: c.update(base_model_name_or_path="/nowhere"))
    res = CliRunner().invoke(app, ["eval", "--model", str(folder), "--data", str(small_world), "--out",
                                   str(tmp_path / "ev"), "--forget-split", FORGET, "--max-records", "4"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "/nowhere" in lines[0], res.stderr
    assert not (tmp_path / "ev").exists()


# ---- run.json, model card, rerun -------------------------------------------------------------------

def _unlearn_argv(model, data, out, *extra):
    return ["unlearn", "--method", "graddiff", "--model", str(model), "--data", str(data), "--out", str(out),
            "--forget-split", FORGET, "--steps", "3", "--batch-size", "4", "--lr", "1e-3", "--seed", "3",
            "--set", "alpha=0.5", "--no-eval", *extra]


def _invoke(argv, script="/usr/local/bin/mmunlearn", eval_records: int | None = None):
    """Run the CLI in-process with sys.argv as a shell would have set it (the card records it);
    `eval_records`: the post-training evaluation scores only that many forget/retain records (speed)."""
    import mmunlearn.workflow as workflow

    real_eval = workflow.evaluate_into

    def small_eval(loaded, bundle, out, **kwargs):
        return real_eval(loaded, bundle, out, **{**kwargs, "splits": ("forget", "retain"),
                                                 "max_records_per_split": eval_records})

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", [script, *argv])
        if eval_records:
            mp.setattr(workflow, "evaluate_into", small_eval)
        return CliRunner().invoke(app, argv)


@pytest.fixture(scope="module")
def cli_run(small_world, untrained_llava, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = _unlearn_argv(untrained_llava, small_world, out)
    res = _invoke(argv)
    assert res.exit_code == 0, res.output
    return out, argv


def _one_error(res, *needles):
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_run_json_records_every_option(cli_run, small_world, untrained_llava):
    from importlib.metadata import version

    out, _ = cli_run
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "unlearn" and run["mmunlearn_version"] == version("mmunlearn")
    opts = run["options"]
    assert opts["method"] == "graddiff" and opts["steps"] == 3 and opts["lr"] == 1e-3 and opts["seed"] == 3
    assert opts["batch_size"] == 4 and opts["forget_split"] == FORGET and opts["set_items"] == ["alpha=0.5"]
    assert opts["model"] == str(Path(untrained_llava).resolve()) and opts["data"] == str(Path(small_world).resolve())
    assert opts["out"] == str(out.resolve()) and opts["eval_after"] is False and opts["scope"] is None
    assert "overwrite" not in opts and "resume" not in opts
    # defaults the options stood for: graddiff's scope, and its settings with --set applied
    assert run["resolved"]["scope"] == "full" and run["resolved"]["steps"] == 3
    assert run["resolved"]["method_config"]["alpha"] == 0.5
    # the root config.json is the model's own again
    assert json.loads((out / "config.json").read_text())["model_type"] == "llava"


def test_model_card(cli_run, untrained_llava):
    from huggingface_hub import ModelCard

    out, argv = cli_run
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(Path(untrained_llava).resolve())
    assert "graddiff" in card.data.tags and card.data.library_name == "transformers"
    text = card.text
    assert "## Method: graddiff" in text and f"`{FORGET}`" in text
    assert "| alpha | " not in text and "alpha=0.5" in text  # the --set value as given and resolved
    assert "```bash\n" + shlex.join(["mmunlearn", *argv]) + "\n```" in text
    assert "Not evaluated" in text
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_rerun_reproduces_the_run(cli_run, untrained_llava, tmp_path):
    out, _ = cli_run
    new = tmp_path / "again"
    res = _invoke(["rerun", str(out), "--out", str(new)])
    assert res.exit_code == 0, res.output
    first, second = load_file(out / "model.safetensors"), load_file(new / "model.safetensors")
    start = load_file(Path(untrained_llava) / "model.safetensors")
    assert set(first) == set(second)
    assert max((first[k] - start[k]).abs().max().item() for k in first) > 1e-4  # the run did change weights
    for key in first:
        assert (first[key] - second[key]).abs().max().item() <= 1e-6, key
    a, b = json.loads((out / "run.json").read_text()), json.loads((new / "run.json").read_text())
    assert b["options"].pop("out") == str(new.resolve())
    a["options"].pop("out")
    assert a == b
    card = (new / "README.md").read_text()
    assert f"mmunlearn rerun {out} --out {new}" in card


def test_rerun_refusals(cli_run, tmp_path):
    out, _ = cli_run
    plain = tmp_path / "plain"
    plain.mkdir()
    _one_error(_invoke(["rerun", str(plain), "--out", str(tmp_path / "n1")]), "run.json is missing")
    (plain / "run.json").write_text("{ not json")
    _one_error(_invoke(["rerun", str(plain), "--out", str(tmp_path / "n2")]), "unreadable")
    (plain / "run.json").write_text(json.dumps({"command": "eval", "options": {}}))
    _one_error(_invoke(["rerun", str(plain), "--out", str(tmp_path / "n3")]), "not a run record")
    run = json.loads((out / "run.json").read_text())
    run["options"]["model"] = str(tmp_path / "deleted-model")
    (plain / "run.json").write_text(json.dumps(run))
    _one_error(_invoke(["rerun", str(plain), "--out", str(tmp_path / "n4")]), "no longer exists", "deleted-model")
    run["options"]["model"], run["options"]["warp"] = json.loads((out / "run.json").read_text())["options"]["model"], 9
    (plain / "run.json").write_text(json.dumps(run))
    _one_error(_invoke(["rerun", str(plain), "--out", str(tmp_path / "n5")]), "warp")
    _one_error(_invoke(["rerun", str(out), "--out", str(out)]), "new folder")
    assert not any((tmp_path / f"n{i}").exists() for i in range(1, 6))


def test_finetune_card_has_the_evaluation_numbers(small_world, untrained_llava, tmp_path):
    """A run that evaluates itself: the card's results table is eval/summary.json's numbers."""
    from huggingface_hub import ModelCard

    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(untrained_llava), "--data", str(small_world), "--out", str(out),
            "--stage1-steps", "1", "--stage2-steps", "2", "--batch-size", "4", "--checkpoint-every", "0"]
    res = _invoke(argv, script="/opt/venv/lib/python3.11/site-packages/mmunlearn/__main__.py", eval_records=4)
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "finetune" and run["options"]["stage2_steps"] == 2
    assert run["resolved"]["warmup_steps"] == 100  # FinetuneConfig's default
    summary = json.loads((out / "eval" / "summary.json").read_text())
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == str(Path(untrained_llava).resolve()) and "finetune" in card.data.tags
    lines = card.text.splitlines()
    header = next(line for line in lines if line.startswith("| split | modality |"))
    columns = [c.strip() for c in header.strip("|").split("|")][2:]
    assert columns and set(columns) <= {"cls_acc", "cls_acc_loglik", "rougeL_f1", "forget_quality"}
    numbers = 0
    for split, mods in summary["metrics"].items():
        for mod, vals in mods.items():
            row = next(line for line in lines if line.startswith(f"| {split} | {mod} |"))
            cells = [c.strip() for c in row.strip("|").split("|")][2:]
            expected = [f"{vals[m]:.3f}" if isinstance(vals.get(m), (int, float)) else "—" for m in columns]
            assert cells == expected, (split, mod)
            numbers += sum(c != "—" for c in cells)
    assert numbers >= 2
    assert "```bash\n" + shlex.join(["mmunlearn", *argv]) + "\n```" in card.text


def test_relative_inputs_are_recorded_absolute(tmp_path, monkeypatch):
    """A rerun may start in another directory: run.json's paths (options and the configs' copies) are absolute."""
    from mmunlearn.workflow import start_run as _start_run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m").mkdir()
    (tmp_path / "o").mkdir()
    (tmp_path / "ids.txt").write_text("p1\np2\n")
    params = {"model": Path("m"), "data": Path("d"), "out": Path("o"), "method": "ga", "steps": None,
              "forget_ids": "ids.txt", "retain_ids": "p3,p4", "overwrite": True, "resume": False}
    _start_run(Path("o"), "unlearn", params, {"model": "m", "method": "ga", "steps": 60})
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    root = tmp_path.resolve()
    assert run["options"] == {"model": str(root / "m"), "data": str(root / "d"), "out": str(root / "o"),
                              "method": "ga", "steps": None, "forget_ids": str(root / "ids.txt"),
                              "retain_ids": "p3,p4"}
    assert run["resolved"] == {"model": str(root / "m"), "method": "ga", "steps": 60}
