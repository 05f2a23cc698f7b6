"""`gflowvlm reproduce --models-from`: a seed's aligned tiny VLM is copied from another grid, never trusted blindly.

A model qualifies only when it is finished (alignment.json) and its built-by.json names exactly the make-tiny-model
arguments this recipe would run; the copy records where it came from, and the report says so.
"""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from gflowvlm.cli import main as cli_main
from gflowvlm.reproduce import runner
from gflowvlm.reproduce.recipe import load_recipe

from test_reproduce import ROOT, place_model, tiny_recipe


def _finished_model(out: Path, seed: int, arguments: list[str], commit: str = "abc1234") -> Path:
    """A stand-in tiny-vlm folder: the files reuse copies, a finished alignment.json, a built-by.json."""
    model = runner.tiny_model_directory(out, seed)
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights of seed %d" % seed)
    (model / "config.json").write_text("{}")
    (model / "alignment.json").write_text(json.dumps({
        "accuracy": 0.96, "per_env": {"gflowvlm/NumberLine-v0": {"accuracy": 0.96}}, "steps": 450,
        "seconds": 100.0, "reached_target": True, "target_accuracy": 0.95}))
    (model / runner.BUILT_BY_FILE).write_text(json.dumps({"arguments": arguments, "commit": commit}))
    return model


@pytest.fixture()
def recipe(tmp_path):
    return load_recipe(tiny_recipe(tmp_path))


def test_a_model_built_with_the_same_arguments_is_copied_with_its_origin(tmp_path, recipe):
    source = _finished_model(tmp_path / "baseline", 0, runner.tiny_model_arguments(recipe, 0))
    logged = []
    assert runner.reuse_tiny_model(recipe, tmp_path / "ablation", 0, [tmp_path / "baseline"], logged.append) == source
    copy = runner.tiny_model_directory(tmp_path / "ablation", 0)
    assert (copy / "model.safetensors").read_bytes() == b"weights of seed 0"
    assert runner.built_by(copy) == {"arguments": runner.tiny_model_arguments(recipe, 0), "commit": "abc1234",
                                     "reused_from": str(source.resolve())}
    summary = runner.alignment_summary(tmp_path / "ablation", 0)
    assert summary["accuracy"] == 0.96 and summary["reused_from"] == str(source.resolve())
    assert summary["built_at"] == "abc1234" and "reused the tiny VLM" in logged[0]
    assert "reused_from" not in runner.alignment_summary(tmp_path / "baseline", 0)  # built there, not copied
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".tiny-vlm.")]  # no staging left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o777 & ~umask  # readable as a built one is, not mkdtemp's 0700
    # A copy of the copy still names the grid whose weights they are.
    assert runner.reuse_tiny_model(recipe, tmp_path / "third", 0, [tmp_path / "ablation"], logged.append) == copy
    assert runner.built_by(runner.tiny_model_directory(tmp_path / "third", 0))["reused_from"] == str(source.resolve())


def test_a_model_already_finished_in_the_grid_is_kept(tmp_path, recipe):
    _finished_model(tmp_path / "baseline", 0, runner.tiny_model_arguments(recipe, 0))
    mine = _finished_model(tmp_path / "grid", 0, runner.tiny_model_arguments(recipe, 0))
    (mine / "model.safetensors").write_bytes(b"built here")
    assert runner.reuse_tiny_model(recipe, tmp_path / "grid", 0, [tmp_path / "baseline"], lambda _: None) is None
    assert (mine / "model.safetensors").read_bytes() == b"built here"


def test_another_seed_other_arguments_or_no_record_are_not_reused(tmp_path, recipe):
    theirs = runner.tiny_model_arguments(recipe, 0)
    _finished_model(tmp_path / "seed-only", 1, runner.tiny_model_arguments(recipe, 1))  # seed 1's, not seed 0's
    other = _finished_model(tmp_path / "other", 0, theirs[:-2] + ["--align", "gflowvlm/Blackjack-v0"])
    unrecorded = _finished_model(tmp_path / "old", 0, theirs)
    (unrecorded / runner.BUILT_BY_FILE).unlink()  # grids built before built-by.json existed
    unfinished = _finished_model(tmp_path / "half", 0, theirs)
    (unfinished / "alignment.json").unlink()  # an alignment still running (or killed) there
    logged = []
    sources = [tmp_path / name for name in ("seed-only", "other", "old", "half", "missing")]
    assert runner.reuse_tiny_model(recipe, tmp_path / "new", 0, sources, logged.append) is None
    assert not runner.tiny_model_directory(tmp_path / "new", 0).exists()  # built as usual, later
    assert any("built with other arguments" in line and str(other) in line for line in logged)
    assert any("no readable built-by.json" in line for line in logged) and len(logged) == 2


@pytest.mark.parametrize("record", ["{not json", "[1, 2]", json.dumps({"arguments": "--seed 0", "commit": "x"}),
                                    json.dumps({"arguments": ["--seed", 0], "commit": "x"}),
                                    json.dumps({"arguments": [], "commit": None}),
                                    json.dumps({"arguments": [], "commit": "abc1234", "reused_from": 3}),
                                    json.dumps({"arguments": [], "commit": "abc1234\n\n# a heading in the report"})])
def test_a_malformed_built_by_record_is_untrusted(tmp_path, record):
    (tmp_path / runner.BUILT_BY_FILE).write_text(record)
    assert runner.built_by(tmp_path) is None


