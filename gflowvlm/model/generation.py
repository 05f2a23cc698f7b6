"""Batched sampling settings: what may not be generated, when to stop, how to read the result.

- Special tokens are suppressed (the image placeholder above all: a sampled image token breaks the next forward
  with an "image tokens / features mismatch"), except end-of-sequence. `[DONE]` is an ordinary token.
- A sequence stops at EOS, or (optionally) as soon as its first top-level JSON object closes.
- Sampling draws from the model's full distribution (temperature / top-p only): every other warper a checkpoint's
  generation_config.json might set (top-k 50, repetition penalty, ...) is switched off explicitly, so the samples
  come from the same distribution that scoring evaluates.
"""
from __future__ import annotations

import torch
from transformers import GenerationConfig, StoppingCriteria


def eos_token_ids(tokenizer, model) -> list[int]:
    ids = [tokenizer.eos_token_id]
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return sorted({int(i) for i in ids if i is not None})


def suppressed_token_ids(tokenizer, processor, keep: list[int]) -> list[int]:
    """Every special token of the tokenizer and the processor's image / video tokens, minus `keep`."""
    ids = set(tokenizer.all_special_ids)
    ids.update(index for index, token in tokenizer.added_tokens_decoder.items() if token.special)
    for name in ("image_token_id", "video_token_id"):
        value = getattr(processor, name, None)
        if isinstance(value, int):
            ids.add(value)
    return sorted(ids - set(keep))


def sampling_config(*, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float, eos_ids: list[int],
                    pad_id: int, suppress: list[int]) -> GenerationConfig:
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be positive when sampling, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sampling = dict(temperature=float(temperature), top_p=float(top_p)) if do_sample else {}
    return GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=do_sample, num_beams=1, top_k=0, typical_p=1.0,
        repetition_penalty=1.0, no_repeat_ngram_size=0, epsilon_cutoff=0.0, eta_cutoff=0.0, min_new_tokens=0,
        eos_token_id=eos_ids, pad_token_id=pad_id, suppress_tokens=suppress or None, use_cache=True, **sampling)


class JsonScanner:
    """Tracks, character by character, whether the text so far has closed its first top-level {...}.

    Braces inside JSON strings do not count; text before the first "{" is skipped.
    """

    def __init__(self):
        self.depth = 0
        self.in_string = False
        self.escaped = False
        self.closed = False

    def feed(self, text: str) -> bool:
        for char in text:
            if self.closed:
                break
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_string = False
            elif char == '"' and self.depth > 0:
                self.in_string = True
            elif char == "{":
                self.depth += 1
            elif char == "}" and self.depth > 0:
                self.depth -= 1
                self.closed = self.depth == 0
        return self.closed


def json_object_closed(text: str) -> bool:
    """Whether `text` contains a complete top-level {...} (braces inside JSON strings do not count)."""
    return JsonScanner().feed(text)


class JsonObjectEnd(StoppingCriteria):
    """Stops a sequence once the text generated after `prompt_length` tokens closes its first JSON object.

    Only the new tokens are decoded at each step (braces, quotes and backslashes are whole characters in every
    tokenizer's pieces), so the check costs the same at token 5 and token 500.
    """

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.scanners: list[JsonScanner] = []
        self.seen = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        if not self.scanners:
            self.scanners = [JsonScanner() for _ in range(input_ids.shape[0])]
        new_columns = input_ids[:, self.seen:].tolist()
        self.seen = input_ids.shape[1]
        pieces = self.tokenizer.batch_decode(new_columns, skip_special_tokens=True)
        done = [scanner.feed(piece) for scanner, piece in zip(self.scanners, pieces)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def trim_generated(ids: list[int], eos_ids: list[int], pad_id: int, pad_is_generable: bool) -> list[int]:
    """Generated ids up to and including the first EOS; the padding generate() adds after a stop removed."""
    for position, token in enumerate(ids):
        if token in eos_ids:
            return ids[: position + 1]
    if not pad_is_generable:
        while ids and ids[-1] == pad_id:
            ids = ids[:-1]
    return ids
