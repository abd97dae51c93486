"""The documentation builds, names every command and method, and keeps its generated blocks.

`mkdocs build --strict` fails on a broken link or anchor, a page missing from the nav, or an API
reference (mkdocstrings `::: module`) that does not resolve. The name checks make a new CLI command or
a newly registered method fail here until a docs page names it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# Generated blocks and where their generator writes them (docs/benchmarks.md#regenerating-the-tables).
GENERATED = {
    README: ("bench", "api-example"),
    DOCS / "benchmarks.md": ("bench",),
    DOCS / "methods" / "seed-ablations.md": ("ablations", "sweep", "sweep-face"),
    DOCS / "concepts" / "tiny-models.md": ("memorisation",),
    DOCS / "scale.md": ("scale", "scale-gpu", "scale-fake", "mask-slices"),
    DOCS / "tuning.md": ("tune",),
}


def docs_text() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.rglob("*.md")))


def command_paths(command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command of a typer/click tree as its path of names ("attack", "rank"). Typer vendors
    its own click, so a group is recognised by its `commands`, not by class."""
    if isinstance(getattr(command, "commands", None), dict):
        out = []
        for name, sub in sorted(command.commands.items()):
            if not getattr(sub, "hidden", False):
                out += command_paths(sub, prefix + (name,))
        return out
    return [prefix]


def test_docs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    api = (site / "api" / "index.html").read_text()
    # the API page is generated from the docstrings, not empty headings
    for obj in ("mmunlearn.methods.base.registry", "mmunlearn.eval.metrics.truth_ratio",
                "mmunlearn.data.record.Record", "mmunlearn.report.tables.update_readme"):
        assert f'id="{obj}"' in api, obj


def test_every_cli_command_is_documented():
    from mmunlearn.cli import app

    paths = command_paths(typer.main.get_command(app))
    assert ("attack", "rank") in paths and ("unlearn",) in paths  # the walk reaches sub-apps
    text = docs_text()
    missing = ["mmunlearn " + " ".join(p) for p in paths
               if not re.search(r"mmunlearn " + re.escape(" ".join(p)) + r"(?![\w-])", text)]
    assert not missing, f"no docs page names these commands: {', '.join(missing)}"


def test_every_method_has_a_page():
    from mmunlearn.methods.base import registry

    nav = (ROOT / "mkdocs.yml").read_text()
    problems = []
    for name in registry():
        page = DOCS / "methods" / f"{name}.md"
        if not page.is_file():
            problems.append(f"{page.relative_to(ROOT)} is missing")
        elif f"`{name}`" not in page.read_text():
            problems.append(f"{page.relative_to(ROOT)} does not name `{name}`")
        elif f"methods/{name}.md" not in nav:
            problems.append(f"methods/{name}.md is not in mkdocs.yml's nav")
    assert not problems, "; ".join(problems)


@pytest.mark.parametrize("path", sorted(GENERATED, key=str), ids=lambda p: str(p.relative_to(ROOT)))
def test_generated_blocks_keep_their_markers(path):
    from mmunlearn.report.tables import replace_between_markers

    text = path.read_text()
    for name in GENERATED[path]:
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        assert text.count(start) == 1 and text.count(end) == 1, (path, name)
        assert text.index(start) < text.index(end), (path, name)
        replace_between_markers(text, name, "x")  # what the generator calls: it must find them


def test_readme_is_short_and_self_contained():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README has {len(lines)} lines"
    for path in [README, *DOCS.rglob("*.md")]:
        text = path.read_text()
        assert "shared/" not in text and "SPEC.md" not in text, f"{path} points outside the repository"


def test_readme_links_resolve():
    text = README.read_text()
    for target in re.findall(r"\]\(((?:docs/)[^)#\s]+)", text):
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"


def test_plot_tradeoff_draws_a_bench(tmp_path):
    spec = importlib.util.spec_from_file_location("plot_tradeoff", ROOT / "benchmarks" / "plot_tradeoff.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def cell(mean, std=0.0, n=1):
        return {"mean": mean, "std": std, "n": n}

    results = {"config": {"forget_split": "forget_10", "seeds": [0, 1]},
               "aggregated": [
                   {"method": "vanilla", "seeds": [None], "forget_it": cell(0.97), "retain_it": cell(0.97),
                    "forget_txt": cell(1.0), "retain_txt": cell(1.0)},
                   {"method": "ga", "seeds": [0, 1], "forget_it": cell(0.0, 0.0, 2), "retain_it": cell(0.1, 0.05, 2),
                    "forget_txt": cell(0.0, 0.0, 2), "retain_txt": cell(0.0, 0.0, 2)},
                   {"method": "partial", "seeds": [0], "forget_it": cell(0.5)},  # no retain column: skipped
               ]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = tmp_path / "img" / "tradeoff.png"
    assert module.main([str(tmp_path / "results.json"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p[0] for p in module.points(results["aggregated"], "forget_it", "retain_it")] == ["vanilla", "ga"]
    assert module.main([str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    # the identity frontier needs the attacks' name-rank columns: refused without them, drawn with them
    identity = tmp_path / "img" / "identity.png"
    assert module.main([str(tmp_path / "results.json"), "--out", str(out), "--identity-out", str(identity)]) == 2
    assert not identity.exists()
    results["aggregated"][1].update(rank_top5=cell(0.3, 0.1, 2), und_forget_unseen=cell(0.8, 0.05, 2),
                                    rank_median=cell(13.0, 2.0, 2), rank_strangers_median=cell(70.0, 3.0, 2))
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert module.main([str(tmp_path / "results.json"), "--out", str(out), "--identity-out", str(identity)]) == 0
    assert identity.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