def _spoil_link(source: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("outside the model")
    (source / "tokenizer.json").symlink_to(tmp_path / "secret")


def _spoil_folder_link(source: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    source.rename(elsewhere)
    source.symlink_to(elsewhere, target_is_directory=True)


@pytest.mark.parametrize("spoil, why", [
    (_spoil_link, "links or folders"),
    (_spoil_folder_link, "it is a link"),
    (lambda source, _: (source / "sub").mkdir(), "links or folders"),
    (lambda source, _: (source / "pytorch_model.bin").write_bytes(b"a pickle"), "pytorch_model.bin"),
    (lambda source, _: (source / "modeling_tiny.py").write_text("import os"), "modeling_tiny.py"),
    (lambda source, _: (source / "model.safetensors").unlink(), "no config.json or safetensors weights"),
    (lambda source, _: (source / "config.json").unlink(), "no config.json or safetensors weights"),
    (lambda source, _: (source / "alignment.json").write_text("{}"), "alignment.json is malformed"),
], ids=["file link", "folder link", "subfolder", "pickle", "code", "no weights", "no config", "bad alignment"])
def test_a_model_folder_that_is_not_what_make_tiny_model_writes_is_not_copied(tmp_path, recipe, spoil, why):
    source = _finished_model(tmp_path / "baseline", 0, runner.tiny_model_arguments(recipe, 0))
    spoil(source, tmp_path)
    logged = []
    assert runner.reuse_tiny_model(recipe, tmp_path / "new", 0, [tmp_path / "baseline"], logged.append) is None
    assert why in logged[0] and not runner.tiny_model_directory(tmp_path / "new", 0).exists()


def test_a_copy_that_fails_is_logged_and_leaves_nothing(tmp_path, recipe, monkeypatch):
    _finished_model(tmp_path / "baseline", 0, runner.tiny_model_arguments(recipe, 0))

    def disk_full(*_):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner.shutil, "copyfileobj", disk_full)
    logged = []
    assert runner.reuse_tiny_model(recipe, tmp_path / "new", 0, [tmp_path / "baseline"], logged.append) is None
    assert "copy failed: [Errno 28] No space left on device" in logged[0]
    seed_folder = tmp_path / "new" / "seed0"
    assert not runner.tiny_model_directory(tmp_path / "new", 0).exists() and not list(seed_folder.iterdir())


def test_a_half_built_model_is_replaced_by_the_copy(tmp_path, recipe):
    _finished_model(tmp_path / "baseline", 0, runner.tiny_model_arguments(recipe, 0))
    half = runner.tiny_model_directory(tmp_path / "new", 0)
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"half written")
    assert runner.reuse_tiny_model(recipe, tmp_path / "new", 0, [tmp_path / "baseline"], lambda _: None)
    assert (half / "model.safetensors").read_bytes() == b"weights of seed 0" and (half / "alignment.json").is_file()


def test_a_built_model_records_the_arguments_it_was_built_with(tmp_path, monkeypatch):
    seen = []

    def fake_make_tiny_model(argv):
        seen.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        assert runner.built_by(out) is not None  # recorded before the build: a finished model always has it
        (out / "alignment.json").write_text("{}")
        return 0

    monkeypatch.setattr("gflowvlm.model.tiny_vlm.make_tiny_model_main", fake_make_tiny_model)
    recipe = load_recipe(ROOT / "configs" / "reproduce" / "points24.yaml")
    runner.build_tiny_model(recipe, tmp_path / "m", 2)
    assert seen[0] == ["--out", str(tmp_path / "m"), "--force", *runner.tiny_model_arguments(recipe, 2)]
    record = runner.built_by(tmp_path / "m")
    assert record["arguments"] == runner.tiny_model_arguments(recipe, 2) and record["reused_from"] is None
    assert "--seed" in record["arguments"] and record["arguments"][record["arguments"].index("--seed") + 1] == "2"


def test_a_grid_runs_on_the_models_of_another_and_its_report_says_so(tmp_path, tiny_vlm_dir, monkeypatch, capsys):
    recipe_file = str(tiny_recipe(tmp_path))
    baseline = tmp_path / "baseline"
    place_model(baseline, tiny_vlm_dir)  # as if built there by make-tiny-model, with these arguments
    model = runner.tiny_model_directory(baseline, 0)
    arguments = runner.tiny_model_arguments(load_recipe(recipe_file), 0)
    (model / runner.BUILT_BY_FILE).write_text(json.dumps({"arguments": arguments, "commit": "0123abc"}))

    def no_build(*_):
        raise AssertionError("the tiny VLM was rebuilt, not reused")

    monkeypatch.setattr(runner, "build_tiny_model", no_build)
    out = tmp_path / "ablation"
    argv = ["reproduce", "--recipe", recipe_file, "--out", str(out), "--methods", "sft", "--models-from",
            str(tmp_path / "nothing-here-yet"), "--models-from", str(baseline)]
    (tmp_path / "nothing-here-yet").mkdir()
    assert cli_main(argv) == 0, capsys.readouterr().err
    copied = runner.tiny_model_directory(out, 0)
    for name in ("model.safetensors", "config.json", "alignment.json"):
        assert (copied / name).read_bytes() == (model / name).read_bytes()
    results = json.loads((out / "results.json").read_text())
    assert results["alignment"]["0"]["reused_from"] == str(model.resolve())
    assert results["alignment"]["0"]["built_at"] == "0123abc"
    assert f"Reused, not rebuilt: seed 0 from {model.resolve()} (built at 0123abc)." in (out / "report.md").read_text()
    assert {c["method"] for c in results["cells"]} == {"random", "oracle", "sft"}


def test_bad_models_from_folders_are_one_line_errors(tmp_path, capsys):
    recipe = str(ROOT / "configs" / "reproduce" / "numberline.yaml")
    (tmp_path / "o").mkdir()
    for source, message in [(tmp_path / "absent", "is not a directory"), (tmp_path / "o", "is --out itself")]:
        assert cli_main(["reproduce", "--recipe", recipe, "--out", str(tmp_path / "o"), "--models-from",
                         str(source)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
