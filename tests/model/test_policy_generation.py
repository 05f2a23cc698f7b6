"""Generation: batched mixed-length prompts with images, special tokens never sampled, stopping, seeding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowvlm.config import ModelConfig
from gflowvlm.model.corpus import build_corpus
from gflowvlm.model.generation import JsonObjectEnd, json_object_closed, suppressed_token_ids
from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm
from gflowvlm.policy import VLMPolicy
from gflowvlm.prompting import Prompt



@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_llava")
    save_tiny_vlm(*build_tiny_vlm("llava", 64, seed=0, corpus=build_corpus(episodes_per_env=1)), directory)
    config = ModelConfig(name_or_path=str(directory), lora_r=4, lora_dropout=0.0, head_hidden=[16])
    return VLMPolicy.from_config(config, heads=())


def mixed_prompts(n: int = 5) -> list[Prompt]:
    rng = np.random.default_rng(1)
    return [Prompt(text="Task: reach the target.\n" + "Step: current number 2. You chose: -\n" * (3 * i),
                   image=rng.integers(0, 256, (40 + 16 * i, 64, 3), dtype=np.uint8)) for i in range(n)]


class LogitEdit:
    """Forward hook on the output layer that rewrites the logits of the newest position during generate()."""

    def __init__(self, policy: VLMPolicy, edit):
        self.edit = edit
        self.step = 0
        self.handle = policy.model.get_output_embeddings().register_forward_hook(self)

    def __call__(self, module, inputs, output):
        output = output.clone()
        output[:, -1] = self.edit(output[:, -1], self.step)
        self.step += 1
        return output

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_batch_of_mixed_prompts_returns_clean_generations(policy):
    prompts = mixed_prompts()
    outputs = policy.generate(prompts, max_new_tokens=12, seed=0)
    assert len(outputs) == len(prompts)
    suppressed = set(suppressed_token_ids(policy.tokenizer, policy.processor, keep=[policy.tokenizer.eos_token_id]))
    for output in outputs:
        assert 1 <= len(output.token_ids) <= 12
        assert not suppressed & set(output.token_ids)  # no padding, no image token
        assert output.text == policy.tokenizer.decode(output.token_ids, skip_special_tokens=True)


def test_image_and_special_tokens_are_never_generated_even_when_most_likely(policy):
    tokenizer = policy.tokenizer
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    special = suppressed_token_ids(tokenizer, policy.processor, keep=[tokenizer.eos_token_id])
    assert image_id in special and tokenizer.pad_token_id in special and tokenizer.bos_token_id in special
    assert tokenizer.eos_token_id not in special

    def favour_specials(logits, step):
        logits[:, special] += 1000.0
        return logits

    prompts = mixed_prompts(3)
    with LogitEdit(policy, favour_specials):
        # Without suppression, the plain HF call does produce the image token: the edit bites.
        encoded = policy.processor(
            text=policy.processor.apply_chat_template(
                [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]],
                add_generation_prompt=True, tokenize=False),
            images=[prompts[0].image], return_tensors="pt", add_special_tokens=False)
        raw = policy.model.generate(**encoded, max_new_tokens=3, do_sample=False, pad_token_id=0)
        assert set(raw[0, encoded["input_ids"].shape[1]:].tolist()) & set(special)
        for do_sample in (False, True):
            outputs = policy.generate(prompts, max_new_tokens=8, do_sample=do_sample, seed=3)
            assert all(not set(special) & set(o.token_ids) for o in outputs)


def test_greedy_generation_is_the_same_alone_and_in_a_left_padded_batch(policy):
    prompts = mixed_prompts(4)
    together = policy.generate(prompts, max_new_tokens=10, do_sample=False, stop_at_json_end=False)
    for prompt, output in zip(prompts, together):
        alone = policy.generate([prompt], max_new_tokens=10, do_sample=False, stop_at_json_end=False)[0]
        assert alone.token_ids == output.token_ids
    zero_temperature = policy.generate(prompts, max_new_tokens=10, temperature=0.0, stop_at_json_end=False)
    assert [o.token_ids for o in zero_temperature] == [o.token_ids for o in together]


def test_sampling_is_seedable_and_otherwise_varies(policy):
    prompts = mixed_prompts(3)
    first = policy.generate(prompts, max_new_tokens=10, seed=11)
    again = policy.generate(prompts, max_new_tokens=10, seed=11)
    other = policy.generate(prompts, max_new_tokens=10, seed=12)
    assert [o.token_ids for o in first] == [o.token_ids for o in again]
    assert [o.token_ids for o in first] != [o.token_ids for o in other]
    torch.manual_seed(0)
    unseeded = [policy.generate(prompts, max_new_tokens=10) for _ in range(2)]
    assert [o.token_ids for o in unseeded[0]] != [o.token_ids for o in unseeded[1]]


def scripted(policy, text: str):
    """A logit edit that makes the model write `text` token by token, then EOS."""
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"] + [policy.tokenizer.eos_token_id]

    def force(logits, step):
        forced = torch.full_like(logits, -1e9)
        forced[:, ids[min(step, len(ids) - 1)]] = 0.0
        return forced
    return force


def test_generation_stops_when_the_json_object_closes_or_at_eos(policy):
    prompts = mixed_prompts(2)
    script = '{"thoughts": "a } in a string", "action": "+"} and more'
    with LogitEdit(policy, scripted(policy, script)):
        stopped = policy.generate(prompts, max_new_tokens=40, seed=0)
    assert [o.text for o in stopped] == ['{"thoughts": "a } in a string", "action": "+"}'] * 2
    with LogitEdit(policy, scripted(policy, script)):
        full = policy.generate(prompts, max_new_tokens=40, seed=0, stop_at_json_end=False)
    assert [o.text for o in full] == [script] * 2
    assert all(o.token_ids[-1] == policy.tokenizer.eos_token_id for o in full)
    with LogitEdit(policy, scripted(policy, script)):
        short = policy.generate(prompts, max_new_tokens=3, seed=0)
    assert all(len(o.token_ids) == 3 for o in short)


def test_json_object_closed():
    assert json_object_closed('{"a": 1}')
    assert json_object_closed('text {"a": {"b": 2}} more')
    assert not json_object_closed('{"a": "}"')
    assert not json_object_closed('{"a": "x\\"}"')
    assert not json_object_closed("no braces } here")
    assert json_object_closed('} {"action": "+"}')


def test_json_stop_criterion_is_per_sequence(policy):
    tokenizer = policy.tokenizer
    rows = [tokenizer("P", add_special_tokens=False)["input_ids"] * 2 + tokenizer(t, add_special_tokens=False)[
        "input_ids"] for t in ('{"a": 1}', '{"a": ')]
    width = max(map(len, rows))
    batch = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    assert JsonObjectEnd(tokenizer, prompt_length=2)(batch).tolist() == [True, False]


def test_bad_generation_settings_are_clear_errors(policy):
    with pytest.raises(ValueError, match="top_p"):
        policy.generate(mixed_prompts(1), top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        policy.generate(mixed_prompts(1), max_new_tokens=0)
    with pytest.raises(ValueError, match="no prompts"):
        policy.generate([])


def test_done_token_is_scored_but_not_sampled_unless_allowed(policy):
    done = policy.done_token_id

    def favour_done(logits, step):
        logits[:, done] += 1000.0
        return logits

    prompts = mixed_prompts(2)
    with LogitEdit(policy, favour_done):
        suppressed = policy.generate(prompts, max_new_tokens=4, do_sample=False)
        allowed = policy.generate(prompts, max_new_tokens=4, do_sample=False, allow_done=True)
    assert all(done not in o.token_ids for o in suppressed)
    assert all(o.token_ids[0] == done for o in allowed)
