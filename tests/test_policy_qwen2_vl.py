"""The second family, Qwen2-VL (`image_grid_thw`, `mm_token_type_ids`, M-RoPE positions), through the same policy code.

The model is saved and loaded with AutoModelForImageTextToText. transformers 5 builds a Qwen2-VL processor only with
a video processor, and video processors need torchvision; where torchvision is missing (this CPU machine: only
CUDA builds of it exist for this torch) the test assembles the real `Qwen2VLProcessor` around its image processor
and tokenizer without the video part (its image + text processing is the library's own code). With torchvision,
the processor is the one saved next to the model, loaded with AutoProcessor.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, Qwen2VLProcessor
from transformers.utils import is_torchvision_available

from gflowvlm.config import ModelConfig
from gflowvlm.model.adapters import apply_adapters
from gflowvlm.model.corpus import build_corpus
from gflowvlm.model.generation import suppressed_token_ids
from gflowvlm.model.loading import quantization_config
from gflowvlm.model.tiny_vlm import (tiny_image_processor, tiny_model, tiny_model_config, tiny_processor,
                                     tiny_tokenizer)
from gflowvlm.policy import VLMPolicy
from gflowvlm.prompting import Prompt

RESPONSES = ['{"thoughts": "hit on 11", "action": "hit"}', '{ "action" :  "stand" }', '{"thoughts": "none"}']



class _ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None  # the one check that needs torchvision's video processor class
        return super().check_argument_for_proper_class(argument_name, argument)


def qwen_processor(image_processor, tokenizer, directory):
    if is_torchvision_available():
        tiny_processor("qwen2_vl", image_processor, tokenizer).save_pretrained(directory)
        return AutoProcessor.from_pretrained(directory)
    processor = _ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                           chat_template=tokenizer.chat_template)
    processor.__class__ = Qwen2VLProcessor  # constructed: from here on it is the library's class
    return processor


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_qwen2_vl")
    tokenizer = tiny_tokenizer("qwen2_vl", build_corpus(episodes_per_env=1))
    tiny_model(tiny_model_config("qwen2_vl", tokenizer, 64), seed=0).save_pretrained(directory)
    return directory, tokenizer


@pytest.fixture(scope="module")
def policy(saved):
    directory, tokenizer = saved
    processor = qwen_processor(tiny_image_processor("qwen2_vl", 64), tokenizer, directory)
    model = AutoModelForImageTextToText.from_pretrained(directory)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    config = ModelConfig(name_or_path=str(directory), lora_r=4, lora_dropout=0.0, head_hidden=[16])
    policy = VLMPolicy(apply_adapters(model, config), processor, config, heads=("value",))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return policy.eval()


def prompts(n: int) -> list[Prompt]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (40, 100), (120, 50)]
    return [Prompt(text="Task: win.\n" + "Step: dealer shows 9. You chose: hit\n" * i + "Actions: hit, stand",
                   image=rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


def test_processor_outputs_reach_the_model(policy):
    batch = policy.prepare_batch(prompts(3), RESPONSES)
    inputs = batch["model_inputs"]
    assert {"image_grid_thw", "mm_token_type_ids", "pixel_values"} <= set(inputs)
    image_id = policy.processor.image_token_id
    # mm_token_type_ids marks exactly the image tokens, response tokens included as text.
    assert torch.equal(inputs["mm_token_type_ids"].bool(), inputs["input_ids"] == image_id)


def test_scores_equal_naive_and_do_not_depend_on_the_batch(policy):
    batch_prompts = prompts(3)
    with torch.no_grad():
        together = policy.score(batch_prompts, RESPONSES)
        for i in range(3):
            alone = policy.score(batch_prompts[i:i + 1], RESPONSES[i:i + 1])
            n = int(alone.action_tokens[0] + alone.cot_tokens[0])
            torch.testing.assert_close(alone.token_logp[0, :n], together.token_logp[i, :n], atol=1e-5, rtol=0.0)
            torch.testing.assert_close(alone.hidden[0], together.hidden[i], atol=1e-5, rtol=0.0)
            torch.testing.assert_close(alone.done_logp[0], together.done_logp[i], atol=1e-5, rtol=0.0)
            # Naive: the unpadded sequence through the model, every position normalised.
            batch = policy.prepare_batch(batch_prompts[i:i + 1], RESPONSES[i:i + 1])
            logp = policy.model(**batch["model_inputs"]).logits[0].float().log_softmax(-1)
            ids = batch["model_inputs"]["input_ids"][0]
            start = int(batch["prompt_lengths"][0])
            naive = logp[start - 1:-1].gather(1, ids[start:, None]).squeeze(1)
            torch.testing.assert_close(alone.token_logp[0, :n], naive, atol=1e-5, rtol=0.0)
    action = [policy.tokenizer.decode(ids) for ids in _action_ids(policy, batch_prompts)]
    assert [a.strip() for a in action] == ["hit", "stand", ""]


def _action_ids(policy, batch_prompts):
    batch = policy.prepare_batch(batch_prompts, RESPONSES)
    return [batch["model_inputs"]["input_ids"][i][batch["action_mask"][i]].tolist() for i in range(3)]


def test_generation_suppresses_vision_tokens_and_matches_alone(policy):
    special = set(suppressed_token_ids(policy.tokenizer, policy.processor, keep=[policy.tokenizer.eos_token_id]))
    vision = {policy.tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|vision_start|>",
                                                                   "<|video_pad|>", "<|im_start|>")}
    assert vision <= special
    batch_prompts = prompts(3)
    together = policy.generate(batch_prompts, max_new_tokens=8, do_sample=False, stop_at_json_end=False)
    for prompt, output in zip(batch_prompts, together):
        assert not special & set(output.token_ids)
        alone = policy.generate([prompt], max_new_tokens=8, do_sample=False, stop_at_json_end=False)[0]
        assert alone.token_ids == output.token_ids  # left padding + M-RoPE positions from the attention mask


def test_gradients_reach_adapters_and_heads_only(policy):
    policy.train()
    try:
        out = policy.score(prompts(2), RESPONSES[:2])
        (out.log_pf.sum() + policy.head("value", out.hidden).sum()).backward()
        adapters, heads = policy.parameter_groups()
        assert all(p.grad is not None for p in adapters + heads)
        assert all(p.grad is None for n, p in policy.model.named_parameters() if not p.requires_grad)
        assert not any("visual" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    finally:
        policy.zero_grad(set_to_none=True)
        policy.eval()


def test_4bit_loading_keeps_the_qwen_vision_tower_and_lm_head_unquantized(saved):
    import bitsandbytes as bnb

    directory, _ = saved
    config = ModelConfig(name_or_path=str(directory), adapter="qlora")
    model = AutoModelForImageTextToText.from_pretrained(directory, quantization_config=quantization_config(config))
    quantized = {name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert quantized == {name for name in linear if name.startswith("model.language_model.")}
    assert "lm_head" not in quantized and any(name.startswith("model.visual.") for name in linear)
