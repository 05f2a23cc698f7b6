"""Running a recipe's grid: per seed the tiny model, its SFT data and SFT run, then every method from that SFT model,
then every evaluation; each finished cell is recorded so a killed grid redoes only what was not finished.

Layout under --out (every run directory is an ordinary `gflowvlm train` output, so `gflowvlm eval`/`compare` work on
it; a cell is done when its cell.json exists, written last and atomically):

    DIR/seed0/tiny-vlm/            the aligned tiny VLM (alignment.json; built-by.json: its make-tiny-model
                                   arguments and commit, and where it was reused from)
    DIR/seed0/data/sft.jsonl       oracle SFT data (+ sft.jsonl.done once complete)
    DIR/seed0/<method>/run/        the method's run with its eval_<split>.json, div_<split>.json
    DIR/seed0/<method>/cell.json   written last: the cell is done
    DIR/seed0/random|oracle/       the reference rows on the same tasks
    DIR/results.json, report.md, *.png

At one commit a seed's tiny VLM is decided by its `make-tiny-model` arguments, and aligning it is the most expensive
step of many grids (Points24: 40-65 min per seed on two CPU cores): `models_from` names other grids' output folders
whose seed's model, built with the same arguments, is copied instead of rebuilt (an ablation grid shares its
baseline's models). Defaults that live in code (an env's alignment recipe) can change between commits, so the copy
records the grid it came from and the commit it was built at, and the report says so.

A training stage interrupted mid-run resumes from its last checkpoint (resume=true); the budget of environment
steps, not a number of iterations, ends every method's training, so methods that collect longer episodes do not
get more experience.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gflowvlm.errors import UserError
from gflowvlm.evaluation import write_json
from gflowvlm.reproduce.recipe import REFERENCE_ROWS, SFT_METHOD, Recipe
from gflowvlm.reproduce.results import git_commit

CELL_FILE = "cell.json"
BUILT_BY_FILE = "built-by.json"  # in a tiny-vlm folder: {"arguments": [...], "commit": ..., "reused_from": ...}


@dataclass(frozen=True)
class Cell:
    seed: int
    method: str  # a recipe method, or "random" / "oracle"

    def directory(self, out: Path) -> Path:
        return out / f"seed{self.seed}" / self.method


def grid(recipe: Recipe, seeds: Sequence[int], methods: Sequence[str]) -> list[Cell]:
    """Reference rows first (cheap, and they frame every later number), then the methods, seed by seed."""
    return [Cell(seed, name) for seed in seeds for name in (*REFERENCE_ROWS, *methods)]


def run_grid(recipe: Recipe, out: Path, seeds: Sequence[int], methods: Sequence[str],
             on_cell_done: Callable[[], None] = lambda: None, log: Callable[[str], None] = print,
             models_from: Sequence[Path] = ()) -> list[dict]:
    """Run every unfinished cell; returns the cell records (finished ones, in grid order). `models_from`: other
    grids' output folders to copy a seed's tiny VLM from when it was built with the same arguments."""
    cells = grid(recipe, seeds, methods)
    git_commit()  # now, before any cell: the commit of the code this process imported (cached)
    todo = [cell for cell in cells if not (cell.directory(out) / CELL_FILE).is_file()]
    for seed in sorted({cell.seed for cell in todo if cell.method not in REFERENCE_ROWS}):
        if models_from and not (tiny_model_directory(out, seed) / "alignment.json").is_file():
            reuse_tiny_model(recipe, out, seed, models_from, log)
    log(f"{recipe.name}: {len(cells)} cells ({len(seeds)} seeds x {len(methods)} methods + random, oracle), "
        f"{len(cells) - len(todo)} already done")
    spent: list[float] = []
    for number, cell in enumerate(todo, 1):
        started = time.perf_counter()
        record = run_cell(recipe, out, cell, log)
        seconds = time.perf_counter() - started
        spent.append(seconds)
        left = len(todo) - number
        # Reference rows take seconds and model cells minutes: the estimate averages model cells only, and leaves
        # out SFT cells (they carry the seed's tiny model and SFT data) once another method has finished.
        model_cells = ([s for s, c in zip(spent, todo) if c.method not in (*REFERENCE_ROWS, SFT_METHOD)]
                       or [s for s, c in zip(spent, todo) if c.method not in REFERENCE_ROWS] or spent)
        remaining = sum(1 for c in todo[number:] if c.method not in REFERENCE_ROWS) * (sum(model_cells) /
                                                                                     len(model_cells))
        log(f"[{len(cells) - len(todo) + number}/{len(cells)}] {recipe.name} seed {cell.seed} {cell.method}: "
            f"done in {seconds:.0f} s ({_summary(record)}); {left} cells left, about {remaining / 60:.0f} min")
        on_cell_done()
    return [load_cell(cell.directory(out)) for cell in cells if (cell.directory(out) / CELL_FILE).is_file()]


def run_cell(recipe: Recipe, out: Path, cell: Cell, log: Callable[[str], None]) -> dict:
    directory = cell.directory(out)
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if cell.method in REFERENCE_ROWS:
        evaluations = _reference_evaluations(recipe, cell, directory)
        env_steps, curve, stage_seconds = 0, [], {}
    else:
        stage_seconds = prepare_seed(recipe, out, cell.seed, log)
        run_dir = _train(recipe, out, cell, log)
        evaluations = _model_evaluations(recipe, cell, run_dir, run_dir)  # beside the run: `compare` finds them
        env_steps, curve = _training_record(run_dir)
    record = {"env": recipe.env.id, "method": cell.method, "seed": cell.seed, "env_steps": env_steps,
              "seconds": time.perf_counter() - started, "evaluations": evaluations, "curve": curve,
              "seed_stages_seconds": stage_seconds, "torch_threads": _torch_threads(), "commit": git_commit()}
    write_json(record, directory / CELL_FILE)
    return record


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()  # a cell's numbers depend on it (gflowvlm/threads.py)


# ----- per seed: the model that sees, its SFT data --------------------------------------------------------------
def prepare_seed(recipe: Recipe, out: Path, seed: int, log: Callable[[str], None]) -> dict[str, float]:
    """Build what every method of `seed` shares (once): the aligned tiny VLM and the SFT data. Returns seconds."""
    seconds: dict[str, float] = {}
    model_dir = tiny_model_directory(out, seed)
    if not (model_dir / "alignment.json").is_file():
        started = time.perf_counter()
        build_tiny_model(recipe, model_dir, seed)
        seconds["tiny_model"] = time.perf_counter() - started
        log(f"seed {seed}: tiny VLM aligned on {', '.join(recipe.tiny_model.align)} in {seconds['tiny_model']:.0f} s")
    data = sft_data_path(out, seed)
    marker = data.with_name(data.name + ".done")
    if not marker.is_file():
        started = time.perf_counter()
        from gflowvlm.sft_data import write_sft_data

        config = recipe.shared_config()
        spec = recipe.sft_data
        kwargs = dict(recipe.env.kwargs)
        if recipe.expert_strategy:
            kwargs["strategy"] = recipe.expert_strategy
        write_sft_data(recipe.env.id, data, spec.samples, split=spec.split, done_fraction=spec.done_fraction,
                       image_size=recipe.env.image_size, seed=seed, prompt_config=config.prompt, env_kwargs=kwargs,
                       progress=False, caption_samples=spec.caption_samples,
                       caption=spec.caption or recipe.tiny_model.align_caption)
        seconds["sft_data"] = time.perf_counter() - started
        write_json({"samples": spec.samples, "seconds": seconds["sft_data"]}, marker)
    return seconds


def tiny_model_directory(out: Path, seed: int) -> Path:
    return out / f"seed{seed}" / "tiny-vlm"


def tiny_model_arguments(recipe: Recipe, seed: int) -> list[str]:
    """The `make-tiny-model` arguments of `seed`'s tiny VLM, less --out: what decides the model it builds."""
    from gflowvlm.model.tiny_vlm import make_tiny_model_arguments

    spec = recipe.tiny_model  # align_steps None: the envs' own alignment recipes (env_alignment.py)
    return make_tiny_model_arguments(spec.family, recipe.env.image_size, seed, spec.align, spec.align_steps,
                                     spec.align_target, spec.align_caption, spec.align_confirm)


