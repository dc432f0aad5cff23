"""Extractive summary titles before and after the reason-phrase titles (issue 16, point 7),
on the call corpus in tests/helpers/postcall/summary_corpus.py.

"Before" is the extractive summariser of a git revision (default 9148ac9, the last one with
keyword-list titles), loaded from ``git show <rev>:helpers/postcall/summarize.py``; "after" is the
working tree's. Prints a Markdown table (what docs/SUMMARIES.md holds) and a tally of the
title checks the tests make. Usage, from the repository root:

    .venv/bin/python bench/summary_titles.py [--rev 9148ac9] [--limit 20] [--all]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.postcall.summarize import ExtractiveSummarizer  # noqa: E402
from tests.helpers.postcall.summary_corpus import CORPUS, title_problems  # noqa: E402


def old_module(rev: str) -> ModuleType:
    """helpers/postcall/summarize.py as it was at ``rev``, imported under another name."""
    source = subprocess.run(
        ["git", "show", f"{rev}:helpers/postcall/summarize.py"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "summarize_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("summarize_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="9148ac9", help="revision with the old titles")
    ap.add_argument("--limit", type=int, default=20, help="rows in the table")
    ap.add_argument("--all", action="store_true", help="every corpus call in the table")
    args = ap.parse_args()

    old = old_module(args.rev).ExtractiveSummarizer()
    new = ExtractiveSummarizer()
    rows = CORPUS if args.all else CORPUS[: args.limit]
    print("| call | kind | before (keyword list) | after (reason phrase) |")
    print("|---|---|---|---|")
    for call in rows:
        before = old.summarize(call["text"]).title
        after = new.summarize(call["text"]).title
        print(f"| {call['id']} | {call['kind']} | {cell(before)} | {cell(after)} |")
    print()
    failing = {"before": 0, "after": 0}
    for call in CORPUS:
        for label, summariser in (("before", old), ("after", new)):
            if title_problems(summariser.summarize(call["text"]).title, call["expect"]):
                failing[label] += 1
    print(f"Titles failing the checks in tests/helpers/postcall/test_summarize.py, "
          f"of {len(CORPUS)} calls: before {failing['before']}, after {failing['after']}.")


if __name__ == "__main__":
    main()
