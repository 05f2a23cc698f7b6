"""Generate ALFWorld games in the official format and verify each one on the real engine.

`gflowvlm alfworld generate --out DIR --split train|id|ood --games N --seed S` writes N games under
`DIR/<split>/<task>-<Obj>-None-<Parent>-<floor plan>/<trial>/{game.tw-pddl,traj_data.json}`, the layout
AlfredTWEnv walks. Task types are dealt round-robin, so every requested type is generated. Each game is loaded
in textworld's PDDL engine, solved by fast-downward, and its plan replayed to a win before it is written; the
plan is stored as the game's walkthrough. Game i depends only on (seed, split, i): output is deterministic and
the same with any number of worker processes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from envs.alfworld import vocabulary as vocab
from envs.alfworld.engine import AlfworldMissingError
from envs.alfworld.pddl_writer import (GameSpec, PlacedObject, game_json, problem_text, sentence_templates,
                                       task_sentence, traj_json)
from envs.alfworld.planner import display_names, parse_problem, shared_planner
from envs.alfworld.scenes import SIZE_CLASSES, FloorPlan, location_id, thing_id
from envs.alfworld.splits import SPLITS, Pairing, split_choices

# Objects per game by floor-plan size class; "large" matches the official dataset (about 50 objects).
OBJECT_COUNTS = {"small": (2, 8), "medium": (10, 25), "large": (35, 55)}
# A generated game must be solvable well inside the 35-step horizon the paper uses.
MAX_PLAN_LENGTH = 30
MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class GenerationRequest:
    split: str
    seed: int
    task_types: tuple[str, ...] = vocab.TASK_TYPES
    size: str | None = None     # one of SIZE_CLASSES, or None for every size

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {list(SPLITS)}")
        unknown = [t for t in self.task_types if t not in vocab.TASK_TYPES]
        if unknown or not self.task_types:
            raise ValueError(f"unknown task type(s) {unknown}; choose from {list(vocab.TASK_TYPES)}")
        if self.size is not None and self.size not in SIZE_CLASSES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {list(SIZE_CLASSES)}")


def _place_objects(rng: random.Random, plan: FloorPlan, pairing: Pairing, target_count: int,
                   total: int) -> list[PlacedObject]:
    """`target_count` objects of the task's class and distractors up to `total`, each in a receptacle that can
    hold it, plus the floor plan's lamps."""
    receptacles = plan.receptacles
    kinds = [k for k in vocab.ROOM_OBJECTS[plan.room]
             if k != pairing.obj and any(vocab.can_contain(r.kind, k) for r in receptacles)]
    wanted = [pairing.obj] * target_count + [rng.choice(kinds) for _ in range(max(0, total - target_count))]
    objects, used = [], {r.id for r in receptacles}
    for number, kind in enumerate(wanted):
        # A target object never starts in a destination-type receptacle: the goal must not hold at the start.
        banned = pairing.partner if number < target_count and not pairing.is_look else None
        homes = [r for r in receptacles if r.kind != banned and vocab.can_contain(r.kind, kind)]
        home = rng.choice(homes)
        ident = None
        while ident is None or ident in used:
            ident = thing_id(kind, home.x + rng.uniform(-0.3, 0.3), home.y + rng.uniform(0.02, 0.2),
                             home.z + rng.uniform(-0.3, 0.3))
        used.add(ident)
        objects.append(PlacedObject(kind, ident, home.id, home.location))
    for lamp, host_id in plan.lamps:
        objects.append(PlacedObject(lamp.kind, lamp.id, host_id, lamp.location, portable=False))
    return objects


def _start_location(rng: random.Random, plan: FloorPlan) -> str:
    taken = {r.location for r in plan.receptacles}
    if rng.random() < 0.25:   # sometimes start facing a receptacle, mostly in the middle of the room
        return rng.choice(plan.receptacles).location
    while True:
        loc = location_id(round(rng.uniform(-plan.width / 2, plan.width / 2) / 0.25),
                          round(rng.uniform(-plan.depth / 2, plan.depth / 2) / 0.25), rng.randrange(4), 30)
        if loc not in taken:
            return loc


