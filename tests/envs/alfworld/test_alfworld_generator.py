"""The ALFWorld game generator: official format, planner-verified, deterministic, with separated splits."""
from __future__ import annotations

import filecmp
import json
import os

import pytest

from envs.alfworld import generator, scenes, splits, vocabulary
from envs.alfworld.generator import GenerationRequest, generate, generate_main, sample_spec

pytestmark = pytest.mark.alfworld


def _games(root: str) -> list[str]:
    return sorted(os.path.join(d, "game.tw-pddl") for d, _, files in os.walk(root) if "game.tw-pddl" in files)


@pytest.fixture(scope="module")
def small_games(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("alfworld_gen"))
    for split, count in (("train", 12), ("id", 6), ("ood", 6)):
        generate(out, GenerationRequest(split, seed=0, size="small"), count)
    return out


def test_every_task_type_is_generated_in_every_split(small_games):
    for split in splits.SPLITS:
        types = {json.load(open(os.path.join(os.path.dirname(g), "traj_data.json")))["task_type"]
                 for g in _games(os.path.join(small_games, split))}
        assert types == set(vocabulary.TASK_TYPES), split


def test_files_have_the_official_format(small_games):
    for game_file in _games(small_games):
        game = json.load(open(game_file))
        traj = json.load(open(os.path.join(os.path.dirname(game_file), "traj_data.json")))
        assert set(game) >= {"pddl_domain", "grammar", "pddl_problem", "solvable", "walkthrough"}
        assert game["solvable"] is True and game["walkthrough"]
        assert "UNKNOWN GOAL" not in game["grammar"]
        sentence = traj["turk_annotations"]["anns"][0]["task_desc"]
        assert f"Your task is to: {sentence}." in game["grammar"]
        assert "(:goal" in game["pddl_problem"] and "canContain" in game["pddl_problem"]
        params = traj["pddl_params"]
        assert set(params) == {"object_target", "parent_target", "toggle_target", "mrecep_target", "object_sliced"}
        # ALFRED's folder naming: <task>-<Object>-<MRecep>-<Parent>-<floor plan>/<trial>
        task_dir = os.path.basename(os.path.dirname(os.path.dirname(game_file)))
        assert task_dir.startswith(traj["task_type"] + "-" + params["object_target"] + "-None-")
        assert task_dir.endswith("-" + str(traj["scene"]["scene_num"]))


def test_games_load_and_win_in_alfworlds_own_alfredtwenv(small_games):
    from alfworld.agents.environment.alfred_tw_env import AlfredTWEnv

    root = os.path.join(small_games, "train")
    config = {"env": {"goal_desc_human_anns_prob": 0, "task_types": [1, 2, 3, 4, 5, 6],
                      "domain_randomization": False, "expert_type": "planner"},
              "dataset": {"data_path": root, "eval_id_data_path": root, "eval_ood_data_path": root,
                          "num_train_games": -1, "num_eval_games": -1},
              "general": {"training_method": "dagger"}, "dagger": {"training": {"max_nb_steps_per_episode": 50}}}
    alfred = AlfredTWEnv(config, train_eval="eval_in_distribution")
    assert sorted(alfred.game_files) == _games(root)
    env = alfred.init_env(batch_size=1)
    try:
        for _ in range(2):
            _, infos = env.reset()
            walkthrough = json.load(open(infos["extra.gamefile"][0]))["walkthrough"]
            assert not infos["won"][0]
            for command in walkthrough:
                assert command in infos["admissible_commands"][0]
                _, _, _, infos = env.step([command])
            assert infos["won"][0]
    finally:
        env.close()


def test_generation_is_deterministic_per_seed(small_games, tmp_path):
    again = sorted(generate(str(tmp_path / "a"), GenerationRequest("train", seed=0, size="small"), 12))
    original = _games(os.path.join(small_games, "train"))
    assert [os.path.relpath(p, tmp_path / "a") for p in again] == [os.path.relpath(p, small_games) for p in original]
    for new, old in zip(again, original):
        for name in ("game.tw-pddl", "traj_data.json"):
            assert filecmp.cmp(os.path.join(os.path.dirname(new), name), os.path.join(os.path.dirname(old), name),
                               shallow=False)
    other = [sample_spec(GenerationRequest("train", seed=1, size="small"), i).folder_name() for i in range(12)]
    assert other != [sample_spec(GenerationRequest("train", seed=0, size="small"), i).folder_name() for i in range(12)]


