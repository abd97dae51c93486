"""One self-contained HTML page from a bench folder or a run folder — read from result files only.

`mmunlearn report DIR --out report.html`: the results table, the forget/retain trade-off, per-split bars
against vanilla, relearning curves, loss curves and which forget people still leak. Plots are embedded as
base64 PNGs, so the page can be mailed or attached to an issue as one file.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import plots
from .tables import COLUMNS, aggregate_rows, cell_text, mean_std, nothing_to_forget, numbers_from_summary

LEAK = 0.5  # a forget person whose accuracy stays above this (chance 0.25) still leaks
SUMMARY_METRICS = ("cls_acc", "cls_acc_loglik", "rougeL_f1", "rougeL_recall", "refusal_rate", "degenerate_rate",
                   "forget_quality", "n")


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)  # (alt, base64 PNG)


@dataclass
class Report:
    title: str
    source: str
    kind: str  # "bench" | "run"
    meta: list[tuple[str, str]]
    columns: list[tuple[str, str, str]]
    table: list[dict]  # aggregated rows (tables.aggregate_rows)
    summary_table: list[dict] = field(default_factory=list)  # run: split × modality rows
    summary_metrics: list[str] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)
    people: dict | None = None  # {"models": [...], "rows": [...]}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from None


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {i} is not valid JSON ({err.msg})") from None
    return rows


def resolve(source: Path) -> tuple[str, Path]:
    """("bench", its results.json) or ("run", its folder): a bench results.json or folder, a run or eval folder."""
    source = Path(source)
    if source.is_file():
        if source.name == "summary.json":
            return "run", source.parent
        if source.suffix == ".json":
            return "bench", source
        raise ValueError(f"{source} is neither a bench results.json nor a folder")
    if not source.is_dir():
        raise FileNotFoundError(f"{source} does not exist")
    if (source / "results.json").is_file():
        return "bench", source / "results.json"
    if any((source / name).is_file() for name in ("unlearn_log.json", "train_log.json", "summary.json")) or \
            (source / "eval" / "summary.json").is_file():
        return "run", source
    raise ValueError(f"{source} is neither a bench folder (results.json) nor a run folder "
                     "(unlearn_log.json, train_log.json or eval/summary.json)")


def _eval_dir(run: Path) -> Path | None:
    for d in (run / "eval", run):
        if (d / "summary.json").is_file():
            return d
    return None


def _names(data: str | None) -> dict[str, str]:
    """Person names from the world's profiles.json, where the data folder is still there."""
    if not data or not (Path(data) / "profiles.json").is_file():
        return {}
    try:
        return {p["profile_id"]: p.get("name", "") for p in json.loads((Path(data) / "profiles.json").read_text())}
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}


def _accuracy_by_ratio(summaries: Iterable[dict]) -> dict[float, list[float]]:
    """Probe accuracies per attack ratio (0: before the attack) over relearn summaries (or their floors)."""
    by_ratio: dict[float, list[float]] = {}
    for s in summaries:
        if isinstance(s.get("before"), (int, float)):
            by_ratio.setdefault(0.0, []).append(s["before"])
        for ratio, acc in (s.get("after") or {}).items():
            if isinstance(acc, (int, float)):
                by_ratio.setdefault(float(ratio), []).append(acc)
    return dict(sorted(by_ratio.items()))


def _relearn_points(summaries: Iterable[dict]) -> dict[float, tuple[float, float]]:
    """Probe accuracy per attack ratio, mean ± std over the given relearn summaries."""
    return {r: mean_std(v) for r, v in _accuracy_by_ratio(summaries).items()}


def _floor(summaries: Iterable[dict]) -> dict[float, float]:
    """The retain-only floor's accuracy per attack ratio, averaged over the summaries that have one."""
    return {r: mean_std(v)[0] for r, v in _accuracy_by_ratio(s.get("floor") or {} for s in summaries).items()}


