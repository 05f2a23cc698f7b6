"""Supervised data from the environments' oracles: (image, prompt with history, JSON response) records.

Layout: a JSONL file, one record per line, and a folder of PNG images beside it (`<name>_images/`):
    {"image": "<name>_images/000042.png", "prompt": "...", "response": "{...json...}", "done": false,
     "env_id": "...", "split": "id", "task_seed": 7, "step": 2}
`done: true` records are the paper's [DONE] samples: the prompt of a terminal state answered by the [DONE] token,
which teaches the termination probability that SubTB/DB's [DONE] flows are read from.
`kind: "caption"` records (`caption_samples`, none by default) are caption pairs of the tiny VLM's alignment: the
captioning instruction answered by what the image shows. A full fine-tune on the expert's replies alone overwrites
what alignment taught (results/tiny/diagnostics/: after SFT the NumberLine model writes 0% exact captions and
mostly one-digit numbers out of distribution); mixing in the alignment's own training pairs keeps it writing them
without showing any action, reward or held-out state.
With `caption="fields"` they are reading records instead: the state's `state_fields()` as the JSON object a reply
opens with ({"current number": 44, "target number": 12}), under an instruction that asks for those fields alone
(`prompting.reading_instruction`). The states are drawn as the alignment draws its pairs (both splits, a fifth of
the distinct states held out), so the reply's own fields get trained on two-digit states, still with no action.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from gflowvlm.collector import play_expert
from gflowvlm.config import FIELD_BOUNDS, PromptConfig
from gflowvlm.config_schema import ConfigError, check_output_dir, check_output_file
from gflowvlm.env_factory import check_env_options, check_has_expert, make_env
from gflowvlm.errors import UserError
from gflowvlm.prompting import Prompt, PromptBuilder, check_prompt_config, reading_instruction
from gflowvlm.seeding import Stream, stream_seed
from gflowvlm.tokens import DONE_TOKEN


def write_sft_data(env_id: str, out: str | Path, samples: int, split: str = "id", done_fraction: float = 0.0,
                   image_size: int = 64, seed: int = 0, prompt_config: PromptConfig | None = None,
                   env_kwargs: dict | None = None, progress: bool = True, caption_samples: int = 0,
                   caption: str = "image") -> Path:
    """`samples` expert records (a `done_fraction` share of them [DONE] samples), then `caption_samples` caption
    records drawn from the training pairs of the alignment `make-tiny-model --seed seed` runs (both splits, its
    held-out captions excluded), with `caption` as that alignment's caption source."""
    out = Path(out)
    images = out.parent / f"{out.stem}_images"
    prompt_config = prompt_config or PromptConfig()
    check_sft_options(env_id, out, samples, split, done_fraction, image_size, seed, prompt_config, env_kwargs)
    if caption_samples < 0:
        raise UserError(f"--caption-samples must be >= 0, got {caption_samples}")
    instruction, pairs = _caption_pairs(env_id, caption_samples, image_size, seed, caption)  # before any write
    env = make_env(env_id, split=split, image_size=image_size, **(env_kwargs or {}))
    builder = PromptBuilder(env_id, prompt_config)
    images.mkdir(parents=True, exist_ok=True)
    n_done = round(samples * done_fraction)
    n_action = samples - n_done
    written_action = written_done = 0
    with open(out, "w", encoding="utf-8") as handle, tqdm(total=samples, desc=f"sft data {env_id}",
                                                          disable=not progress) as bar:
        for episode_seed in _episode_seeds(seed):
            trajectory = play_expert(env, builder, episode_seed, 0, env_id)
            pending = [(step.prompt, step.response, False, t) for t, step in enumerate(trajectory.steps)]
            pending.append((trajectory.final_prompt, DONE_TOKEN, True, trajectory.length))
            for prompt, response, done, t in pending:
                if done and written_done >= n_done or not done and written_action >= n_action:
                    continue
                if done and done_fraction == 0.0:
                    continue
                name = f"{written_action + written_done:07d}.png"
                Image.fromarray(prompt.image).save(images / name)
                record = {"image": f"{images.name}/{name}", "prompt": prompt.text, "response": response,
                          "done": done, "env_id": env_id, "split": split, "task_seed": episode_seed, "step": t}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                written_done += done
                written_action += not done
                bar.update(1)
            if written_action >= n_action and written_done >= n_done:
                break
        for index, (image, text) in enumerate(pairs):
            name = f"{samples + index:07d}.png"
            Image.fromarray(image).save(images / name)
            prompt = reading_instruction(list(json.loads(text))) if caption == "fields" else instruction
            record = {"image": f"{images.name}/{name}", "prompt": prompt, "response": text,
                      "done": False, "kind": "caption", "env_id": env_id}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    env.close()
    return out


