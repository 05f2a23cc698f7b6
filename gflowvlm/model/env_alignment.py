"""Caption pre-training on named environments: the per-env recipe, held-out states per env, `alignment.json`.

`make_seeing_model` is what `gflowvlm make-tiny-model --align ENV_ID ...` and `gflowvlm demo` run: build the
tiny VLM, draw (image, caption) pairs from every named env (the env's `image_caption()`, else `obs["text"]`;
both splits where the env has them, so OOD numbers are read too), hold out a share of each env's distinct
states, train with `vision_alignment.align_vision` until EVERY env's held-out exact-caption accuracy reaches the
target (and other held-out pairs confirm it), save the model and write `alignment.json` beside it. Any
registered gymnasium env that follows the contract works, a user's included (`module:EnvId-v0` imports the
module that registers it, as `gymnasium.make` does).

The measurements behind `ENV_RECIPES` are in `gflowvlm.model.vision_alignment`'s docstring.
"""
from __future__ import annotations

import importlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gflowvlm.model.vision_alignment import AlignmentConfig, CaptionPair, align_vision, caption_pairs, \
    split_by_caption

ALIGNMENT_FILE = "alignment.json"
CAPTION_SPLITS = ("id", "ood")  # the splits captions are drawn from, where an env has them


@dataclass(frozen=True)
class EnvRecipe:
    image_size: int = 64  # the resolution the env is rendered at: the tiny VLM's --image-size must match
    vision_tower: str = "small"  # tiny_vlm.VISION_TOWERS
    steps: int = 1500  # step budget when this env is aligned on its own (early stop at the target)
    pairs_per_split: int = 2000  # caption pairs drawn per split (distinct states first, see caption_pairs)


DEFAULT_RECIPE = EnvRecipe()  # any env without its own entry (a user's env)
# Measured in gflowvlm/model/vision_alignment.py's docstring: the card games with many states need many distinct
# training states (a small pool is memorised), the ones with a formula line need 128 px and the large tower.
ENV_RECIPES: dict[str, EnvRecipe] = {
    "gflowvlm/NumberLine-v0": EnvRecipe(image_size=64, vision_tower="small", steps=1500, pairs_per_split=2000),
    "gflowvlm/Blackjack-v0": EnvRecipe(image_size=64, vision_tower="large", steps=3000, pairs_per_split=8000),
    "gflowvlm/EZPoints-v0": EnvRecipe(image_size=128, vision_tower="large", steps=3000, pairs_per_split=8000),
    "gflowvlm/Points24-v0": EnvRecipe(image_size=128, vision_tower="large", steps=4000, pairs_per_split=8000),
    "gflowvlm/ALFWorld-v0": EnvRecipe(image_size=128, vision_tower="large", steps=3000, pairs_per_split=1000),
}


def recipe(env_id: str) -> EnvRecipe:
    return ENV_RECIPES.get(env_id, DEFAULT_RECIPE)


def recipe_image_size(env_ids: Sequence[str]) -> int:
    """One image size for a model aligned on several envs: the largest any of them needs to be readable."""
    return max(recipe(env_id).image_size for env_id in env_ids)


def recipe_vision_tower(env_ids: Sequence[str]) -> str:
    return "large" if any(recipe(env_id).vision_tower == "large" for env_id in env_ids) else "small"


def recipe_steps(env_ids: Sequence[str]) -> int:
    return max(recipe(env_id).steps for env_id in env_ids)


def check_env_ids(env_ids: Sequence[str]) -> None:
    """A one-line ValueError for an env id gymnasium does not know (after importing `envs` and a `module:`)."""
    import gymnasium

    import envs  # noqa: F401  (registers the gflowvlm/ environments)

    if not env_ids:
        raise ValueError("no env to align on")
    for env_id in env_ids:
        name = env_id
        if ":" in env_id:
            module, name = env_id.split(":", 1)
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise ValueError(f"env id {env_id!r}: cannot import module {module!r} ({error})") from None
        try:
            gymnasium.spec(name)
        except gymnasium.error.Error:
            known = ", ".join(sorted(i for i in gymnasium.registry if i.startswith("gflowvlm/")))
            raise ValueError(f"unknown env id {env_id!r} (registered: {known}, or register your own)") from None


def env_splits(env_id: str, image_size: int) -> tuple[str | None, ...]:
    """The caption splits of `env_id`: id and ood where it has them; (None,) for an env without splits."""
    import gymnasium

    import envs  # noqa: F401  (registers the gflowvlm/ environments)

    env = gymnasium.make(env_id, image_size=image_size)
    try:
        declared = getattr(env.unwrapped, "splits", None)
    finally:
        env.close()
    if not declared:
        return (None,)
    wanted = tuple(split for split in CAPTION_SPLITS if split in declared)
    return wanted or (declared[0],)


