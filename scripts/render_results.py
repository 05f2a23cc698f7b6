"""Re-render every committed reproduction report from its results.json alone, or check that none is stale.

    .venv/bin/python scripts/render_results.py [--root results] [--check]

A report.md must say only what its results.json says: this renders report.md and the plots of each folder under
`--root` that holds a results.json with the current report code (results.json itself is left as it is: its
commit and command still name the run that wrote the numbers). `--check` writes nothing and exits 1, naming the
folders whose report.md differs from what their results.json renders to today.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gflowvlm.reproduce.report import markdown, write_report


def result_folders(root: Path) -> list[Path]:
    return sorted(path.parent for path in root.rglob("results.json"))


def load_results(folder: Path) -> dict:
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {folder / 'results.json'} is not readable JSON ({error})") from None
    if not isinstance(results, dict) or not isinstance(results.get("cells"), list):
        raise SystemExit(f"error: {folder / 'results.json'} is not a reproduction's results (no 'cells' list)")
    return results


def stale_reports(root: Path) -> list[Path]:
    """The folders under root whose report.md is missing or differs from the render of their results.json."""
    stale = []
    for folder in result_folders(root):
        report = folder / "report.md"
        text = report.read_text(encoding="utf-8") if report.is_file() else None
        if text != markdown(load_results(folder)):
            stale.append(folder)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("results"), help="folder searched for results.json")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a report.md is stale")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        print(f"error: {args.root} is not a folder", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_reports(args.root)
        for folder in stale:
            print(f"stale: {folder / 'report.md'} (re-render with scripts/render_results.py)")
        return 1 if stale else 0
    for folder in result_folders(args.root):
        written = write_report(load_results(folder), folder)
        print(f"{folder}: {', '.join(path.name for path in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