def write_built_by(model_dir: Path, arguments: list[str]) -> None:
    """`model_dir/built-by.json`: the make-tiny-model arguments and the commit a model is built with."""
    write_json({"arguments": arguments, "commit": git_commit()}, model_dir / BUILT_BY_FILE)


def build_tiny_model(recipe: Recipe, model_dir: Path, seed: int) -> None:
    """`gflowvlm make-tiny-model --align ...`: the same command a user runs (a half-built directory is rebuilt)."""
    from gflowvlm.model.tiny_vlm import make_tiny_model_main

    arguments = tiny_model_arguments(recipe, seed)
    # First: alignment.json, written last, marks the model finished, and a finished model must carry its record.
    write_built_by(model_dir, arguments)
    code = make_tiny_model_main(["--out", str(model_dir), "--force", *arguments])
    if code != 0 or not (model_dir / "alignment.json").is_file():
        raise UserError(f"building the tiny VLM in {model_dir} failed (exit {code})")


# A reused model folder holds only what make-tiny-model writes: weights as safetensors, JSON configs, the chat
# template, tokenizer text files. Never a pickle or code (the loader would run neither, but a copy is not a review).
REUSABLE_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt")
COMMIT_PATTERN = re.compile(r"(?:[0-9a-f]{7,40}(?:-dirty)?|unknown)")
COPY_LIMIT_BYTES = 4 << 30  # a tiny VLM is megabytes: a larger folder is not one


