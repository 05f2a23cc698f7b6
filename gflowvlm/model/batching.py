"""Turning prompts (+ responses) into model inputs, for any processor.

Prompts go through the model's own chat template and processor (which expands the image placeholder and returns
whatever the family needs: `pixel_values`, `image_sizes`, `image_grid_thw`, `mm_token_type_ids`, ...). For scoring,
each response is tokenised ON ITS OWN and its ids are appended to its prompt's, then the end-of-sequence token:
the response's token boundaries therefore never depend on the prompt, and the action span (character offsets
from `gflowvlm.response_parser.action_span`) maps to tokens through the tokenizer's offset mapping, with no
token id written anywhere.

Scoring batches are right-padded: every real token then sits at the same position index as when the sample is
alone, so models that derive positions themselves (Llama's arange, Qwen2-VL's M-RoPE from the attention mask) see
the same positions whatever the batch, and no family needs its own position ids.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from gflowvlm.response_parser import action_span


def conversations(prompts: Sequence[Any]) -> list[list[dict]]:
    """One user message per prompt: the image, then the prompt text."""
    return [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text}]}]
            for prompt in prompts]


def encode_prompts(processor, prompts: Sequence[Any], padding_side: str) -> dict[str, torch.Tensor]:
    """The processor's output for `prompts` (chat template applied, generation prompt added), padded."""
    if not prompts:
        raise ValueError("no prompts given")
    texts = processor.apply_chat_template(conversations(prompts), add_generation_prompt=True, tokenize=False)
    bos = processor.tokenizer.bos_token
    # As processor.apply_chat_template(tokenize=True) does: a template that writes BOS itself must not get another.
    add_special_tokens = not (bos is not None and texts[0].startswith(bos))
    # One list of images per prompt: every processor reads that, and some (Gemma 3) read nothing else.
    images = [[_image(prompt.image)] for prompt in prompts]
    encoded = processor(text=texts, images=images, padding=True, padding_side=padding_side, return_tensors="pt",
                        add_special_tokens=add_special_tokens)
    # PaliGemma's processor also returns training labels (the suffix); they are a target, never a model input.
    return {key: value for key, value in encoded.items() if key != "labels"}


def token_keys(encoded: dict[str, torch.Tensor]) -> list[str]:
    """Keys that hold one value per token (input ids, attention mask, token-type ids such as Qwen2-VL's)."""
    shape = encoded["input_ids"].shape
    return [key for key, value in encoded.items() if isinstance(value, torch.Tensor) and value.shape == shape
            and not torch.is_floating_point(value)]


def build_score_batch(processor, prompts: Sequence[Any], responses: Sequence[str] | None,
                      response_token_types: dict[str, int] | None = None) -> dict[str, Any]:
    """Right-padded prompt + response sequences, the response / action token masks and the prompt lengths.

    Returns {"model_inputs": {...}, "prompt_lengths": [N], "response_mask": [N, L], "action_mask": [N, L],
    "logits_to_keep": int}. response_mask[i, t] is True when token t is a response token (incl. the final EOS);
    action_mask[i, t] when it overlaps the action value. With responses=None only prompts are encoded.
    `response_token_types`: per-token inputs whose response tokens are not 0 (families.Family).
    """
    response_token_types = response_token_types or {}
    if responses is not None and len(responses) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    tokenizer = processor.tokenizer
    encoded = encode_prompts(processor, prompts, padding_side="right")
    prompt_lengths = encoded["attention_mask"].sum(1).long()
    keys = token_keys(encoded)
    n = len(prompts)
    if responses is None:
        response_ids: list[list[int]] = [[] for _ in range(n)]
        action_flags: list[list[bool]] = [[] for _ in range(n)]
    else:
        response_ids, action_flags = tokenize_responses(tokenizer, responses)
    lengths = [int(prompt_lengths[i]) + len(response_ids[i]) for i in range(n)]
    width = max(lengths)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    inputs = {key: value for key, value in encoded.items() if key not in keys}
    for key in keys:
        fill = pad_id if key == "input_ids" else 0
        inputs[key] = torch.full((n, width), fill, dtype=encoded[key].dtype)
    response_mask = torch.zeros((n, width), dtype=torch.bool)
    action_mask = torch.zeros((n, width), dtype=torch.bool)
    for i in range(n):
        p, total = int(prompt_lengths[i]), lengths[i]
        real = encoded["attention_mask"][i].bool()  # whatever side the processor padded on
        for key in keys:
            inputs[key][i, :p] = encoded[key][i][real]
        inputs["input_ids"][i, p:total] = torch.tensor(response_ids[i], dtype=inputs["input_ids"].dtype)
        inputs["attention_mask"][i, p:total] = 1
        # Other per-token keys (token types) are 0 for text, which every response token is, unless the family
        # says otherwise (PaliGemma's answer tokens).
        for key, value in response_token_types.items():
            if key in keys:
                inputs[key][i, p:total] = value
        response_mask[i, p:total] = True
        action_mask[i, p:total] = torch.tensor(action_flags[i], dtype=torch.bool)
    # Logits are needed from the last prompt token on: the last `logits_to_keep` positions cover every sample.
    logits_to_keep = width - int(prompt_lengths.min()) + 1
    return {"model_inputs": inputs, "prompt_lengths": prompt_lengths, "response_mask": response_mask,
            "action_mask": action_mask, "logits_to_keep": logits_to_keep}


def tokenize_responses(tokenizer, responses: Sequence[str]) -> tuple[list[list[int]], list[list[bool]]]:
    """Per response: its token ids + EOS, and per token whether it overlaps the action value's characters."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} gives no offset mapping: scoring needs a fast tokenizer")
    for response in responses:
        if not isinstance(response, str):
            raise ValueError(f"responses must be strings, got {type(response).__name__}")
    encoded = tokenizer(list(responses), add_special_tokens=False, return_offsets_mapping=True)
    all_ids, all_flags = [], []
    for response, ids, offsets in zip(responses, encoded["input_ids"], encoded["offset_mapping"]):
        span = action_span(response)
        if span is None:
            flags = [False] * len(ids)
        else:
            start, end = span
            flags = [token_start < end and token_end > start for token_start, token_end in offsets]
        all_ids.append(list(ids) + [tokenizer.eos_token_id])
        all_flags.append(flags + [False])  # EOS ends the response: it counts with the chain of thought
    return all_ids, all_flags


def _image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"prompt images must be uint8 H x W x 3 arrays, got {array.dtype} {array.shape}")
    return Image.fromarray(array)