def sample_spec(request: GenerationRequest, index: int, attempt: int = 0) -> GameSpec:
    """Game `index` of a request (attempt > 0 redraws it after a rejected sample)."""
    # A string seed goes through sha512: independent streams per (seed, split, index, attempt).
    rng = random.Random(f"gflowvlm-alfworld:{request.seed}:{request.split}:{index}:{attempt}")
    task_type = request.task_types[index % len(request.task_types)]
    choices = split_choices(request.split, task_type, request.size)
    if not choices:
        raise ValueError(f"no floor plan of split {request.split!r} and size {request.size!r} can pose {task_type}")
    plan, pairings = rng.choice(choices)
    pairing = rng.choice(pairings)
    low, high = OBJECT_COUNTS[plan.size_class]
    target_count = rng.randint(2, 3) if task_type == "pick_two_obj_and_place" else rng.randint(1, 3)
    total = max(rng.randint(low, high), target_count)
    objects = _place_objects(rng, plan, pairing, target_count, total)
    sentence = task_sentence(pairing, rng.choice(sentence_templates(task_type)))
    return GameSpec(plan=plan, pairing=pairing, objects=objects, start_location=_start_location(rng, plan),
                    sentence=sentence, split=request.split, seed=request.seed, index=index)


def verify(spec: GameSpec) -> list[str] | None:
    """The planner's walkthrough, replayed to a win on the engine, if the goal does not hold at the start and
    the plan fits MAX_PLAN_LENGTH. Names are the full game's, so the walkthrough plays in the full game."""
    problem = parse_problem(problem_text(spec))
    plan = shared_planner().verified_plan(problem, display_names(problem.objects))
    return plan if plan and len(plan) <= MAX_PLAN_LENGTH else None


def build_game(request: GenerationRequest, index: int) -> tuple[str, dict, dict]:
    """(relative folder, game.tw-pddl content, traj_data.json content) of game `index`, verified."""
    for attempt in range(MAX_ATTEMPTS):
        spec = sample_spec(request, index, attempt)
        walkthrough = verify(spec)
        if walkthrough is not None:
            spec.walkthrough = walkthrough
            return spec.folder_name(), game_json(spec), traj_json(spec)
    raise RuntimeError(f"game {index} of {request} found no solvable sample in {MAX_ATTEMPTS} attempts")


def _build_star(args: tuple[GenerationRequest, int]) -> tuple[str, dict, dict]:
    return build_game(*args)


def generate(out_dir: str, request: GenerationRequest, games: int, workers: int = 1) -> list[str]:
    """Write `games` verified games under out_dir/<split>/; return their game.tw-pddl paths."""
    if games < 1:
        raise ValueError(f"--games must be at least 1, got {games}")
    split_dir = os.path.join(os.path.abspath(out_dir), request.split)
    jobs = [(request, i) for i in range(games)]
    if workers > 1 and games > 1:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            built = list(pool.map(_build_star, jobs, chunksize=max(1, games // (4 * workers))))
    else:
        built = [_build_star(job) for job in jobs]
    paths = []
    for folder, game, traj in built:
        game_dir = os.path.join(split_dir, folder)
        os.makedirs(game_dir, exist_ok=True)
        with open(os.path.join(game_dir, "game.tw-pddl"), "w") as f:
            json.dump(game, f)
        with open(os.path.join(game_dir, "traj_data.json"), "w") as f:
            json.dump(traj, f, indent=1, sort_keys=True)
        paths.append(os.path.join(game_dir, "game.tw-pddl"))
    return paths


class _ArgumentError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line for the caller to print, no usage dump
        raise _ArgumentError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gflowvlm alfworld generate",
                                     description="Generate ALFWorld games (official format), verified by the planner.")
    parser.add_argument("--out", required=True, help="output folder; games go to OUT/<split>/")
    parser.add_argument("--split", required=True, choices=SPLITS)
    parser.add_argument("--games", type=int, required=True, help="number of games")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task-types", nargs="+", default=list(vocab.TASK_TYPES), metavar="TASK",
                        help=f"subset of: {' '.join(vocab.TASK_TYPES)}")
    parser.add_argument("--size", choices=SIZE_CLASSES, default=None,
                        help="keep one floor-plan size (default: all sizes; large = the dataset's scale)")
    parser.add_argument("--workers", type=int, default=1, help="processes verifying games in parallel")
    return parser


def generate_main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns an exit code and prints one line on bad input."""
    try:
        args = build_parser().parse_args(argv)
        if args.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {args.workers}")
        request = GenerationRequest(args.split, args.seed, tuple(args.task_types), args.size)
        started = time.perf_counter()
        paths = generate(args.out, request, args.games, args.workers)
    except SystemExit as exit_request:  # --help
        return int(exit_request.code or 0)
    except (ValueError, AlfworldMissingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    elapsed = time.perf_counter() - started
    print(f"wrote {len(paths)} {args.split} games to {os.path.join(os.path.abspath(args.out), args.split)} "
          f"in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(generate_main(sys.argv[1:]))
