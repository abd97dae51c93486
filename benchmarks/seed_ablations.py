"""Seed-method claims and ablations on a fine-tuned world (issue #5), as Markdown tables.

    python benchmarks/seed_ablations.py --model runs/vanilla --data runs/world --out runs/ablations \
        [--only vkd,smfa,viker] [--max-records 300] [--readme docs/methods/seed-ablations.md]

Runs, on the same forget split and seed, each variant below → unlearn → evaluate, and prints:

* VKD: full method, no distillation term (λ = 0), no saliency mask, full-model scope, and full-model
  GradDiff at the same steps (the wall-time comparison of the paper's "> 50 % less");
* SMFA: the memory-forgetting adapter alone (no sculpting), conflict mask only, magnitude mask only,
  full sculpting;
* ViKeR: the default run (forget accuracy, degenerate rate).

Every run keeps its folder (OUT/NAME with unlearn_log.json and eval/summary.json) and is reused when
its summary exists, so an interrupted run continues. Tables come from those files only; with
`--readme FILE` they replace the text between `<!-- ablations:start -->` and `<!-- ablations:end -->` in
FILE (the published tables live in docs/methods/seed-ablations.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS: dict[str, list[tuple[str, str, dict, dict]]] = {
    # group: [(run name, method, UnlearnConfig overrides, method_args)]
    "vkd": [
        ("vkd", "vkd", {}, {}),
        ("vkd-no-distill", "vkd", {}, {"vkd_weight": 0.0}),
        ("vkd-no-mask", "vkd", {}, {"mask": "none"}),
        ("vkd-keep-pretrain", "vkd", {}, {"keep_from": "retain+pretrain"}),
        ("vkd-full-scope", "vkd", {"scope": "full"}, {}),
        # the forgetting/keeping trade-off: no retain NLL, and the earlier, much stronger distillation
        ("vkd-no-retain-nll", "vkd", {}, {"alpha": 0.0}),
        ("vkd-lambda-0.5", "vkd", {}, {"vkd_weight": 0.5, "alpha": 0.0}),
        ("graddiff-same-steps", "graddiff", {"steps": "vkd"}, {}),
    ],
    "smfa": [
        ("smfa-mfa-only", "smfa", {}, {"sculpt": "none"}),
        ("smfa-conflict", "smfa", {}, {"sculpt": "conflict"}),
        ("smfa-magnitude", "smfa", {}, {"sculpt": "magnitude"}),
        ("smfa", "smfa", {}, {}),
    ],
    "viker": [("viker", "viker", {}, {})],
}


def run_variant(name: str, method: str, overrides: dict, method_args: dict, args, bundle, out: Path) -> dict:
    from mmunlearn.data.store import atomic_write_json
    from mmunlearn.eval.evaluator import EvalConfig, evaluate, write_results
    from mmunlearn.methods.base import get_method
    from mmunlearn.models.loader import load_model
    from mmunlearn.train.unlearn import UnlearnConfig, unlearn

    run = out / name
    summary_path = run / "eval" / "summary.json"
    if summary_path.is_file():
        return {"log": json.loads((run / "unlearn_log.json").read_text()), "summary": json.loads(summary_path.read_text())}
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    overrides = dict(overrides)
    if overrides.get("steps") == "vkd":  # "the same steps" as VKD's default
        overrides["steps"] = get_method("vkd").default_steps
    cfg = UnlearnConfig(method=method, model=str(args.model), seed=args.seed, method_args=method_args, **overrides)
    atomic_write_json(run / "config.json", {"variant": name, "forget_split": args.forget_split,
                                            "method": method, "overrides": overrides, "method_args": method_args})
    result = unlearn(bundle, cfg, run, loaded=load_model(args.model))
    summary, details = evaluate(result.loaded, bundle, EvalConfig(max_records_per_split=args.max_records,
                                                                  progress=False))
    write_results(run / "eval", summary, details)
    print(f"{name}: {result.log['wall_time_s']:.1f}s", flush=True)
    return {"log": result.log, "summary": summary}


def _m(summary: dict, split: str, mod: str, metric: str = "cls_acc") -> float | None:
    return summary.get("metrics", {}).get(split, {}).get(mod, {}).get(metric)


def _f(x: float | None, fmt: str = "{:.2f}") -> str:
    return "—" if x is None else fmt.format(x)


def tables(results: dict[str, dict], vanilla: dict) -> str:
    lines = []
    cols = [("forget img", "forget", "image+text"), ("forget txt", "forget", "text"),
            ("test img", "test", "image+text"), ("retain img", "retain", "image+text"),
            ("retain txt", "retain", "text"), ("real img", "real", "image+text"), ("real txt", "real", "text")]
    if any(k.startswith(("vkd", "graddiff")) for k in results):
        lines += ["**VKD** (cls_acc; time = the unlearning loop's wall time):", "",
                  "| run | " + " | ".join(c[0] for c in cols) + " | degenerate | time (s) | trainable params |",
                  "|---|" + "---:|" * (len(cols) + 3)]
        lines.append("| vanilla | " + " | ".join(_f(_m(vanilla, s, m)) for _, s, m in cols) + " | "
                     + _f(_m(vanilla, "forget", "text", "degenerate_rate")) + " | — | — |")
        for name in ("vkd", "vkd-no-distill", "vkd-no-mask", "vkd-keep-pretrain", "vkd-full-scope", "vkd-no-retain-nll",
                     "vkd-lambda-0.5", "graddiff-same-steps"):
            if name in results:
                r = results[name]
                s, log = r["summary"], r["log"]
                deg = _m(s, "forget", "image+text", "degenerate_rate")
                lines.append(f"| {name} | " + " | ".join(_f(_m(s, sp, m)) for _, sp, m in cols)
                             + f" | {_f(deg)} | {log['wall_time_s']:.1f} | {log['trainable_params']:,} |")
        lines.append("")
    if any(k.startswith("smfa") for k in results):
        smfa_cols = [("forget refusal (img)", "forget", "image+text", "refusal_rate"),
                     ("forget refusal (txt)", "forget", "text", "refusal_rate"),
                     ("test refusal (img)", "test", "image+text", "refusal_rate"),  # unseen photos
                     ("forget img", "forget", "image+text", "cls_acc"), ("forget txt", "forget", "text", "cls_acc"),
                     ("test img", "test", "image+text", "cls_acc"),
                     ("underst. forget", "understanding_forget", "image+text", "cls_acc"),
                     ("retain img", "retain", "image+text", "cls_acc"), ("retain txt", "retain", "text", "cls_acc"),
                     ("real img", "real", "image+text", "cls_acc"), ("real txt", "real", "text", "cls_acc")]
        lines += ["**SMFA** (refusal = share of forget replies that refuse; test = unseen photos of the forget "
                  "people; understanding on forget people's photos):", "",
                  "| run | " + " | ".join(c[0] for c in smfa_cols) + " | masked share |",
                  "|---|" + "---:|" * (len(smfa_cols) + 1)]
        lines.append("| vanilla | " + " | ".join(_f(_m(vanilla, *c[1:])) for c in smfa_cols) + " | — |")
        for name in ("smfa-mfa-only", "smfa-conflict", "smfa-magnitude", "smfa"):
            if name in results:
                s, log = results[name]["summary"], results[name]["log"]
                lines.append(f"| {name} | " + " | ".join(_f(_m(s, *c[1:])) for c in smfa_cols)
                             + f" | {_f(log.get('smfa_masked_fraction'))} |")
        lines.append("")
    if "viker" in results:
        viker_cols = [("forget", "image+text"), ("forget", "text"), ("test", "image+text"), ("retain", "image+text"),
                      ("retain", "text")]
        lines += ["**ViKeR** (test = unseen photos of the forget people):", "",
                  "| run | forget img | forget txt | test img | retain img | retain txt | degenerate (forget) |",
                  "|---|" + "---:|" * 6]
        for name, s in (("vanilla", vanilla), ("viker", results["viker"]["summary"])):
            lines.append(f"| {name} | " + " | ".join(_f(_m(s, a, b)) for a, b in viker_cols)
                         + " | " + _f(_m(s, "forget", "image+text", "degenerate_rate")) + " |")
        lines.append("")
    return "\n".join(lines)


def vanilla_summary(model: Path, bundle, out: Path, max_records: int) -> dict:
    """The vanilla model's evaluation summary at OUT/vanilla (computed once, then reused)."""
    from mmunlearn.eval.evaluator import EvalConfig, evaluate, write_results
    from mmunlearn.models.loader import load_model

    out.mkdir(parents=True, exist_ok=True)
    path = out / "vanilla" / "eval" / "summary.json"
    if not path.is_file():
        summary, details = evaluate(load_model(model), bundle, EvalConfig(max_records_per_split=max_records,
                                                                          progress=False))
        write_results(path.parent, summary, details)
    return json.loads(path.read_text())


