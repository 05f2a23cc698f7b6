"""PromptBuilder: what the prompt holds per config and env, truncation under a token budget, response round trip."""
from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401 - registers the games
from gflowvlm.config import PromptConfig
from gflowvlm.prompting import ENV_FORMATS, HistoryStep, Prompt, PromptBuilder
from gflowvlm.response_parser import action_span, parse_action

NUMBER_LINE = "gflowvlm/NumberLine-v0"
BLACKJACK = "gflowvlm/Blackjack-v0"
EZ_POINTS = "gflowvlm/EZPoints-v0"
POINTS24 = "gflowvlm/Points24-v0"
ALFWORLD = "gflowvlm/ALFWorld-v0"
IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)
TASK = "Move the current number to the target number."


def words(text: str) -> int:
    return len(text.split())


def number_line_history(steps: int) -> list[HistoryStep]:
    return [HistoryStep(f"target number 3, current number {i}", "+") for i in range(steps)]


def build(env_id=NUMBER_LINE, steps=(), admissible=("+", "-"), state_text="target number 3, current number 1",
          count_tokens=None, **config):
    builder = PromptBuilder(env_id, PromptConfig(**config), count_tokens=count_tokens)
    return builder.build(TASK, list(steps), list(admissible), IMAGE, state_text=state_text)


def test_prompt_layout_for_number_line():
    prompt = build(steps=number_line_history(2))
    assert isinstance(prompt, Prompt) and prompt.image is IMAGE
    assert prompt.text.splitlines() == [
        f"Task: {TASK}",
        "History:",
        "Step 1: target number 3, current number 0. You chose: +",
        "Step 2: target number 3, current number 1. You chose: +",
        "Actions: +, -",
        "The image shows the current state.",
        'Respond with a valid JSON object with fields "current number", "target number", "thoughts", '
        '"action" ("+" or "-").',
    ]


def test_history_can_be_switched_off():
    with_history = build(steps=number_line_history(3), history=True)
    without = build(steps=number_line_history(3), history=False)
    assert "History:" in with_history.text and "You chose" in with_history.text
    assert "History:" not in without.text and "Step 1" not in without.text
    assert build(steps=number_line_history(3), max_history_steps=0).text == without.text


def test_no_history_section_at_the_first_step():
    assert "History:" not in build(steps=[]).text


def test_max_history_steps_keeps_the_newest_with_their_step_numbers():
    text = build(steps=number_line_history(12), max_history_steps=3).text
    steps = [line for line in text.splitlines() if line.startswith("Step ")]
    assert [line.split(":")[0] for line in steps] == ["Step 10", "Step 11", "Step 12"]
    assert steps[-1].startswith("Step 12: target number 3, current number 11.")


def test_token_budget_drops_oldest_steps_first_and_keeps_task_and_format():
    history = number_line_history(10)
    full = build(steps=history, count_tokens=words)
    budget = words(full.text) - 25  # a history line is 10 words: three lines must go
    prompt = build(steps=history, count_tokens=words, max_prompt_tokens=budget)
    assert words(prompt.text) <= budget
    steps = [line for line in prompt.text.splitlines() if line.startswith("Step ")]
    assert [line.split(":")[0] for line in steps] == [f"Step {i}" for i in range(4, 11)]
    assert prompt.text.startswith(f"Task: {TASK}")
    assert prompt.text.splitlines()[-1].startswith("Respond with a valid JSON object")


def test_token_budget_too_small_leaves_no_history_but_task_and_format():
    prompt = build(steps=number_line_history(10), count_tokens=words, max_prompt_tokens=5)
    assert "Step " not in prompt.text and "History:" not in prompt.text
    assert prompt.text.startswith(f"Task: {TASK}")
    assert "Respond with a valid JSON object" in prompt.text


def test_number_line_prompt_stays_compact():
    # Whitespace words are a lower bound on BPE tokens; the brief's target is about 200-300 BPE tokens.
    assert words(build(steps=number_line_history(10)).text) < 160


@pytest.mark.parametrize("env_id, fields, hint", [
    (NUMBER_LINE, '"current number", "target number", "thoughts"', '("+" or "-")'),
    (BLACKJACK, '"thoughts"', '("stand" or "hit")'),
    (EZ_POINTS, '"cards", "current formula", "thoughts"', "(one of the actions above)"),
    (POINTS24, '"cards", "current formula", "thoughts"', "(one of the actions above)"),
    (ALFWORLD, '"thoughts"', "(one of the actions above)"),
    ("someone/MyMaze-v3", '"thoughts"', "(one of the actions above)"),
])
def test_format_instruction_per_env(env_id, fields, hint):
    last = build(env_id=env_id).text.splitlines()[-1]
    assert last == f'Respond with a valid JSON object with fields {fields}, "action" {hint}.'