def built_by(model_dir: Path) -> dict | None:
    """A tiny-vlm folder's built-by.json, parsed as untrusted data: None if absent or not of the expected shape."""
    try:
        data = json.loads((model_dir / BUILT_BY_FILE).read_text(encoding="utf-8"))
        arguments, commit, source = data["arguments"], data["commit"], data.get("reused_from")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(arguments, list) and all(isinstance(a, str) for a in arguments) and isinstance(commit, str)
            and COMMIT_PATTERN.fullmatch(commit) and (source is None or isinstance(source, str))):
        return None
    return {"arguments": arguments, "commit": commit, "reused_from": source}


def reuse_tiny_model(recipe: Recipe, out: Path, seed: int, sources: Sequence[Path],
                     log: Callable[[str], None] = print) -> Path | None:
    """Copy `seed`'s tiny VLM from the first of `sources` (other grids' --out folders) that holds one built with
    this recipe's make-tiny-model arguments; returns the folder copied from, or None (then it is built as usual).
    A model already finished in `out` is kept.

    Only a finished model qualifies: a readable alignment.json, config.json, safetensors weights, and a
    built-by.json naming exactly these arguments. Only plain files with the suffixes make-tiny-model writes are
    copied, each opened without following links. The copy is assembled beside the target and renamed into place,
    so an interrupted copy leaves no half model; a copy that fails is logged and the model is built instead."""
    wanted = tiny_model_arguments(recipe, seed)
    target = tiny_model_directory(out, seed)
    if (target / "alignment.json").is_file():
        return None
    for source_out in sources:
        source = tiny_model_directory(Path(source_out), seed)
        try:
            if not (source / "alignment.json").is_file():
                continue
            problem = _unreusable(source, seed, wanted)
            if problem is None:
                record = built_by(source)
                _copy_model(source, target, {**record, "reused_from": record["reused_from"] or str(source.resolve())})
        except OSError as error:
            problem = f"copy failed: {' '.join(str(error).split())}"
        if problem is not None:
            log(f"seed {seed}: not reusing the tiny VLM in {source} ({problem})")
            continue
        log(f"seed {seed}: reused the tiny VLM of {source} (built at {record['commit']}), not rebuilt")
        return source
    return None


def _unreusable(source: Path, seed: int, wanted: list[str]) -> str | None:
    """Why the finished-looking model folder `source` must not be copied, or None."""
    if any(folder.is_symlink() for folder in (source, source.parent)):
        return "it is a link"
    record = built_by(source)
    if record is None:
        return "no readable built-by.json"
    if record["arguments"] != wanted:
        return "built with other arguments"
    if alignment_summary(source.parent.parent, seed) is None:
        return "its alignment.json is malformed"
    entries = list(source.iterdir())
    if any(entry.is_symlink() or not entry.is_file() for entry in entries):
        return "it holds links or folders"
    foreign = [entry.name for entry in entries if not entry.name.lower().endswith(REUSABLE_SUFFIXES)]
    if foreign:
        return f"it holds {foreign[0]}, which make-tiny-model does not write"
    if not (source / "config.json").is_file() or not any(e.name.endswith(".safetensors") for e in entries):
        return "no config.json or safetensors weights"
    if sum(entry.stat().st_size for entry in entries) > COPY_LIMIT_BYTES:
        return "larger than any tiny VLM"
    return None


