"""The committed results folder says only what its results.json files say."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "render_results.py"


def render(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_every_committed_report_is_the_render_of_its_results_json():
    folders = sorted((ROOT / "results").rglob("results.json"))
    assert len(folders) >= 10  # the reproductions results/README.md cites
    done = render("--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_stale_report_is_named_and_re_rendered(tmp_path):
    folder = tmp_path / "results" / "numberline"
    folder.mkdir(parents=True)
    shutil.copy(ROOT / "results" / "tiny" / "numberline-weak-sft" / "results.json", folder / "results.json")
    before = (folder / "results.json").read_bytes()
    (folder / "report.md").write_text("| SFT | 100.0 |\n")  # a hand-written number
    done = render("--root", str(tmp_path / "results"), "--check")
    assert done.returncode == 1 and "stale:" in done.stdout and "numberline" in done.stdout
    assert render("--root", str(tmp_path / "results")).returncode == 0
    assert render("--root", str(tmp_path / "results"), "--check").returncode == 0
    report = (folder / "report.md").read_text()
    assert "| SFT | 100.0 |" not in report and "60.9 [50.7, 71.2]" in report  # SFT's mean from results.json
    assert (folder / "success_curves.png").stat().st_size > 0
    assert (folder / "results.json").read_bytes() == before  # the run's record is never rewritten


def test_unreadable_results_give_one_line_and_a_nonzero_exit(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    done = render("--root", str(tmp_path), "--check")
    assert done.returncode != 0 and done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr
    (tmp_path / "broken" / "results.json").write_text(json.dumps({"cells": "none"}))
    done = render("--root", str(tmp_path))
    assert done.returncode != 0 and "no 'cells' list" in done.stderr and "Traceback" not in done.stderr
    assert render("--root", str(tmp_path / "missing")).returncode == 2