def _caption_pairs(env_id: str, count: int, image_size: int, seed: int, caption: str) -> tuple[str, list]:
    """(the alignment's captioning instruction, `count` of the training (image, caption) pairs of the alignment with
    this seed, drawn without replacement by a seeded permutation): none of its held-out pairs. The training pairs
    come split by split, so a prefix would hold the ID split's only; a draw keeps alignment's mix of both."""
    if count == 0:
        return "", []
    from gflowvlm.model.env_alignment import env_caption_sets  # deferred: torch
    from gflowvlm.model.vision_alignment import INSTRUCTION, AlignmentConfig

    try:
        train, _ = env_caption_sets([env_id], image_size, seed, AlignmentConfig.eval_fraction,
                                    caption=caption)[env_id]
    except ValueError as error:  # an env without state_fields() for caption "fields"
        raise UserError(f"--caption {caption}: {error}") from None
    if len(train) < count:
        raise UserError(f"--caption-samples {count}: the alignment of {env_id} has only {len(train)} training pairs")
    order = np.random.default_rng(stream_seed(Stream.SFT_CAPTIONS, seed)).permutation(len(train))[:count]
    return INSTRUCTION, [train[int(i)] for i in order]


def check_sft_options(env_id: str, out: Path, samples: int, split: str, done_fraction: float, image_size: int,
                      seed: int, prompt_config: PromptConfig, env_kwargs: dict | None) -> None:
    """Every option, before an env is made or a file written (one line naming the command-line flag)."""
    if samples <= 0:
        raise UserError(f"--samples must be positive, got {samples}")
    if not 0.0 <= done_fraction < 1.0:  # also refuses nan
        raise UserError(f"--done-fraction must be in [0, 1), got {done_fraction}")
    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    size = FIELD_BOUNDS["env.image_size"]
    if not size.allows(image_size):
        raise UserError(f"--image-size must be {size.describe()}, got {image_size}")
    try:
        check_prompt_config(prompt_config)
    except ConfigError as error:  # name the flag, not the config key
        raise UserError(str(error).replace("prompt.max_history_steps", "--max-history-steps")) from None
    check_output_file(str(out), "--out")
    check_output_dir(str(out.parent / f"{out.stem}_images"), "--out (its images folder)")
    options = dict(env_kwargs or {})
    strategy = options.pop("strategy", None)
    check_env_options(env_id, split, options, strategy=strategy,
                      keys={"id": "--env", "split": "--split", "kwargs": "env_kwargs", "strategy": "--expert-strategy"})
    check_has_expert(env_id, options, "--env", "write oracle SFT data")


def _episode_seeds(seed: int) -> Iterator[int]:
    episode = 0
    while True:
        yield seed * 1_000_003 + episode
        episode += 1


def read_sft_data(path: str | Path) -> list[dict]:
    """Records with the image path resolved; one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SFT data file not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record["image"] = str(path.parent / record["image"])
            _ = record["prompt"], record["response"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path}:{number}: not a valid SFT record") from None
        records.append(record)
    if not records:
        raise UserError(f"SFT data file {path} holds no records")
    return records


def check_responses_fit(records: list[dict], count_tokens, max_new_tokens: int, source: str) -> None:
    """UserError unless every response of `records` fits in `max_new_tokens` generated tokens.

    A policy generates at most generation.max_new_tokens tokens per step; an expert reply longer than that can be
    learnt but never written back, so every reply the trained policy tries is cut before its action and parses as
    nothing. Measured before the check existed: Points24's expert replies run to 93 tokens of the tiny VLM against
    a limit of 72 (59% of them cut), ALFWorld's to 119 against 48 (all of them); both grids trained on data their
    policies could not reproduce. `count_tokens(text)` counts a text's tokens without special tokens."""
    lengths = [count_tokens(record["response"]) for record in records]
    over = sum(length > max_new_tokens for length in lengths)
    if over:
        raise UserError(f"{source}: {over} of {len(records)} SFT responses are longer than generation.max_new_tokens"
                        f" = {max_new_tokens} tokens (the longest has {max(lengths)}); a policy cannot write them "
                        f"back, so raise generation.max_new_tokens to at least {max(lengths)}")


def load_prompt(record: dict) -> Prompt:
    try:
        image = np.asarray(Image.open(record["image"]).convert("RGB"), dtype=np.uint8)
    except OSError:
        raise UserError(f"cannot read SFT image {record['image']}") from None
    return Prompt(text=record["prompt"], image=image)
