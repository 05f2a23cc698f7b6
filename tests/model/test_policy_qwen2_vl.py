"""Qwen2-VL and Qwen2.5-VL (`image_grid_thw`, `mm_token_type_ids`, M-RoPE positions) through the same policy code.

The model is saved and loaded with AutoModelForImageTextToText, the processor with the project's loader. transformers
5 builds these processors only with a video processor, and video processors need torchvision; where torchvision is
missing (this CPU machine: only CUDA builds of it exist for this torch) the loader falls back to the library's
processor minus the video part (gflowvlm/model/image_only_processors.py), whose outputs are checked here against
the library class itself.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, Qwen2_5_VLProcessor, Qwen2VLProcessor

from gflowvlm.config import ModelConfig
from gflowvlm.model.adapters import apply_adapters
from gflowvlm.model.corpus import build_corpus
from gflowvlm.model.generation import suppressed_token_ids
from gflowvlm.model.loading import load_processor, quantization_config
from gflowvlm.model.tiny_vlm import (tiny_image_processor, tiny_model, tiny_model_config, tiny_processor,
                                     tiny_tokenizer)
from gflowvlm.policy import VLMPolicy
from gflowvlm.prompting import Prompt

RESPONSES = ['{"thoughts": "hit on 11", "action": "hit"}', '{ "action" :  "stand" }', '{"thoughts": "none"}']
LIBRARY = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor}


@pytest.fixture(scope="module", params=sorted(LIBRARY))
def saved(request, tmp_path_factory):
    family = request.param
    directory = tmp_path_factory.mktemp(f"tiny_{family}")
    tokenizer = tiny_tokenizer(family, build_corpus(episodes_per_env=1))
    tiny_model(tiny_model_config(family, tokenizer, 64), seed=0).save_pretrained(directory)
    tiny_processor(family, tiny_image_processor(family, 64), tokenizer).save_pretrained(directory)
    return directory, tokenizer


@pytest.fixture(scope="module")
def policy(saved):
    directory, tokenizer = saved
    processor = load_processor(str(directory))
    model = AutoModelForImageTextToText.from_pretrained(directory)
    assert type(model).__name__ in ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
    config = ModelConfig(name_or_path=str(directory), lora_r=4, lora_dropout=0.0, head_hidden=[16])
    policy = VLMPolicy(apply_adapters(model, config), processor, config, heads=("value",))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return policy.eval()


def test_the_loaded_processor_is_the_library_one_image_for_image(policy):
    library = next(cls for cls in LIBRARY.values() if isinstance(policy.processor, cls))

    class WithoutVideo(library):  # the library class itself, its one torchvision check skipped
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    reference = WithoutVideo(image_processor=policy.processor.image_processor, tokenizer=policy.tokenizer,
                             video_processor=None, chat_template=policy.processor.chat_template)
    reference.__class__ = library
    from gflowvlm.model.batching import encode_prompts

    ours, theirs = (encode_prompts(p, prompts(3), padding_side="left") for p in (policy.processor, reference))
    assert set(ours) == set(theirs) and all(torch.equal(ours[key], theirs[key]) for key in ours)


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