def env_caption_sets(env_ids: Sequence[str], image_size: int, seed: int, eval_fraction: float,
                     pairs_per_split: int | None = None,
                     caption: str = "image") -> dict[str, tuple[list[CaptionPair], list[CaptionPair]]]:
    """env id -> (train pairs, held-out pairs): a share of each env's distinct captions never trained on."""
    sets = {}
    for env_id in dict.fromkeys(env_ids):
        n = pairs_per_split or recipe(env_id).pairs_per_split
        pairs: list[CaptionPair] = []
        for index, split in enumerate(env_splits(env_id, image_size)):
            # Another seed per split: both splits of a card game deal from the same seeds otherwise.
            pairs += caption_pairs([env_id], n, image_size, seed + 7919 * index, split=split, caption=caption)
        sets[env_id] = split_by_caption(pairs, eval_fraction, seed)
    return sets


def align_on_envs(model, processor, env_ids: Sequence[str], image_size: int, config: AlignmentConfig,
                  progress: bool = True, pairs_per_split: int | None = None) -> dict:
    """Caption pre-train `model` on `env_ids` (rendered at `image_size`); the summary `alignment.json` holds."""
    sets = env_caption_sets(env_ids, image_size, config.seed, config.eval_fraction, pairs_per_split, config.caption)
    train = {env_id: train_pairs for env_id, (train_pairs, _) in sets.items()}  # drawn in equal shares per env
    result = align_vision(model, processor, train, config, progress=progress,
                          eval_pairs={env_id: held_out for env_id, (_, held_out) in sets.items()})
    return alignment_record(result, sets, config, image_size)


def alignment_record(result: dict, sets: dict[str, tuple[list[CaptionPair], list[CaptionPair]]],
                     config: AlignmentConfig, image_size: int) -> dict:
    """What `alignment.json` holds, from `align_vision`'s result on `sets` (env id -> (train, held out))."""
    # A confirmation describes the final model only if it was read at the last step (the one that stopped the run).
    final = result["confirmations"][-1] if result["confirmations"] else None
    confirmed = final[1] if final is not None and final[0] == result["steps"] else {}
    per_env = {env_id: {"accuracy": result["per_env"][env_id], "train_pairs": len(sets[env_id][0]),
                        "eval_pairs": result["eval_sizes"][env_id],
                        "confirmed_accuracy": confirmed.get(env_id),
                        "confirm_pairs": result["confirm_sizes"][env_id],
                        "history": result["per_env_history"][env_id]} for env_id in sets}
    return {"envs": list(sets), "accuracy": result["accuracy"], "per_env": per_env,
            "confirmations": result["confirmations"],
            "reached_target": result["reached_target"], "target_accuracy": config.target_accuracy,
            "steps": result["steps"], "seconds": round(result["seconds"], 1), "seed": config.seed,
            "image_size": image_size, "config": asdict(config),
            "loss_history": [[step, loss] for step, _, loss in result["history"]]}


def save_seeing_model(model, processor, summary: dict, out: str | Path, family: str, vision_tower: str) -> dict:
    """Save the aligned model to `out`, then its `alignment.json` (last: it marks a finished model)."""
    from gflowvlm.model.tiny_vlm import save_tiny_vlm

    summary = dict(summary, family=family, vision_tower=vision_tower,
                   parameters=sum(p.numel() for p in model.parameters()), vocabulary=len(processor.tokenizer))
    save_tiny_vlm(model, processor, out)
    write_alignment(summary, out)
    return summary


def make_seeing_model(out: str | Path, env_ids: Sequence[str], family: str = "llava", image_size: int | None = None,
                      seed: int = 0, steps: int | None = None, target_accuracy: float | None = None,
                      corpus=None, vocab_size: int = 1024, progress: bool = True,
                      config: AlignmentConfig | None = None, pairs_per_split: int | None = None,
                      vision_tower: str | None = None, caption: str | None = None,
                      confirm_max: int | None = None) -> dict:
    """Build the tiny VLM, caption pre-train it on `env_ids`, save it to `out` with `alignment.json` (last).

    Image size, vision tower, step budget and pairs default to the envs' recipes (ENV_RECIPES); `caption`
    (vision_alignment.CAPTION_SOURCES) and `confirm_max` (0: no confirmation) override the config's."""
    from gflowvlm.model.tiny_vlm import ONE_TOWER_FAMILIES, build_tiny_vlm

    check_env_ids(env_ids)
    image_size = image_size or recipe_image_size(env_ids)
    vision_tower = vision_tower or (recipe_vision_tower(env_ids) if family not in ONE_TOWER_FAMILIES else "small")
    config = replace(config or AlignmentConfig(), seed=seed, steps=steps or recipe_steps(env_ids))
    if target_accuracy is not None:
        config = replace(config, target_accuracy=target_accuracy)
    if caption is not None:
        config = replace(config, caption=caption)
    if confirm_max is not None:
        config = replace(config, confirm_max=confirm_max)
    model, processor = build_tiny_vlm(family, image_size, seed, vocab_size, corpus, vision_tower)
    summary = align_on_envs(model, processor, env_ids, image_size, config, progress, pairs_per_split)
    return save_seeing_model(model, processor, summary, out, family, vision_tower)


def write_alignment(summary: dict, directory: str | Path) -> Path:
    """`directory/alignment.json`, written to a temporary file and renamed: it marks a finished model."""
    target = Path(directory) / ALIGNMENT_FILE
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".alignment.", suffix=".json")
    with os.fdopen(handle, "w") as stream:
        json.dump(summary, stream, indent=1)
    os.replace(temporary, target)
    return target