def _copy_model(source: Path, target: Path, record: dict) -> None:
    """Copy `source`'s plain files to `target` through a staging folder renamed into place; `record` becomes the
    copy's built-by.json. Each file is opened without following a link, so one swapped in after the checks fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(".tiny-vlm.*"):  # staging left by a killed copy
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tiny-vlm."))
    try:
        for entry in source.iterdir():
            if entry.name == BUILT_BY_FILE:
                continue
            descriptor = os.open(entry, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(descriptor, "rb") as reader:
                if not stat.S_ISREG(os.fstat(reader.fileno()).st_mode):
                    raise OSError(f"{entry} is not a plain file")
                with open(staging / entry.name, "wb") as writer:
                    shutil.copyfileobj(reader, writer)
        write_json(record, staging / BUILT_BY_FILE)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from the grid's other readers
        if target.exists():  # a half-built model of an interrupted build
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def alignment_summary(out: Path, seed: int) -> dict | None:
    """What seed's tiny VLM read, from its alignment.json (parsed as untrusted data; None if absent or malformed),
    and, for a model copied from another grid, where from and the commit it was built at."""
    model_dir = tiny_model_directory(out, seed)
    try:
        data = json.loads((model_dir / "alignment.json").read_text(encoding="utf-8"))
        per_env = {str(env): float(entry["accuracy"]) for env, entry in data["per_env"].items()}
        summary = {"accuracy": float(data["accuracy"]), "per_env": per_env, "steps": int(data["steps"]),
                   "seconds": float(data["seconds"]), "reached_target": bool(data["reached_target"]),
                   "target_accuracy": None if data.get("target_accuracy") is None else float(data["target_accuracy"])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    record = built_by(model_dir)
    if record is not None and record["reused_from"]:
        summary.update(reused_from=record["reused_from"], built_at=record["commit"])
    return summary


def sft_data_path(out: Path, seed: int) -> Path:
    return out / f"seed{seed}" / "data" / "sft.jsonl"


# ----- training -----------------------------------------------------------------------------------------------
def run_directory(out: Path, seed: int, method: str) -> Path:
    return out / f"seed{seed}" / method / "run"


def _train(recipe: Recipe, out: Path, cell: Cell, log: Callable[[str], None]) -> Path:
    """Train the cell's method (SFT from the tiny VLM; every other method from this seed's SFT model)."""
    seed_dir = out / f"seed{cell.seed}"
    if cell.method == SFT_METHOD:
        harness = {"sft": {"data": str(sft_data_path(out, cell.seed))},
                   "model": {"name_or_path": str(seed_dir / "tiny-vlm")}}
    else:
        sft_final = _ensure_sft(recipe, out, cell.seed, log)
        # The SFT anchor (when a method sets anchor.coef) holds the text to the start's own SFT data.
        harness = {"model": {"name_or_path": str(sft_final)}, "max_env_steps": recipe.budget.env_steps,
                   "anchor": {"data": str(sft_data_path(out, cell.seed))}}
    run_dir = run_directory(out, cell.seed, cell.method)
    config = recipe.run_config(cell.method, harness, output_dir=str(run_dir), seed=cell.seed)
    if (run_dir / "final").is_dir():
        return run_dir
    from gflowvlm.trainer import Trainer  # deferred: torch/transformers

    config.resume = True  # a stage killed mid-run continues from its last checkpoint
    config.logging.progress = False
    started = time.perf_counter()
    Trainer(config).train()
    log(f"  seed {cell.seed} {cell.method}: trained in {time.perf_counter() - started:.0f} s")
    return run_dir


def _ensure_sft(recipe: Recipe, out: Path, seed: int, log: Callable[[str], None]) -> Path:
    run_dir = run_directory(out, seed, SFT_METHOD)
    if not (run_dir / "final").is_dir():
        _train(recipe, out, Cell(seed, SFT_METHOD), log)
    return run_dir / "final"


def _training_record(run_dir: Path) -> tuple[int, list[list[float]]]:
    """(environment steps at the end, [[env steps, training success rate, training parse rate], ...]) from
    metrics.jsonl; the parse rate is None where an iteration did not log one (SFT collects nothing)."""
    env_steps, curve = 0, []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("env_steps"), (int, float)):
                env_steps = int(record["env_steps"])
                rate, parsed = record.get("success_rate"), record.get("parse_rate")
                if isinstance(rate, (int, float)):
                    curve.append([env_steps, float(rate),
                                  float(parsed) if isinstance(parsed, (int, float)) else None])
    return env_steps, curve


# ----- evaluation ---------------------------------------------------------------------------------------------
def _model_evaluations(recipe: Recipe, cell: Cell, run_dir: Path, directory: Path) -> dict[str, dict]:
    from gflowvlm.evaluation import evaluate_checkpoint

    spec = recipe.evaluation
    results = {}
    for split in spec.splits:
        target = directory / f"eval_{split}.json"
        if not target.is_file():
            evaluate_checkpoint(run_dir, recipe.env.id, split, episodes=spec.episodes, greedy=spec.greedy,
                                seed=cell.seed, num_envs=spec.num_envs, out=target, transcripts=2,
                                unparseable=spec.unparseable, max_steps=spec.max_steps.get(split),
                                env_kwargs=spec.env_kwargs.get(split))
        result = json.loads(target.read_text(encoding="utf-8"))
        if spec.diversity_k:
            div_target = directory / f"div_{split}.json"
            if not div_target.is_file():
                k = spec.diversity_k
                evaluate_checkpoint(run_dir, recipe.env.id, split, episodes=k * spec.diversity_tasks,
                                    samples_per_task=k, temperature=spec.diversity_temperature, seed=cell.seed,
                                    num_envs=max(k, spec.num_envs // k * k), out=div_target, transcripts=0,
                                    unparseable=spec.unparseable, max_steps=spec.max_steps.get(split),
                                    env_kwargs=spec.env_kwargs.get(split))
            result["diversity"] = json.loads(div_target.read_text(encoding="utf-8"))
        results[split] = result
    return results


def _reference_evaluations(recipe: Recipe, cell: Cell, directory: Path) -> dict[str, dict]:
    spec = recipe.evaluation
    results = {}
    for split in spec.splits:
        target = directory / f"eval_{split}.json"
        config = recipe.shared_config()
        config.env.kwargs.update(spec.env_kwargs.get(split) or {})
        if not target.is_file():
            write_json(_reference_result(recipe, cell, config, split), target)
        result = json.loads(target.read_text(encoding="utf-8"))
        if spec.diversity_k:  # the same Div@K protocol as the models': K episodes of each of diversity_tasks tasks
            div_target = directory / f"div_{split}.json"
            if not div_target.is_file():
                write_json(_reference_result(recipe, cell, config, split, spec.diversity_k), div_target)
            result["diversity"] = json.loads(div_target.read_text(encoding="utf-8"))
        results[split] = result
    return results


def _reference_result(recipe: Recipe, cell: Cell, config, split: str, k: int = 1) -> dict:
    from gflowvlm.reference_policies import evaluate_oracle, evaluate_random

    spec = recipe.evaluation
    episodes = spec.episodes if k == 1 else k * spec.diversity_tasks
    if cell.method == "random":
        return evaluate_random(config, split, episodes, cell.seed, spec.max_steps.get(split),
                               num_envs=max(k, spec.num_envs // k * k), samples_per_task=k)
    return evaluate_oracle(config, split, episodes, cell.seed, spec.max_steps.get(split),
                           strategy=recipe.expert_strategy, samples_per_task=k)


# ----- files --------------------------------------------------------------------------------------------------
def load_cell(directory: Path) -> dict:
    path = directory / CELL_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{path} is unreadable: delete it to rerun the cell") from None
    if not isinstance(record, dict) or not isinstance(record.get("evaluations"), dict):
        raise UserError(f"{path} is not a cell record: delete it to rerun the cell")
    run_dir = directory / "run"
    if (run_dir / "metrics.jsonl").is_file():  # the curve is derived data: read it afresh from the run's log
        record["curve"] = _training_record(run_dir)[1]
    return record


def _summary(record: dict) -> str:
    parts = [f"{split} {100 * result['success_rate']:.1f}%" for split, result in record["evaluations"].items()]
    return ", ".join(parts)
