"""ALFWorld pieces on their own: goal conditions, the planner's sub-problem, the engine speedups, drawing,
the expert's thoughts, and the error when the optional alfworld extra is missing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from envs.alfworld import speedups
from envs.alfworld.engine import INSTALL_HINT, AlfworldMissingError, EngineGame, require_alfworld
from envs.alfworld.expert import thoughts
from envs.alfworld.generator import GenerationRequest, generate, problem_text, sample_spec
from envs.alfworld.goal_conditions import Targets, condition_flags, progress
from envs.alfworld.planner import parse_problem, relevant_part
from envs.alfworld.render import ReceptacleView, SceneView, draw_scene, scene_caption, status_layout

pytestmark = pytest.mark.alfworld
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))  # the checkout's root

BASE = [("objecttype", "apple_1", "appletype"), ("objecttype", "apple_2", "appletype"),
        ("objecttype", "mug_1", "mugtype"), ("receptacletype", "counter_1", "countertoptype"),
        ("receptacletype", "fridge_1", "fridgetype"), ("receptacletype", "desk_1", "desktype"),
        ("objecttype", "lamp_1", "desklamptype"), ("inreceptacle", "lamp_1", "desk_1"),
        ("receptacleatlocation", "desk_1", "loc_desk"), ("receptacleatlocation", "counter_1", "loc_counter")]


@pytest.mark.parametrize("task_type, extra, expected", [
    ("pick_cool_then_place_in_recep", [], (False, False, False)),
    ("pick_cool_then_place_in_recep", [("holds", "agent1", "apple_1")], (True, False, False)),
    ("pick_cool_then_place_in_recep", [("holds", "agent1", "apple_1"), ("iscool", "apple_1")], (True, True, False)),
    ("pick_cool_then_place_in_recep", [("inreceptacle", "apple_1", "counter_1"), ("iscool", "apple_1")],
     (True, True, True)),
    # a cold apple elsewhere and a warm one in place: not the goal yet
    ("pick_cool_then_place_in_recep", [("inreceptacle", "apple_1", "counter_1"), ("iscool", "apple_2")],
     (True, True, False)),
    ("pick_cool_then_place_in_recep", [("holds", "agent1", "mug_1"), ("iscool", "mug_1")], (False, False, False)),
    ("pick_and_place_simple", [("inreceptacle", "apple_2", "counter_1")], (True, True)),
    ("pick_two_obj_and_place", [("inreceptacle", "apple_1", "counter_1"), ("holds", "agent1", "apple_2")],
     (True, True, True, False)),
    ("pick_two_obj_and_place", [("inreceptacle", "apple_1", "counter_1"), ("inreceptacle", "apple_2", "counter_1")],
     (True, True, True, True)),
    ("look_at_obj_in_light", [("istoggled", "lamp_1")], (False, True, False)),
    ("look_at_obj_in_light", [("istoggled", "lamp_1"), ("holds", "agent1", "apple_1"),
                              ("atlocation", "agent1", "loc_counter")], (True, True, False)),
    ("look_at_obj_in_light", [("istoggled", "lamp_1"), ("holds", "agent1", "apple_1"),
                              ("atlocation", "agent1", "loc_desk")], (True, True, True)),
])
def test_goal_conditions_from_facts(task_type, extra, expected):
    partner = "DeskLamp" if task_type == "look_at_obj_in_light" else "CounterTop"
    targets = Targets.from_traj_data({"task_type": task_type, "pddl_params": {
        "object_target": "Apple", "parent_target": "" if partner == "DeskLamp" else partner,
        "toggle_target": partner if partner == "DeskLamp" else "", "mrecep_target": "", "object_sliced": False}})
    assert condition_flags(targets, BASE + extra) == expected
    assert progress(targets, BASE + extra) == pytest.approx(sum(expected) / len(expected))


def test_relevant_part_keeps_what_the_goal_needs():
    spec = sample_spec(GenerationRequest("train", 0, task_types=("pick_heat_then_place_in_recep",), size="large"), 0)
    problem = parse_problem(problem_text(spec))
    assert len([k for k, t in problem.objects.items() if t == "object"]) == len(spec.objects)
    part = relevant_part(problem)
    kept = {k for k, t in part.objects.items() if t == "object"}
    targets = {o.id.lower() for o in spec.objects if o.kind == spec.pairing.obj}
    assert kept == targets
    kept_receptacle_types = {a[2] for a in part.init if a[0] == "receptacletype"}
    assert {"microwavetype", spec.pairing.partner.lower() + "type"} <= kept_receptacle_types
    assert parse_problem(part.to_pddl()).init == part.init   # what the planner reads is what was kept


@pytest.fixture(scope="module")
def one_game(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("alfworld_parts"))
    return generate(out, GenerationRequest("train", seed=2, size="small",
                                           task_types=("pick_clean_then_place_in_recep",)), 1)[0]


def _play(game_file: str) -> list[tuple]:
    engine = EngineGame()
    engine.load(game_file)
    state = engine.reset()
    trace = [(state.feedback, tuple(state.admissible), state.won)]
    commands = json.load(open(game_file))["walkthrough"]
    for command in ["look", "inventory", state.admissible[0]] + commands:
        if command in state.admissible:
            state = engine.step(command)
            trace.append((state.feedback, tuple(state.admissible), state.won))
    state = engine.reset()   # a second reset (translation memoized) starts over identically
    trace.append((state.feedback, tuple(state.admissible), state.won))
    return trace


def test_speedups_change_no_engine_output(one_game, monkeypatch):
    fast = _play(one_game)
    monkeypatch.setattr(speedups, "SPEEDUPS", False)
    assert _play(one_game) == fast
    assert fast[-2][2] is True   # the walkthrough won


def test_live_replanning_still_works_on_the_plain_translation(one_game):
    engine = EngineGame()
    engine.load(one_game)
    state = engine.reset()
    with speedups.fast_engine(replanning=False):
        plan = engine._pddl_env._pddl_state.replan(engine._pddl_env._entity_infos)
    assert plan
    for command in plan:
        assert command in state.admissible
        state = engine.step(command)
    assert state.won


def test_engine_calls_leave_textworld_unpatched(one_game):
    alf = require_alfworld()
    before = (alf.textgen._parse_and_convert, alf.fast_downward.pddl2sas, alf.textgen.copy_context)
    argv = list(sys.argv)
    _play(one_game)
    assert (alf.textgen._parse_and_convert, alf.fast_downward.pddl2sas, alf.textgen.copy_context) == before
    assert sys.argv == argv


def _red_pixels(image: np.ndarray) -> int:
    return int(((image[..., 0] > 180) & (image[..., 1] < 60) & (image[..., 2] < 60)).sum())


def test_drawing_shows_position_and_is_deterministic():
    receptacles = [ReceptacleView(f"cabinet {i}", True, i == 2) for i in range(1, 7)] + \
        [ReceptacleView("countertop 1", False, False, lamp_on=True)]
    view = SceneView("put a clean mug in countertop", receptacles, "cabinet 2", ["mug 1"], ["apple 1 (hot)"])
    image = draw_scene(view, 300)
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8
    assert np.array_equal(image, draw_scene(view, 300))
    assert _red_pixels(image) > 50   # the agent's receptacle is outlined
    assert _red_pixels(draw_scene(SceneView(view.task, receptacles, None, None, []), 300)) == 0
    assert draw_scene(view, 96).shape == (96, 96, 3)


def test_the_image_caption_is_the_status_text_the_image_draws():
    receptacles = [ReceptacleView(f"cabinet {i}", True, i == 2) for i in range(1, 7)]
    view = SceneView("put a clean mug in countertop", receptacles, "cabinet 2", ["mug 1"], ["apple 1 (hot)"])
    assert scene_caption(view, 300) == "At: cabinet 2 Sees: mug 1 Holds: apple 1 (hot)"
    middle = SceneView(view.task, receptacles, None, None, [])
    assert scene_caption(middle, 128) == "At: the middle of the room Sees: the receptacles above Holds: nothing"
    closed = SceneView(view.task, receptacles, "cabinet 1", None, [])
    assert scene_caption(closed, 128) == "At: cabinet 1 Sees: the cabinet 1 is closed Holds: nothing"
    # A long list is cut the way the drawing cuts it, so the caption never names an object the image leaves out.
    crowded = SceneView(view.task, receptacles, "cabinet 2", [f"mug {i}" for i in range(1, 41)], [])
    caption = scene_caption(crowded, 128)
    lines, _ = status_layout(crowded, 128)
    assert caption == " ".join(lines) and caption.startswith("At: cabinet 2 Sees: mug 1, mug 2")
    assert "more" in caption and "mug 40" not in caption and caption.endswith("Holds: nothing")
    # At 64 px the last status line does not fit in the image, and the caption leaves it out too.
    assert scene_caption(middle, 64) == "At: the middle of the room Sees: the receptacles"


def test_text_is_kept_within_the_observation_charset():
    from envs.alfworld.env import printable
    assert printable("put a café mug in sink.\n") == "put a caf? mug in sink.\n"


def test_thoughts_explain_the_next_command():
    text = thoughts("put a cool apple in countertop", "pick_cool_then_place_in_recep", "apple",
                    (True, False, False), ["go to fridge 1", "cool apple 1 with fridge 1", "go to countertop 1",
                                           "move apple 1 to countertop 1"])
    assert text.startswith("The task is to put a cool apple in countertop.")
    assert "Done so far: found." in text and "to cool the apple 1 with it" in text
    assert "4 steps of my plan remain" in text and text.endswith("Next action: go to fridge 1")


def test_a_closed_engine_gives_its_library_to_the_next_one(one_game):
    from envs.alfworld import engine as engine_module

    first = EngineGame()
    library = first._pddl_env.downward_lib
    first.close()
    assert engine_module._SPARE_LIBS[-1] is library   # kept loaded, not unloaded
    second = EngineGame()
    assert second._pddl_env.downward_lib is library and library not in engine_module._SPARE_LIBS
    assert require_alfworld().fast_downward.load_lib.__name__ == "load_lib"   # the loader is put back
    second.load(one_game)
    state = second.reset()
    for command in json.load(open(one_game))["walkthrough"]:
        state = second.step(command)
    assert state.won   # a reused copy plays a whole game
    with pytest.raises(RuntimeError):
        first.reset()


def test_closing_engines_does_not_crash_the_process():
    """Unloading a closed engine's copy of fast-downward's library (dlclose) made this sequence segfault (at the
    latest when the process exited); it runs in a child process so that a crash fails the test, not pytest."""
    script = (
        "import tempfile\n"
        "from envs.alfworld.engine import EngineGame\n"
        "from envs.alfworld.generator import GenerationRequest, generate\n"
        "games = generate(tempfile.mkdtemp(), GenerationRequest('id', seed=0, size='small'), 2)\n"
        "for e in range(4):\n"
        "    engine = EngineGame(); engine.load(games[e % 2]); engine.reset(); engine.close()\n"
        "    if e == 1:\n"
        "        generate(tempfile.mkdtemp(), GenerationRequest('id', seed=0, size='medium'), 1)\n"
        "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", (result.returncode, result.stderr[-2000:])


def test_missing_alfworld_is_one_line_naming_the_install_command(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "alfworld" or m.startswith("alfworld.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "alfworld", None)
    with pytest.raises(AlfworldMissingError) as caught:
        require_alfworld()
    message = str(caught.value)
    assert INSTALL_HINT in message and "\n" not in message
    from envs.alfworld.env import ALFWorldEnv
    from envs.alfworld.generator import generate_main
    with pytest.raises(AlfworldMissingError, match="gflowvlm\\[alfworld\\]"):
        ALFWorldEnv(data_dir=str(tmp_path))
    assert generate_main(["--out", str(tmp_path), "--split", "train", "--games", "1"]) == 2
    err = capsys.readouterr().err
    assert INSTALL_HINT in err and err.count("\n") == 1


def test_import_envs_works_without_alfworld():
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'alfworld' or name.startswith('alfworld.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import gymnasium, envs\n"
        "try:\n"
        "    gymnasium.make('gflowvlm/ALFWorld-v0')\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, '|', error)\n")
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("AlfworldMissingError |") and INSTALL_HINT in result.stdout