def _relearn_of(run: Path) -> list[dict]:
    """Relearn summaries of a run: its bench attacks.json, or attack folders beside/inside it."""
    found = []
    if (run / "attacks.json").is_file():
        relearn = _read_json(run / "attacks.json").get("relearn")
        if relearn:
            found.append(relearn)
    for path in sorted(run.glob("*/summary.json")):
        data = _read_json(path)
        if isinstance(data, dict) and data.get("attack") == "relearn":
            found.append(data)
    return found


def _per_person(details_by_model: dict[str, list[list[dict]]], names: dict[str, str]) -> dict | None:
    """Forget accuracy per person and modality for every model (mean over its seeds' records)."""
    acc: dict[str, dict[str, dict[str, list[float]]]] = {}
    for model, runs in details_by_model.items():
        for rows in runs:
            for d in rows:
                score = (d.get("scores") or {}).get("cls_acc")
                if d.get("split") != "forget" or not isinstance(score, (int, float)):
                    continue
                acc.setdefault(d["profile_id"], {}).setdefault(model, {}).setdefault(d.get("modality", ""), []) \
                    .append(score)
    if not acc:
        return None
    models = [m for m in details_by_model if any(m in per for per in acc.values())]
    rows = []
    for pid in sorted(acc):
        cells = []
        for model in models:
            for mod in ("image+text", "text"):
                vals = acc[pid].get(model, {}).get(mod)
                v = sum(vals) / len(vals) if vals else None
                cells.append({"model": model, "modality": mod, "value": v,
                              "leak": v is not None and v > LEAK and model != "vanilla"})
        rows.append({"profile_id": pid, "name": names.get(pid, ""), "cells": cells,
                     "leaks": sorted({c["model"] for c in cells if c["leak"]})})
    leaks = {m: sum(1 for r in rows if m in r["leaks"]) for m in models if m != "vanilla"}
    return {"models": models, "rows": rows, "leak_counts": leaks, "threshold": LEAK}


def _trials(bench: Path) -> list[dict]:
    """Tuning trials where a tuner left them: */trials.jsonl rows holding the bench columns (flat or "numbers")."""
    out = []
    for path in sorted(bench.glob("**/trials.jsonl")):
        for row in _read_jsonl(path):
            numbers = row.get("numbers") if isinstance(row.get("numbers"), dict) else row
            if isinstance(row.get("summary"), dict):
                numbers = numbers_from_summary(row["summary"])
            out.append({"method": row.get("method") or path.parent.name, **numbers})
    return out


def _columns(aggregated: list[dict]) -> list[tuple[str, str, str]]:
    return [c for c in COLUMNS if any(c[0] in a for a in aggregated)]


