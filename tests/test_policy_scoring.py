"""Scoring: equal to a naive per-token computation, batch-invariant, CoT/action split, gradients, save/reload."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from gflowvlm.config import ModelConfig
from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm
from gflowvlm.policy import VLMPolicy
from gflowvlm.prompting import Prompt

# Per token: equal to 1e-5. A sum of n tokens is then equal to n * 1e-5 (float32 cannot do better: a sum near
# -300, typical of an untrained model, is stored with a spacing of 3e-5).
TOLERANCE = dict(atol=1e-5, rtol=0.0)
RESPONSES = [
    '{"thoughts": "The current number 3 is below 5, so I add.", "action": "+"}',
    '{ "thoughts" :"spaced   out"  ,   "action"  :   "go to fridge 1"   }',
    '{"thoughts": "ünïcödé ✓ 漢字 🙂", "action": "stand"}',
    '{"thoughts": "no action field here"}',
    '{"action": 10}',
    "",
]
# What the action tokens of each response above decode to ("" = no action tokens).
ACTIONS = ["+", "go to fridge 1", "stand", "", "10", ""]




@pytest.fixture(scope="module", params=["llava", "llava_next"])
def tiny_dir(request, tmp_path_factory, corpus):
    directory = tmp_path_factory.mktemp(f"tiny_{request.param}")
    save_tiny_vlm(*build_tiny_vlm(request.param, 64, seed=0, corpus=corpus), directory)
    return directory


def make_policy(directory, **changes) -> VLMPolicy:
    config = ModelConfig(name_or_path=str(directory), lora_r=4, lora_dropout=0.0, head_hidden=[32, 16], **changes)
    policy = VLMPolicy.from_config(config, heads=("log_z", "flow", "value"))
    with torch.no_grad():  # LoRA starts as the identity (B = 0): move it so that adapters change the scores
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return policy.eval()


@pytest.fixture(scope="module")
def policy(tiny_dir):
    return make_policy(tiny_dir)


def prompts(n: int, seed: int = 0) -> list[Prompt]:
    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (48, 80), (96, 64)]
    return [Prompt(text="Task: move to the target.\nHistory:\n" + "Step: current number 3. You chose: +\n" * (i % 4)
                   + "Actions: +, -", image=rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8))
            for i in range(n)]


def naive_scores(policy: VLMPolicy, prompt: Prompt, response: str) -> tuple[float, float, list[float]]:
    """(total response log-prob, log p([DONE]) at the first response position, per-token log-probs): one
    unpadded sequence, full logits, log-softmax over every position."""
    processor, tokenizer = policy.processor, policy.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = processor(text=[text], images=[prompt.image], return_tensors="pt", add_special_tokens=False)
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    prompt_length = encoded["input_ids"].shape[1]
    encoded["input_ids"] = torch.cat([encoded["input_ids"], torch.tensor([response_ids])], dim=1)
    encoded["attention_mask"] = torch.ones_like(encoded["input_ids"])
    with torch.no_grad():
        logp = policy.model(**encoded).logits[0].float().log_softmax(-1)
    per_token = [float(logp[prompt_length - 1 + j, token]) for j, token in enumerate(response_ids)]
    return sum(per_token), float(logp[prompt_length - 1, policy.done_token_id]), per_token


def test_scores_equal_a_naive_per_token_computation(policy):
    batch_prompts = prompts(len(RESPONSES))
    with torch.no_grad():
        out = policy.score(batch_prompts, RESPONSES, cot_weight=0.3)
    for i, (prompt, response) in enumerate(zip(batch_prompts, RESPONSES)):
        total, done, per_token = naive_scores(policy, prompt, response)
        n = len(per_token)
        assert int(out.action_tokens[i] + out.cot_tokens[i]) == n
        torch.testing.assert_close(out.token_logp[i, :n].tolist(), per_token, **TOLERANCE)
        assert out.token_logp[i, n:].abs().sum() == 0
        torch.testing.assert_close(float(out.action_logp[i] + out.cot_logp[i]), total, atol=1e-5 * n, rtol=0.0)
        torch.testing.assert_close(float(out.done_logp[i]), done, **TOLERANCE)
    torch.testing.assert_close(out.log_pf, out.action_logp + 0.3 * out.cot_logp)


def test_cot_action_split_follows_the_action_value(policy):
    batch = policy.prepare_batch(prompts(len(RESPONSES)), RESPONSES)
    ids = batch["model_inputs"]["input_ids"]
    for i, expected in enumerate(ACTIONS):
        action_ids = ids[i][batch["action_mask"][i]].tolist()
        assert policy.tokenizer.decode(action_ids).strip() == expected, RESPONSES[i]
        response_ids = ids[i][batch["response_mask"][i]].tolist()
        assert response_ids[-1] == policy.tokenizer.eos_token_id
        assert policy.tokenizer.decode(response_ids[:-1]) == RESPONSES[i]
    with torch.no_grad():
        out = policy(batch)
    missing = RESPONSES.index('{"thoughts": "no action field here"}')
    assert int(out.action_tokens[missing]) == 0 and float(out.action_logp[missing]) == 0.0
    assert int(out.cot_tokens[RESPONSES.index("")]) == 1  # the EOS alone


def test_scores_do_not_depend_on_batch_composition(policy):
    batch_prompts = prompts(len(RESPONSES))
    with torch.no_grad():
        together = policy.score(batch_prompts, RESPONSES)
        reversed_ = policy.score(batch_prompts[::-1], RESPONSES[::-1])
        for i in range(len(RESPONSES)):
            alone = policy.score(batch_prompts[i:i + 1], RESPONSES[i:i + 1])
            j = len(RESPONSES) - 1 - i
            n = int(alone.action_tokens[0] + alone.cot_tokens[0])
            for other, row in ((together, i), (reversed_, j)):
                torch.testing.assert_close(alone.token_logp[0, :n], other.token_logp[row, :n], **TOLERANCE)
                torch.testing.assert_close(alone.done_logp[0], other.done_logp[row], **TOLERANCE)
                torch.testing.assert_close(alone.hidden[0], other.hidden[row], **TOLERANCE)
                for field in ("action_logp", "cot_logp"):
                    torch.testing.assert_close(getattr(alone, field)[0], getattr(other, field)[row],
                                               atol=1e-5 * n, rtol=0.0)


def test_prompt_only_scoring_gives_the_same_state_quantities(policy):
    batch_prompts = prompts(3)
    with torch.no_grad():
        with_responses = policy.score(batch_prompts, RESPONSES[:3])
        prompt_only = policy.score(batch_prompts, None)
    torch.testing.assert_close(prompt_only.done_logp, with_responses.done_logp, **TOLERANCE)
    torch.testing.assert_close(prompt_only.hidden, with_responses.hidden, **TOLERANCE)
    assert prompt_only.action_tokens.sum() == 0 and prompt_only.cot_tokens.sum() == 0


def test_heads_start_near_zero_and_gradients_reach_only_trainable_weights(tiny_dir):
    policy = make_policy(tiny_dir).train()
    out = policy.score(prompts(3), RESPONSES[:3])
    outputs = {name: policy.head(name, out.hidden) for name in ("log_z", "flow", "value")}
    assert all(o.shape == (3,) and float(o.abs().max()) < 0.05 for o in outputs.values())
    (out.log_pf.sum() + sum(o.sum() for o in outputs.values())).backward()
    adapters, heads = policy.parameter_groups()
    assert adapters and heads
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in heads)
    lora_a = [p for n, p in policy.model.named_parameters() if "lora_A" in n]
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in lora_a)
    frozen = [(n, p) for n, p in policy.model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for _, p in frozen)
    assert any("vision_tower" in n for n, _ in frozen)


def assert_reload_reproduces_scores(policy, directory):
    """Save, reload, and check the reloaded policy scores exactly as the original; returns the reloaded one."""
    with torch.no_grad():
        before = policy.score(prompts(2), RESPONSES[:2])
    policy.save_pretrained(str(directory))
    reloaded = VLMPolicy.from_pretrained(str(directory)).eval()
    with torch.no_grad():
        after = reloaded.score(prompts(2), RESPONSES[:2])
    assert torch.equal(after.log_pf, before.log_pf) and torch.equal(after.hidden, before.hidden)
    return reloaded


def test_saving_and_reloading_reproduces_scores_and_heads_exactly(policy, tiny_dir, tmp_path):
    with torch.no_grad():
        for parameter in policy.heads.parameters():
            parameter.add_(0.01)
        before = policy.score(prompts(4), RESPONSES[:4])
        heads_before = {name: policy.head(name, before.hidden) for name in policy.heads}
    policy.save_pretrained(str(tmp_path))
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "heads.safetensors").is_file()
    reloaded = VLMPolicy.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        after = reloaded.score(prompts(4), RESPONSES[:4])
        for name in policy.heads:
            assert torch.equal(reloaded.head(name, after.hidden), heads_before[name])
    for field in ("action_logp", "cot_logp", "done_logp", "hidden", "log_pf"):
        assert torch.equal(getattr(after, field), getattr(before, field)), field
    # The adapter directory is an ordinary peft adapter.
    plain = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_dir), str(tmp_path))
    saved = {n: p for n, p in policy.model.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in plain.named_parameters() if "lora_" in n}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)


@pytest.mark.parametrize("adapter", ["full", "none"])
def test_full_and_head_only_policies_reload_exactly(tiny_dir, tmp_path, adapter):
    policy = make_policy(tiny_dir, adapter=adapter)
    with torch.no_grad():
        if adapter == "full":
            policy.model.lm_head.weight.mul_(1.5)
    reloaded = assert_reload_reproduces_scores(policy, tmp_path)
    trainable = [p for p in reloaded.model.parameters() if p.requires_grad]
    assert bool(trainable) == (adapter == "full")


def test_a_fully_trained_vision_tower_is_saved_in_the_adapter(tiny_dir, tmp_path):
    policy = make_policy(tiny_dir, vision="full")
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "modules_to_save" in name and parameter.requires_grad:
                parameter.mul_(1.1)
    reloaded = assert_reload_reproduces_scores(policy, tmp_path)
    perturbed, saved = vision_tower_copy(policy), vision_tower_copy(reloaded)
    fresh = vision_tower_copy(make_policy(tiny_dir, vision="full"))
    assert perturbed and saved.keys() == perturbed.keys() == fresh.keys()
    assert all(torch.equal(saved[name], perturbed[name]) for name in perturbed)
    # x * 1.1 != x for every nonzero x: each tensor that is not all zeros was moved away from a fresh build's.
    assert [n for n in perturbed if not torch.equal(perturbed[n], fresh[n])] == [n for n in fresh if fresh[n].any()]
    assert any(fresh[name].any() for name in fresh)


def vision_tower_copy(policy) -> dict[str, torch.Tensor]:
    """The vision tower's trained copy (peft's modules_to_save), by parameter name."""
    return {name: parameter.detach().clone() for name, parameter in policy.model.named_parameters()
            if "vision_tower.modules_to_save" in name}


def test_init_from_starts_from_a_saved_adapter(policy, tiny_dir, tmp_path):
    policy.save_pretrained(str(tmp_path))
    config = dataclasses.replace(policy.config, init_from=str(tmp_path))
    started = VLMPolicy.from_config(config, heads=("log_z",)).eval()
    with torch.no_grad():
        a = policy.score(prompts(2), RESPONSES[:2])
        b = started.score(prompts(2), RESPONSES[:2])
    assert torch.equal(a.log_pf, b.log_pf)
    assert torch.equal(started.head("log_z", b.hidden), policy.head("log_z", a.hidden))
    assert all(p.requires_grad for n, p in started.model.named_parameters() if "lora_" in n)


def test_bad_inputs_are_clear_errors(policy):
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        policy.prepare_batch(prompts(2), ["x"])
    with pytest.raises(ValueError, match="uint8 H x W x 3"):
        policy.prepare_batch([Prompt(text="x", image=np.zeros((8, 8), np.uint8))], ["y"])
    with pytest.raises(ValueError, match="no 'nope' head"):
        policy.head("nope", torch.zeros(1, 128))
    assert policy.count_tokens("current number 12") == len(policy.tokenizer.tokenize("current number 12"))
