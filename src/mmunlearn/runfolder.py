"""What a run folder says about itself: OUT/run.json (how it was made, enough to make it again) and
OUT/README.md (a Hugging Face model card for people).

The root config.json of a run folder is the HF model's own, so the run's settings live in run.json:
the command, every resolved option and the mmunlearn version — written at run start, atomically, by
the main process. `mmunlearn rerun OUT --out NEW` reads it back.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

RUN_FILE = "run.json"
CARD_FILE = "README.md"
RUN_COMMANDS = ("unlearn", "finetune", "retain-model")
# Columns of the card's results table (those a summary has; forget_quality only with a reference).
HEADLINE_METRICS = ("cls_acc", "cls_acc_loglik", "rougeL_f1", "forget_quality")


def run_record(command: str, options: dict[str, Any], resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """The content of run.json: `options` are the command's own (what rerun passes back), `resolved` the
    defaults they stood for (a method's steps and lr...), for people reading the file."""
    from . import __version__

    return {"mmunlearn_version": __version__, "command": command, "options": options, "resolved": resolved or {}}


def read_run(folder: str | Path) -> dict[str, Any]:
    """run.json of a run folder; ValueError (one line) when it is missing, unreadable or not a run record."""
    path = Path(folder) / RUN_FILE
    if not Path(folder).is_dir():
        raise ValueError(f"{folder} is not a run folder (it does not exist)")
    if not path.is_file():
        raise ValueError(f"{path} is missing: only unlearn, finetune and retain-model runs record how to rerun them")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{path} is unreadable ({str(exc).splitlines()[0]})") from exc
    if (not isinstance(record, dict) or record.get("command") not in RUN_COMMANDS
            or not isinstance(record.get("options"), dict)):
        raise ValueError(f"{path} is not a run record (expected a command among {', '.join(RUN_COMMANDS)} "
                         "and its options)")
    return record


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that made the run, shell-quoted (the `mmunlearn` script and `python -m mmunlearn` read
    as `mmunlearn`)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).name in ("mmunlearn", "__main__.py"):
        return shlex.join(["mmunlearn", *argv[1:]])
    return shlex.join(argv)


def headline_table(summary: dict) -> str:
    """The summary's main numbers per split × modality as a Markdown table."""
    metrics = [m for m in HEADLINE_METRICS
               if any(m in vals for mods in summary.get("metrics", {}).values() for vals in mods.values())]
    lines = ["| split | modality | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for split, mods in summary.get("metrics", {}).items():
        for mod, vals in mods.items():
            cells = [f"{vals[m]:.3f}" if isinstance(vals.get(m), (int, float)) else "—" for m in metrics]
            lines.append(f"| {split} | {mod} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_RESOLVED_NAMES = {"method_config": "method settings used"}


def _flag(option: str) -> str:
    """A command's parameter name as its command-line flag (set_ → --set, eval_after → --eval)."""
    return {"eval_after": "--eval", "set_items": "--set"}.get(option, "--" + option.rstrip("_").replace("_", "-"))


def _value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}={_value(x)}" for k, x in v.items()) or "—"
    if isinstance(v, (list, tuple)):
        return ", ".join(_value(x) for x in v) or "—"
    return "—" if v is None else str(v)


def _settings_table(rows: dict[str, Any]) -> str:
    return "\n".join(["| setting | value |", "|---|---|"]
                     + [f"| {k} | `{_value(v)}` |" for k, v in rows.items()])


def model_card_text(out: Path, run: dict, log: dict | None = None, summary: dict | None = None,
                    command: str | None = None) -> str:
    """The model card (YAML metadata through huggingface_hub's ModelCardData, then Markdown)."""
    from huggingface_hub import ModelCard, ModelCardData

    opts, resolved, log = run["options"], run.get("resolved", {}), log or {}
    kind = run["command"]
    base = str(opts.get("model", ""))
    method = opts.get("method") if kind == "unlearn" else kind
    tags = ["mmunlearn", "machine-unlearning" if kind == "unlearn" else "fine-tuned", str(method)]
    data = ModelCardData(base_model=base or None, library_name="transformers", pipeline_tag="image-text-to-text",
                         tags=tags)
    intro = {
        "unlearn": f"Unlearned with `{method}`: made to forget the people of `{opts.get('forget_split')}`",
        "finetune": "Fine-tuned on every person of the world (stage 1: the 'real' people, stage 2: the "
                    "fictitious profiles), the starting point of unlearning",
        "retain-model": f"Fine-tuned like the vanilla model but never shown the people of "
                        f"`{opts.get('forget_split')}` (the retain-only reference)",
    }[kind]
    inputs = ("data", "model", "out", "forget_split", "method")
    settings = {_flag(k): "(default)" if v is None else v for k, v in opts.items() if k not in inputs}
    # what the options stood for (defaults); a tiny builder's settings only when one was built
    skip = (*inputs, *(() if base.startswith("tiny-") else ("tiny", "vision_warmup_steps", "caption_replay")))
    settings.update({_RESOLVED_NAMES.get(k, f"{k} used" if k in opts else k): v for k, v in resolved.items()
                     if k not in skip and v != opts.get(k)})
    records = log.get("records")
    forget_lines = [f"- data: `{opts.get('data')}`"]
    if kind != "finetune":
        forget_lines.append(f"- forget split: `{opts.get('forget_split')}`")
    if records:
        forget_lines.append("- training records: " + ", ".join(f"{k} {v}" for k, v in records.items()))
    if summary:
        results = (headline_table(summary) + "\n\nFull numbers: `eval/summary.json` (per record: "
                   "`eval/details.jsonl`).")
    else:
        results = "Not evaluated with the run (`--no-eval`); `mmunlearn eval --model OUT ...` scores it."
    files = (["- the merged model at the root (`--model OUT` or `from_pretrained`)"] if any(out.glob("*.safetensors"))
             else ["- no weights: they were not kept (a bench run; `mmunlearn rerun OUT --out NEW` makes them again)"])
    if (out / "adapter").is_dir():
        files.append("- `adapter/`: the LoRA adapter alone (`--model OUT/adapter` loads it onto its base model)")
    files.append(f"- `{RUN_FILE}`: the command and every option (`mmunlearn rerun OUT --out NEW` repeats the run)")
    for name in ("unlearn_log.json", "train_log.json"):
        if (out / name).is_file():
            files.append(f"- `{name}`: the training log")
    body = "\n".join([
        f"# {out.name}", "",
        f"{intro}, by mmunlearn {run.get('mmunlearn_version', '?')}.", "",
        "## Base model", "", f"`{base}`", "",
        f"## Method: {method}", "", _settings_table(settings), "",
        "## Forget set" if kind != "finetune" else "## Data", "", *forget_lines, "",
        "## Results", "", results, "",
        "## Files", "", *files, "",
        "## How it was made", "", "```bash", command or command_line(), "```", "",
    ])
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))


def write_model_card(out: str | Path, run: dict, log: dict | None = None, summary: dict | None = None,
                     command: str | None = None) -> Path:
    """Write OUT/README.md atomically (call it from the main process only)."""
    from .data.store import atomic_write_text

    out = Path(out)
    atomic_write_text(out / CARD_FILE, model_card_text(out, run, log, summary, command))
    return out / CARD_FILE