def bench_report(results_file: Path) -> Report:
    """The bench page: results.json's table, then the run folders beside it (plots, losses, people)."""
    bench = results_file.parent
    results = _read_json(results_file)
    if not isinstance(results, dict) or not results.get("aggregated"):
        raise ValueError(f"{results_file} has no 'aggregated' rows (write it with `mmunlearn bench`)")
    cfg = results.get("config") or {}
    aggregated = results["aggregated"]
    seeds = cfg.get("seeds") or []
    methods = [a["method"] for a in aggregated if a["method"] != "vanilla"]
    meta = [("bench folder", str(bench)), ("model", str(cfg.get("model", ""))), ("data", str(cfg.get("data", ""))),
            ("forget split", str(cfg.get("forget_split", ""))), ("seeds", ", ".join(map(str, seeds))
                                    + (f" (defaults: {', '.join(map(str, cfg['default_seeds']))})"
                                       if cfg.get("default_seeds") is not None else "")),
            ("methods", ", ".join(methods)),
            ("eval subsample", str(cfg.get("max_records") or "all records")),
            ("total time", f"{(results.get('timing') or {}).get('total_s', '—')} s")]
    report = Report(title=f"mmunlearn bench — {bench.name}", source=str(bench), kind="bench", meta=meta,
                    columns=_columns(aggregated), table=aggregated)
    vanilla = next((a for a in aggregated if a["method"] == "vanilla"), None)
    warning = nothing_to_forget(vanilla)
    if warning:
        report.sections.append(Section("Warning: nothing to forget", warning[0].upper() + warning[1:]))

    trials = _trials(bench)
    report.sections.append(Section(
        "Forget/retain trade-off",
        "Classification accuracy on the forget people (lower = forgotten) against the retain people "
        "(higher = kept), mean ± std over seeds" + ("; crosses: tuning trials" if trials else "") + ".",
        [("trade-off scatter", plots.tradeoff(aggregated, trials))]))
    if any(isinstance(a.get("rank_top5"), dict) for a in aggregated):  # a bench with --attacks
        report.sections.append(Section(
            "Identity against understanding",
            "Forgetting the face, not the photo: the share of the forget people's unseen photos whose true name "
            "still ranks in the top 5 of every name (lower = forgotten) against understanding of those photos "
            "(higher = kept); labels: the median name rank beside the median rank of the forget people's names "
            "on never-seen strangers' photos.",
            [("identity frontier", plots.identity_frontier(aggregated))]))
    report.sections.append(Section(
        "Per split against vanilla",
        "Classification accuracy per split and modality (img: photo shown, txt: person named); dotted: chance.",
        [(f"{a['method']} against vanilla", plots.split_bars(a["method"], a, vanilla))
         for a in aggregated if a["method"] != "vanilla"]))

    runs = {m: [bench / m / f"seed{s}" for s in seeds if (bench / m / f"seed{s}").is_dir()] for m in methods}
    relearn = {"vanilla": _relearn_of(bench / "vanilla"),
               **{m: [r for run in runs[m] for r in _relearn_of(run)] for m in methods}}
    curves = {m: _relearn_points(s) for m, s in relearn.items() if s}
    if curves:
        floor = _floor(s for ss in relearn.values() for s in ss)
        report.sections.append(Section(
            "Relearning attack",
            "Held-out probe accuracy after fine-tuning on r% of the forget pool (r = 0: before the attack), "
            "mean ± std over seeds" + ("; dashed grey: the retain-only model under the same budget." if floor
                                       else "; no retain-only floor in these results."),
            [("relearning curves", plots.relearn_curves(curves, floor or None))]))

    logs = {}
    for m in methods:
        for run in runs[m]:
            if (run / "unlearn_log.json").is_file():
                logs[f"{m} {run.name}"] = _read_json(run / "unlearn_log.json").get("losses") or []
    if any(logs.values()):
        report.sections.append(Section("Loss curves", "Logged training terms per step (unlearn_log.json).",
                                        [("loss curves", plots.loss_curves(logs))]))

    details: dict[str, list[list[dict]]] = {}
    if (bench / "vanilla" / "eval" / "details.jsonl").is_file():
        details["vanilla"] = [_read_jsonl(bench / "vanilla" / "eval" / "details.jsonl")]
    for m in methods:
        found = [_read_jsonl(run / "eval" / "details.jsonl") for run in runs[m]
                 if (run / "eval" / "details.jsonl").is_file()]
        if found:
            details[m] = found
    report.people = _per_person(details, _names(cfg.get("data")))
    return report


def _run_label(run: Path) -> tuple[str, dict, list[dict]]:
    """(label, log, loss log) of a run folder: unlearn, finetune or evaluation only."""
    if (run / "unlearn_log.json").is_file():
        log = _read_json(run / "unlearn_log.json")
        return log.get("method", "unlearn"), log, log.get("losses") or []
    if (run / "train_log.json").is_file():
        log = _read_json(run / "train_log.json")
        return "finetune", log, log.get("log") or []
    return "model", {}, []