@pytest.mark.parametrize("env_id", [NUMBER_LINE, BLACKJACK, EZ_POINTS, POINTS24])
def test_card_games_leave_the_state_to_the_image(env_id):
    text = build(env_id=env_id, state_text="SECRET STATE").text
    assert "SECRET STATE" not in text
    assert "The image shows the current state." in text


@pytest.mark.parametrize("env_id", [ALFWORLD, "someone/MyMaze-v3"])
def test_text_envs_include_the_current_state(env_id):
    text = build(env_id=env_id, state_text="You are in a room.\nYou see a desk 1.",
                 admissible=["go to desk 1", "look"]).text
    assert "Current state: You are in a room. You see a desk 1." in text
    assert "Actions: go to desk 1, look" in text


def test_commands_with_commas_are_quoted():
    text = build(env_id="someone/MyMaze-v3", admissible=["say hi, bob", "look"]).text
    assert 'Actions: "say hi, bob", "look"' in text


ROUND_TRIPS = [
    (NUMBER_LINE, {"target number": 3, "current number": 1}, "+", ["+", "-"]),
    (BLACKJACK, {}, "stand", ["stand", "hit"]),
    (EZ_POINTS, {"current formula": "6 *", "cards": ["6", "2"]}, "2",
     [str(n) for n in range(1, 11)] + ["+", "*", "="]),
    (POINTS24, {"cards": ["1", "10", "K", "3"], "current formula": "(1 + 10"}, ")",
     [str(n) for n in range(1, 11)] + ["+", "-", "*", "/", "(", ")", "="]),
    (ALFWORLD, {}, "go to countertop 10", ["go to countertop 1", "go to countertop 10", "look"]),
    ("someone/MyMaze-v3", {"position": [1, 2]}, "north", ["north", "south"]),
]


@pytest.mark.parametrize("env_id, fields, action, admissible", ROUND_TRIPS)
def test_response_round_trip(env_id, fields, action, admissible):
    builder = PromptBuilder(env_id, PromptConfig())
    thoughts = 'The "action" should be clear: I pick it. 思考'
    text = builder.response(thoughts, action, fields)
    assert "\n" not in text and "思考" in text  # one line, unicode kept
    decoded = json.loads(text)
    expected_order = [name for name in ENV_FORMATS.get(env_id, ENV_FORMATS[ALFWORLD]).fields if name in fields]
    expected_order += [name for name in fields if name not in expected_order]
    assert list(decoded) == expected_order + ["thoughts", "action"]
    assert decoded["thoughts"] == thoughts and decoded["action"] == action
    assert parse_action(text, admissible) == action
    start, end = action_span(text)
    assert text[start:end] == action


def test_response_rejects_reserved_field_names():
    builder = PromptBuilder(BLACKJACK, PromptConfig())
    with pytest.raises(ValueError, match="reserved"):
        builder.response("t", "hit", {"action": "stand"})


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="image must be a uint8"):
        PromptBuilder(BLACKJACK, PromptConfig()).build(TASK, [], ["hit"], np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="HistoryStep"):
        PromptBuilder(BLACKJACK, PromptConfig()).build(TASK, [("s", "hit")], ["hit"], IMAGE)
    with pytest.raises(ValueError, match="max_history_steps"):
        PromptBuilder(BLACKJACK, PromptConfig(max_history_steps=-1))
    with pytest.raises(ValueError, match="env_id"):
        PromptBuilder("", PromptConfig())


def test_invalid_history_action_is_shown_as_given():
    text = build(steps=[HistoryStep("target number 3, current number 1", "(invalid)")]).text
    assert "Step 1: target number 3, current number 1. You chose: (invalid)" in text


@pytest.mark.parametrize("env_id", [NUMBER_LINE, BLACKJACK, EZ_POINTS, POINTS24])
def test_oracle_episode_round_trips_through_prompt_and_parser(env_id):
    env = gym.make(env_id, image_size=32)
    builder = PromptBuilder(env_id, PromptConfig())
    obs, info = env.reset(seed=11)
    history: list[HistoryStep] = []
    done = False
    while not done:
        game = env.unwrapped
        prompt = builder.build(info["task"], history, info["admissible_actions"], obs["image"], obs["text"])
        assert prompt.text.startswith("Task: ") and prompt.image is obs["image"]
        assert "Current state:" not in prompt.text  # card games: the state is read off the image
        text = builder.response(game.expert_thoughts(), game.expert_action(), game.state_fields())
        action = parse_action(text, info["admissible_actions"])
        assert action == game.expert_action()
        history.append(HistoryStep(obs["text"], action))
        obs, _, terminated, truncated, info = env.step(action)
        assert not info["illegal"]
        done = terminated or truncated
    assert len(history) >= 1
