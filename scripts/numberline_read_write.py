"""Reading or writing? What limits the tiny VLM out of distribution on NumberLine. Prints the figures.

Two measurements, for the question of the results issue ("SFT responses hold only numbers 0..5, so the model
writes 'current number': 4 for 44: reading or writing?"):

1. Reading: the greedy exact-caption accuracy (the alignment task: image -> "Target: T, Current: C"-style caption)
   of each model directory given, on fresh caption pairs of each split. The caption-pre-trained tiny model is
   read before SFT; the SFT model (a full fine-tune) after it, which says whether SFT kept the skill. With
   `--fields`, also the exact reading in the reply's own syntax: the reading instruction of `make-sft-data --caption
   fields` answered by {"current number": C, "target number": T} (what a model trained on reading records learnt).
2. Writing: each eval transcript given (`gflowvlm eval ... --transcripts N`) is replayed on the env from its task
   seeds and printed actions, so every step's true state is known; per step it counts whether the response
   parsed, wrote both number fields, and wrote them right, and how many digits the written numbers have.

    .venv/bin/python scripts/numberline_read_write.py --models RUN/seed0/tiny-vlm RUN/seed0/sft/run/final \
        --transcripts /tmp/sft_ood_transcript/transcript.txt
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter

ENV_ID = "gflowvlm/NumberLine-v0"
FIELD = r'"{name}":\s*(\d+)'


def reading(model_dir: str, pairs_per_split: int, seed: int, caption: str = "image") -> dict[str, float]:
    """Greedy exact-caption accuracy of the model in `model_dir` on `pairs_per_split` fresh pairs per split;
    `caption="fields"` asks with the reading instruction for the reply's state fields instead."""
    import torch
    from transformers import AutoModelForImageTextToText

    from gflowvlm.model.env_alignment import recipe
    from gflowvlm.model.loading import load_processor
    from gflowvlm.model.vision_alignment import INSTRUCTION, caption_accuracy, caption_pairs
    from gflowvlm.prompting import reading_instruction

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    processor = load_processor(model_dir)
    image_size = recipe(ENV_ID).image_size  # the size the tiny model was aligned and trained at
    instruction = reading_instruction(["current number", "target number"]) if caption == "fields" else INSTRUCTION
    return {split: caption_accuracy(model, processor, caption_pairs([ENV_ID], pairs_per_split, image_size,
                                                                     seed + index, split=split, caption=caption),
                                    instruction=instruction)
            for index, split in enumerate(("id", "ood"))}


def writing(transcript: str) -> dict:
    """Replay `transcript` on the env; the shares of steps that parsed and wrote the number fields right."""
    import gymnasium

    import envs  # noqa: F401  (registers the gflowvlm/ environments)

    text = open(transcript).read()
    split = re.search(r"stays between 0 and (\d+)", text).group(1)
    env = gymnasium.make(ENV_ID, split="id" if split == "5" else "ood", horizon="optimal").unwrapped
    counts, digits = Counter(), Counter()
    for episode in text.split("=== episode ")[1:]:
        env.reset(seed=int(re.search(r"task seed (\d+)", episode).group(1)))
        for step in episode.split("--- step ")[1:]:
            response = step.split("\nresponse:", 1)[1].split("\naction:", 1)[0]
            action_line = step.split("\naction:", 1)[1].split("\n", 1)[0]
            counts["steps"] += 1
            counts["parsed"] += "[not parsed]" not in action_line
            current = re.search(FIELD.format(name="current number"), response)
            target = re.search(FIELD.format(name="target number"), response)
            if current and target:
                counts["fields"] += 1
                counts["current_right"] += int(current.group(1)) == env.current
                counts["target_right"] += int(target.group(1)) == env.target
                digits.update(len(match.group(1)) for match in (current, target))
            env.step(action_line.split()[0])
    steps, fields = counts["steps"], max(1, counts["fields"])
    return {"steps": steps, "parse_rate": counts["parsed"] / steps, "wrote_both_fields": counts["fields"] / steps,
            "current_right_when_written": counts["current_right"] / fields,
            "target_right_when_written": counts["target_right"] / fields,
            "digits_written": dict(sorted(digits.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=[], help="model directories to caption with")
    parser.add_argument("--transcripts", nargs="*", default=[], help="NumberLine eval transcripts to replay")
    parser.add_argument("--pairs", type=int, default=128, help="caption pairs per split (default 128)")
    parser.add_argument("--seed", type=int, default=12345, help="seeds the caption pairs (default 12345)")
    parser.add_argument("--fields", action="store_true",
                        help="also read each model in the reply's syntax (the reading records' instruction)")
    args = parser.parse_args()
    from gflowvlm.reproduce.results import git_commit

    command = " ".join(["scripts/numberline_read_write.py", *sys.argv[1:]])
    print(json.dumps({"commit": git_commit(), "command": command}))
    for model_dir in args.models:
        print(json.dumps({"model": model_dir, "exact_captions": reading(model_dir, args.pairs, args.seed)}))
        if args.fields:
            print(json.dumps({"model": model_dir,
                              "exact_fields": reading(model_dir, args.pairs, args.seed, caption="fields")}))
    for transcript in args.transcripts:
        print(json.dumps({"transcript": transcript, **writing(transcript)}))


if __name__ == "__main__":
    main()