def publish(text: str, path: Path, readme: Path | None, marker: str) -> int:
    """Write the tables to PATH, print them, and put them into README's MARKER section when asked."""
    from mmunlearn.data.store import atomic_write_text
    from mmunlearn.report.tables import update_readme

    atomic_write_text(path, text + "\n")
    print(text)
    if readme:
        try:
            update_readme(readme, marker, text)
        except ValueError as err:  # no markers: one line, exit 2
            print(f"error: {readme}: {err}", file=sys.stderr)
            return 2
    return 0


def argument_parser(doc: str, only: str, max_records: int) -> argparse.ArgumentParser:
    """The options the seed-method benchmarks share (model, data, run folder, groups, evaluation, README)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--forget-split", default="forget_10")
    ap.add_argument("--only", default=only)
    ap.add_argument("--max-records", type=int, default=max_records, help="evaluation subsample per split (0: all)")
    ap.add_argument("--readme", type=Path, default=None,
                    help="write the tables between this file's markers (published: docs/methods/seed-ablations.md)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser(__doc__, only="vkd,smfa,viker", max_records=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from mmunlearn.data.store import load_data

    bundle = load_data(args.data, args.forget_split)
    vanilla = vanilla_summary(args.model, bundle, args.out, args.max_records)
    results = {}
    for group in args.only.split(","):
        for name, method, overrides, method_args in VARIANTS[group.strip()]:
            results[name] = run_variant(name, method, overrides, method_args, args, bundle, args.out)
    header = (f"_Generated by `benchmarks/seed_ablations.py` (data {args.data.name}, {args.forget_split}, seed {args.seed}"
              f"{', eval subsample ' + str(args.max_records) if args.max_records else ''})._\n\n")
    text = header + tables(results, vanilla)
    return publish(text, args.out / "ablations.md", args.readme, "ablations")


if __name__ == "__main__":
    raise SystemExit(main())