def run_report(run: Path) -> Report:
    """The run page: its evaluation, against the model it started from where that was evaluated."""
    label, log, losses = _run_label(run)
    eval_dir = _eval_dir(run)
    record = _read_json(run / "run.json") if (run / "run.json").is_file() else {}
    params = record.get("params") or record.get("options") or {}
    summary = _read_json(eval_dir / "summary.json") if eval_dir else {}
    data = params.get("data") or record.get("data") or (summary.get("config") or {}).get("data")

    row: dict[str, Any] = {"method": label, "seed": (log.get("config") or {}).get("seed"),
                           **(numbers_from_summary(summary) if summary else {})}
    for key in ("wall_time_s", "trainable_params"):
        if isinstance(log.get(key), (int, float)):
            row[key] = log[key]
    # the model this run started from, where its evaluation is on disk: the bars' and people's reference
    base = params.get("model") or (log.get("config") or {}).get("model")
    base_eval = _eval_dir(Path(base)) if base and Path(str(base)).is_dir() and Path(base) != run else None
    rows = [row]
    if base_eval is not None:
        rows.insert(0, {"method": "vanilla", "seed": None,
                        **numbers_from_summary(_read_json(base_eval / "summary.json"))})
    aggregated = aggregate_rows(rows)
    meta = [("run folder", str(run)), ("kind", label if label in ("finetune", "model") else f"unlearn ({label})"),
            ("forget split", str(log.get("forget_split") or (summary.get("config") or {}).get("forget_split", "")))]
    if log.get("steps_run") is not None:
        meta.append(("steps", str(log["steps_run"])))
    if base:
        meta.append(("started from", str(base)))
    if data:
        meta.append(("data", str(data)))
    report = Report(title=f"mmunlearn run — {run.name}", source=str(run), kind="run", meta=meta,
                    columns=_columns(aggregated), table=aggregated)

    metrics = summary.get("metrics") or {}
    present = {k for mods in metrics.values() for vals in mods.values() if isinstance(vals, dict) for k in vals}
    report.summary_metrics = [m for m in SUMMARY_METRICS if m in present]
    for split, mods in metrics.items():
        for mod, vals in mods.items():
            if isinstance(vals, dict):
                report.summary_table.append({"split": split, "modality": mod,
                                             "values": {m: vals.get(m) for m in report.summary_metrics}})

    by_method = {a["method"]: a for a in aggregated}
    if summary:
        report.sections.append(Section(
            "Per split" + (" against the model it started from" if base_eval else ""),
            "Classification accuracy per split and modality (img: photo shown, txt: person named); dotted: chance.",
            [(f"{label} per split", plots.split_bars(label, by_method[label], by_method.get("vanilla")))]))
    relearn = _relearn_of(run)
    if relearn:
        floor = _floor(relearn)
        report.sections.append(Section(
            "Relearning attack", "Held-out probe accuracy after fine-tuning on r% of the forget pool "
            "(r = 0: before the attack)" + ("; dashed grey: the retain-only floor." if floor else "."),
            [("relearning curves", plots.relearn_curves({label: _relearn_points(relearn)}, floor or None))]))
    if losses:
        report.sections.append(Section("Loss curves", "Logged training terms per step.",
                                       [("loss curves", plots.loss_curves({label: losses}))]))
    details: dict[str, list[list[dict]]] = {}
    if base_eval is not None and (base_eval / "details.jsonl").is_file():
        details["vanilla"] = [_read_jsonl(base_eval / "details.jsonl")]
    if eval_dir is not None and (eval_dir / "details.jsonl").is_file():
        details[label] = [_read_jsonl(eval_dir / "details.jsonl")]
    report.people = _per_person(details, _names(data))
    return report


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1150px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f2f2f2; }
tr.vanilla td { background: #fafafa; font-style: italic; }
td.leak { background: #f8d0cc; font-weight: 600; }
.scroll { overflow-x: auto; }
img { max-width: 100%; display: block; margin: .4em 0 1em; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; font-size: 13px; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
p.note { color: #555; font-size: 13px; }
</style></head>
<body data-images-ok="pending">
<h1>{{ r.title }}</h1>
<dl class="meta">{% for k, v in r.meta %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}
<dt>generated</dt><dd>{{ generated }} by mmunlearn {{ version }}</dd></dl>

<h2 id="results">Results</h2>
<p class="note">{% if r.kind == "bench" %}The bench table (results.json): mean ± std over seeds where more than
one.{% else %}The run's evaluation (eval/summary.json){% if r.table|length > 1 %}, beside the model it started
from{% endif %}.{% endif %}</p>
<div class="scroll"><table id="results-table">
<tr><th>method</th>{% for col, head, fmt in r.columns %}<th data-col="{{ col }}">{{ head }}</th>{% endfor %}</tr>
{% for a in r.table %}<tr class="{{ 'vanilla' if a.method == 'vanilla' else '' }}" data-method="{{ a.method }}">
<td>{{ a.method }}</td>{% for col, head, fmt in r.columns %}<td class="num" data-method="{{ a.method }}" data-col="{{ col }}"
{% if a.get(col) %} data-mean="{{ a[col].mean }}" data-std="{{ a[col].std }}"{% endif %}>{{ cell(a.get(col), fmt) }}</td>{% endfor %}</tr>
{% endfor %}</table></div>

{% if r.summary_table %}<h3>Every split and metric</h3>
<div class="scroll"><table id="summary-table">
<tr><th>split</th><th>modality</th>{% for m in r.summary_metrics %}<th>{{ m }}</th>{% endfor %}</tr>
{% for s in r.summary_table %}<tr><td>{{ s.split }}</td><td>{{ s.modality }}</td>
{% for m in r.summary_metrics %}<td class="num" data-split="{{ s.split }}" data-modality="{{ s.modality }}" data-metric="{{ m }}"
{% if s["values"][m] is number %} data-value="{{ s["values"][m] }}"{% endif %}>{{ num(s["values"][m]) }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% endif %}

{% for sec in r.sections %}<h2>{{ sec.title }}</h2>
{% if sec.text %}<p class="note">{{ sec.text }}</p>{% endif %}
{% for alt, png in sec.images %}<img alt="{{ alt }}" src="data:image/png;base64,{{ png }}">
{% endfor %}{% endfor %}

{% if r.people %}<h2 id="people">Per person: who still leaks</h2>
<p class="note">Classification accuracy on each forget person's questions (img: photo shown, txt: person named).
Red: above {{ r.people.threshold }} after unlearning (chance 0.25), the person is still recognised.
{% for m, n in r.people.leak_counts.items() %}<b>{{ m }}</b>: {{ n }} of {{ r.people.rows|length }} still leak{{ ";" if not loop.last else "." }}
{% endfor %}</p>
<div class="scroll"><table id="people-table">
<tr><th rowspan="2">person</th>{% for m in r.people.models %}<th colspan="2">{{ m }}</th>{% endfor %}</tr>
<tr>{% for m in r.people.models %}<th>img</th><th>txt</th>{% endfor %}</tr>
{% for p in r.people.rows %}<tr data-person="{{ p.profile_id }}"><td>{{ p.profile_id }}{% if p.name %} ({{ p.name }}){% endif %}</td>
{% for c in p.cells %}<td class="num{{ ' leak' if c.leak else '' }}" data-model="{{ c.model }}" data-modality="{{ c.modality }}">{{ num(c.value) }}</td>{% endfor %}</tr>
{% endfor %}</table></div>{% endif %}

<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-images", ok + "/" + imgs.length);
  document.body.setAttribute("data-images-ok", ok === imgs.length ? "yes" : "no");
});
</script>
</body></html>
"""


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return "—" if math.isnan(v) else f"{v:.2f}" if abs(v) >= 0.01 or v == 0 else f"{v:.2g}"
    return str(v)


def render(report: Report) -> str:
    import jinja2

    from .. import __version__

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        r=report, cell=cell_text, num=_num, version=__version__,
        generated=_dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))


def build_report(source: Path) -> Report:
    kind, path = resolve(source)
    return bench_report(path) if kind == "bench" else run_report(path)


def write_html(report: Report, out: Path) -> Path:
    """Render and write atomically: a reader never sees half a page."""
    from ..data.store import atomic_write_text

    atomic_write_text(out, render(report))
    return Path(out)


def write_report(source: Path, out: Path) -> Path:
    """Build the page for SOURCE (a bench results.json or folder, a run folder) and write it to OUT."""
    return write_html(build_report(Path(source)), out)