def _sampled(split: str, count: int = 240, seed: int = 3):
    request = GenerationRequest(split, seed)
    return [sample_spec(request, i) for i in range(count)]


def test_ood_shares_no_layout_or_pairing_with_train():
    train, in_dist, ood = _sampled("train"), _sampled("id"), _sampled("ood")
    train_layouts = {s.plan.signature() for s in train}
    train_pairs = {(s.pairing.obj, s.pairing.partner) for s in train}
    ood_layouts = {s.plan.signature() for s in ood}
    ood_pairs = {(s.pairing.obj, s.pairing.partner) for s in ood}
    assert not train_layouts & ood_layouts
    assert not train_pairs & ood_pairs
    assert {s.plan.number for s in ood} <= set(vocabulary.constants().TEST_SCENE_NUMBERS)
    # id and train: the same layouts and pairings (id only ever uses seen ones), different instances
    assert {s.plan.signature() for s in in_dist} & train_layouts
    assert {(s.pairing.obj, s.pairing.partner) for s in in_dist} & train_pairs
    assert all(not splits.is_unseen_pairing(s.pairing.obj, s.pairing.partner) for s in in_dist + train)
    assert {s.plan.number for s in in_dist} <= set(vocabulary.constants().TRAIN_SCENE_NUMBERS)
    train_problems = {generator.problem_text(s).split("\n", 1)[1] for s in train}
    assert not any(generator.problem_text(s).split("\n", 1)[1] in train_problems for s in in_dist)


def test_written_splits_respect_the_split_definition(small_games):
    def records(split):
        return [json.load(open(os.path.join(os.path.dirname(g), "traj_data.json")))["gflowvlm"]
                for g in _games(os.path.join(small_games, split))]
    train, ood = records("train"), records("ood")
    assert not {r["layout"] for r in train} & {r["layout"] for r in ood}
    assert not {tuple(r["pairing"]) for r in train} & {tuple(r["pairing"]) for r in ood}


def test_floor_plans_are_unique_and_reach_dataset_scale():
    vocabulary.check_vocabulary()   # every class is ALFRED's and every object fits a receptacle of its room
    plans = scenes.all_floor_plans()
    assert len({p.signature() for p in plans.values()}) == len(plans) == 120
    sizes = [len(p.receptacles) for p in plans.values()]
    assert min(sizes) <= 8 and max(sizes) >= 20
    large = sample_spec(GenerationRequest("train", 0, size="large"), 0)
    assert len(large.plan.receptacles) >= 16 and len(large.objects) >= 35
    problem = generator.problem_text(large)
    assert "(openable " in problem   # closed receptacles exist (none starts opened)
    assert "(opened " not in problem


def test_start_positions_and_objects_vary():
    specs = _sampled("train", count=60)
    assert len({s.start_location for s in specs}) > 30
    assert len({len(s.objects) for s in specs}) > 10


def test_cli_writes_games(tmp_path, capsys):
    code = generate_main(["--out", str(tmp_path), "--split", "ood", "--games", "2", "--seed", "4",
                          "--task-types", "pick_heat_then_place_in_recep", "--size", "small"])
    assert code == 0
    assert "wrote 2 ood games" in capsys.readouterr().out
    assert len(_games(tmp_path / "ood")) == 2


@pytest.mark.parametrize("argv, message", [
    (["--out", "x", "--split", "test", "--games", "2"], "invalid choice"),
    (["--out", "x", "--split", "train", "--games", "0"], "--games must be at least 1"),
    (["--out", "x", "--split", "train", "--games", "2", "--task-types", "fly"], "unknown task type"),
    (["--split", "train", "--games", "2"], "--out"),
    (["--out", "x", "--split", "train", "--games", "two"], "invalid int value"),
])
def test_cli_bad_input_is_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert generate_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
