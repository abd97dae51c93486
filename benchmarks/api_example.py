"""The README's Python API block, written from examples/api_quickstart.py (the file a test runs).

    python benchmarks/api_example.py --readme README.md

The block between `<!-- api-example:start -->` and `<!-- api-example:end -->` becomes the file as a
```python block, so the README shows exactly the code that is tested.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "api_quickstart.py"


def block(example: Path = EXAMPLE) -> str:
    return "```python\n" + example.read_text().rstrip("\n") + "\n```"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--readme", default="README.md", help="the file whose api-example block is rewritten")
    args = ap.parse_args(argv)
    from mmunlearn.report.tables import update_readme

    try:
        update_readme(Path(args.readme), "api-example", block())
    except (OSError, ValueError) as err:
        print(f"error: {args.readme}: {err}", file=sys.stderr)
        return 2
    print(f"api-example → {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
