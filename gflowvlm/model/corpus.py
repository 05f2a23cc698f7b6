"""The text the tiny VLM's tokenizer is trained on: what the environments, the prompts and the oracle write.

The oracle is rolled through every card environment (both splits, so OOD numbers appear too); each step
contributes the task, the state text, the admissible actions, the oracle's thoughts and action, the prompt the
policy would see (when `gflowvlm.prompting` is importable) and the JSON response in the env's format. ALFWorld's
engine needs game files, so its words come from a fixed list of receptacles, objects and command templates.

An environment that cannot be imported or rolled is skipped and named in `Corpus.skipped`: the tokenizer is
byte-level, so any text still tokenises, only less compactly.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field

CARD_ENV_IDS = ("gflowvlm/NumberLine-v0", "gflowvlm/Blackjack-v0", "gflowvlm/EZPoints-v0", "gflowvlm/Points24-v0")
CHAT_WORDS = ("USER:", "ASSISTANT:", "user", "assistant", "system")

ALFWORLD_RECEPTACLES = (
    "armchair", "bathtubbasin", "bed", "cabinet", "cart", "coffeemachine", "coffeetable", "countertop", "desk",
    "diningtable", "drawer", "dresser", "fridge", "garbagecan", "handtowelholder", "laundryhamper", "microwave",
    "ottoman", "safe", "shelf", "sidetable", "sinkbasin", "sofa", "stoveburner", "toaster", "toilet",
    "toiletpaperhanger", "towelholder", "tvstand", "bathtub", "sink")
ALFWORLD_OBJECTS = (
    "alarmclock", "apple", "baseballbat", "basketball", "book", "bowl", "box", "bread", "butterknife", "candle",
    "cd", "cellphone", "cloth", "creditcard", "cup", "desklamp", "dishsponge", "egg", "floorlamp", "fork",
    "glassbottle", "houseplant", "kettle", "keychain", "knife", "ladle", "laptop", "lettuce", "mug", "newspaper",
    "pan", "pen", "pencil", "peppershaker", "pillow", "plate", "plunger", "pot", "potato", "remotecontrol",
    "saltshaker", "soapbar", "soapbottle", "spatula", "spoon", "spraybottle", "statue", "tissuebox",
    "toiletpaper", "tomato", "towel", "vase", "watch", "wateringcan", "winebottle")
ALFWORLD_SENTENCES = (
    "You are in the middle of a room. Looking quickly around you, you see a {r} 1, a {r} 2, and a {r2} 1.",
    "Your task is to: put a clean {o} in {r}.", "Your task is to: put some {o} on {r}.",
    "Your task is to: heat some {o} and put it in {r}.", "Your task is to: cool some {o} and put it in {r}.",
    "Your task is to: examine the {o} with the desklamp.", "Your task is to: find two {o} and put them in {r}.",
    "You arrive at {r} 1. On the {r} 1, you see a {o} 1, and a {o2} 2.", "The {r} 1 is closed.",
    "You open the {r} 1. The {r} 1 is open. In it, you see nothing.", "You close the {r} 1.",
    "You pick up the {o} 1 from the {r} 1.", "You put the {o} 1 in/on the {r} 1.", "Nothing happens.",
    "You clean the {o} 1 using the sinkbasin 1.", "You heat the {o} 1 using the microwave 1.",
    "You cool the {o} 1 using the fridge 1.", "You turn on the desklamp 1.", "You are carrying: a {o} 1.",
    "You are not carrying anything.",
)
ALFWORLD_COMMANDS = (
    "go to {r} {n}", "take {o} {n} from {r} {n}", "put {o} {n} in/on {r} {n}", "open {r} {n}", "close {r} {n}",
    "clean {o} {n} with {r} {n}", "heat {o} {n} with {r} {n}", "cool {o} {n} with {r} {n}", "use {o} {n}",
    "examine {r} {n}", "examine {o} {n}", "look", "inventory",
)


@dataclass
class Corpus:
    texts: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # env id -> why it was left out


def build_corpus(episodes_per_env: int = 40, seed: int = 0) -> Corpus:
    """Texts from oracle episodes of the card envs, the prompt wording and the ALFWorld vocabulary."""
    corpus = Corpus()
    for env_id in CARD_ENV_IDS:
        try:
            corpus.texts.extend(oracle_texts(env_id, episodes_per_env, seed))
        except Exception as error:  # noqa: BLE001 - an env written by someone else may be missing or broken
            corpus.skipped[env_id] = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
    corpus.texts.extend(alfworld_texts())
    corpus.texts.extend(CHAT_WORDS)
    corpus.texts.append(json.dumps({"thoughts": "", "action": ""}) + ' {"a": 1, "b": [0.5, -2], "c": null}')
    corpus.texts.append(" ".join(str(n) for n in range(0, 100)))
    return corpus


def oracle_texts(env_id: str, episodes: int, seed: int) -> list[str]:
    import gymnasium as gym

    import envs  # noqa: F401 - registers the environments

    builder = _prompt_builder(env_id)
    texts: list[str] = []
    for split, episode in itertools.product(("id", "ood"), range(episodes)):
        env = gym.make(env_id, split=split, image_size=32)
        observation, info = env.reset(seed=seed * 100_003 + episode)
        history = []
        done = False
        while not done:
            game = env.unwrapped
            thoughts, action = game.expert_thoughts(), game.expert_action()
            admissible = info["admissible_actions"]
            texts.extend([info["task"], observation["text"], thoughts, action, " ".join(admissible)])
            if builder is not None:
                from gflowvlm.prompting import HistoryStep

                prompt = builder.build(info["task"], history, admissible, observation["image"], observation["text"])
                texts.append(prompt.text)
                texts.append(builder.response(thoughts, action, game.state_fields()))
                history.append(HistoryStep(observation["text"], action))
            else:
                texts.append(json.dumps({**game.state_fields(), "thoughts": thoughts, "action": action}))
            observation, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
        env.close()
    return texts


def _prompt_builder(env_id: str):
    try:
        from gflowvlm.config import PromptConfig
        from gflowvlm.prompting import PromptBuilder
    except ImportError:
        return None
    return PromptBuilder(env_id, PromptConfig())


def alfworld_texts() -> list[str]:
    texts: list[str] = []
    objects = itertools.cycle(ALFWORLD_OBJECTS)
    for index, receptacle in enumerate(ALFWORLD_RECEPTACLES):
        other = ALFWORLD_RECEPTACLES[(index + 7) % len(ALFWORLD_RECEPTACLES)]
        for template in ALFWORLD_SENTENCES + ALFWORLD_COMMANDS:
            texts.append(template.format(r=receptacle, r2=other, o=next(objects), o2=next(objects), n=index % 9 + 1))
    texts.extend(ALFWORLD_OBJECTS)
    return texts
