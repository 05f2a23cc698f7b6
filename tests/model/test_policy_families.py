"""Qwen2.5-VL, Idefics3 (SmolVLM), Gemma 3, PaliGemma and LLaVA-OneVision through the same policy code as LLaVA.

Each tiny model is built here with random weights, saved, and reloaded by the project's loader
(AutoModelForImageTextToText + AutoProcessor, [DONE] added); then: LoRA on the language model only, the vision
side frozen / LoRA / full, batched scoring with the CoT / action split, batched greedy generation, and one SubTB
step. Without torchvision, Qwen2.5-VL's and LLaVA-OneVision's processors are the library's minus the video processor
(gflowvlm/model/image_only_processors.py), which the loader falls back to.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowvlm.config import ModelConfig
from gflowvlm.model.adapters import apply_adapters
from gflowvlm.model.corpus import build_corpus
from gflowvlm.model.families import FAMILIES, language_model_path, vision_module_paths
from gflowvlm.model.generation import suppressed_token_ids
from gflowvlm.model.loading import load_model_and_processor
from gflowvlm.model.tiny_vlm import VIDEO_PROCESSOR_FAMILIES, build_tiny_vlm, save_tiny_vlm
from gflowvlm.model.tokenizer import DONE_TOKEN
from gflowvlm.objectives import subtrajectory_balance
from gflowvlm.policy import VLMPolicy
from gflowvlm.prompting import Prompt

RESPONSES = ['{"thoughts": "hit on 11", "action": "hit"}', '{ "action" :  "stand" }', '{"thoughts": "none"}']
MODEL_CLASSES = {"idefics3": "Idefics3ForConditionalGeneration", "gemma3": "Gemma3ForConditionalGeneration",
                 "paligemma": "PaliGemmaForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                 "llava_onevision": "LlavaOnevisionForConditionalGeneration"}
PROCESSOR_CLASSES = {"idefics3": "Idefics3Processor", "gemma3": "Gemma3Processor", "paligemma": "PaliGemmaProcessor",
                     "qwen2_5_vl": "Qwen2_5_VLProcessor", "llava_onevision": "LlavaOnevisionProcessor"}
TABLE_ROWS = {"qwen2_5_vl": "qwen2_vl"}  # Qwen2.5-VL shares Qwen2-VL's row of the family table


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(episodes_per_env=1)


@pytest.fixture(scope="module", params=sorted(MODEL_CLASSES))
def saved(request, corpus, tmp_path_factory):
    family = request.param
    directory = tmp_path_factory.mktemp(f"tiny_{family}")
    save_tiny_vlm(*build_tiny_vlm(family, 64, seed=0, corpus=corpus), directory)
    return family, directory


def load(directory):
    return load_model_and_processor(ModelConfig(name_or_path=str(directory)), device="cpu")


@pytest.fixture(scope="module")
def policy(saved):
    family, directory = saved
    model, processor = load(directory)
    config = ModelConfig(name_or_path=str(directory), lora_r=4, lora_dropout=0.0, head_hidden=[16])
    policy = VLMPolicy(apply_adapters(model, config), processor, config, heads=("value",))
    with torch.no_grad():  # LoRA's B starts at 0: give the adapters an effect so that batching bugs would show
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return policy.eval()


def prompts(n: int) -> list[Prompt]:
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (40, 100), (120, 50)]
    return [Prompt(text="Task: win.\n" + "Step: dealer shows 9. You chose: hit\n" * i + "Actions: hit, stand",
                   image=rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


def test_saved_model_reloads_through_auto_classes_with_done(saved):
    family, directory = saved
    model, processor = load(directory)
    assert type(model).__name__ == MODEL_CLASSES[family]
    # The library's processor class; without torchvision, for the video families, its image-only subclass.
    assert PROCESSOR_CLASSES[family] in [cls.__name__ for cls in type(processor).__mro__]
    done = processor.tokenizer(DONE_TOKEN, add_special_tokens=False)["input_ids"]
    assert len(done) == 1 and done[0] < model.get_input_embeddings().weight.shape[0]
    assert len(processor.tokenizer) <= model.get_input_embeddings().weight.shape[0]
    family_entry = next(f for f in FAMILIES if model.config.model_type in f.model_types)
    assert family_entry.name == TABLE_ROWS.get(family, family)
    assert family_entry.needs_torchvision == (family in VIDEO_PROCESSOR_FAMILIES)
    batch = VLMPolicy(model, processor, ModelConfig(name_or_path=str(directory)), heads=()).prepare_batch(
        prompts(2), RESPONSES[:2])
    image_tokens = (batch["model_inputs"]["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert image_tokens[0] == (24 if family == "llava_onevision" else 16)  # 64x64: as LLaVA / LLaVA-NeXT
    if family in ("idefics3", "gemma3", "paligemma"):  # a fixed size (Qwen and OneVision keep the aspect ratio)
        assert image_tokens[1] == 16
    assert "labels" not in batch["model_inputs"]  # PaliGemma's processor returns them; they are no input


@pytest.mark.parametrize("vision", ["frozen", "lora", "full"])
def test_lora_on_the_language_model_only_and_the_vision_options(saved, vision):
    family, directory = saved
    model, _ = load(directory)
    decoder = language_model_path(model) + "."
    vision_paths = vision_module_paths(model)
    assert vision_paths and all(not path.startswith(decoder) for path in vision_paths)
    vision_params = {name for name, _ in model.named_parameters() if name.startswith(tuple(vision_paths))}
    config = ModelConfig(name_or_path=str(directory), lora_r=4, vision=vision)
    adapted = apply_adapters(model, config)
    trainable = [name for name, p in adapted.named_parameters() if p.requires_grad]
    lora = [name for name in trainable if ".lora_" in name]
    in_vision = [name for name in lora if any(f".{path}." in name for path in vision_paths)]
    in_decoder = [name for name in lora if f".{decoder}" in name]
    layers = model.config.get_text_config().num_hidden_layers
    assert len(in_decoder) == 2 * 4 * layers  # A and B of q, k, v, o in every decoder layer
    assert set(lora) == set(in_decoder) | set(in_vision)
    others = [name for name in trainable if ".lora_" not in name]
    if vision == "frozen":
        assert not in_vision and not others
    elif vision == "lora":
        assert in_vision and not others
    else:  # the tower and projector train fully, saved with the adapter
        assert not in_vision and others and all("modules_to_save" in name for name in others)
        assert len(others) == len(vision_params)


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
            batch = policy.prepare_batch(batch_prompts[i:i + 1], RESPONSES[i:i + 1])
            logp = policy.model(**batch["model_inputs"]).logits[0].float().log_softmax(-1)
            ids = batch["model_inputs"]["input_ids"][0]
            start = int(batch["prompt_lengths"][0])
            naive = logp[start - 1:-1].gather(1, ids[start:, None]).squeeze(1)
            torch.testing.assert_close(alone.token_logp[0, :n], naive, atol=1e-5, rtol=0.0)
    assert torch.isfinite(together.done_logp).all() and (together.done_logp < 0).all()
    batch = policy.prepare_batch(batch_prompts, RESPONSES)
    ids = batch["model_inputs"]["input_ids"]
    action = [policy.tokenizer.decode(ids[i][batch["action_mask"][i]].tolist()).strip() for i in range(3)]
    assert action == ["hit", "stand", ""]
    assert together.action_tokens[2] == 0 and (together.cot_tokens > 0).all()
    torch.testing.assert_close(together.log_pf, together.action_logp + together.cot_logp)


def test_response_tokens_are_scored_causally(policy):
    # A later response token must not change an earlier one's log-probability (PaliGemma's prefix-LM would let the
    # response attend both ways if its tokens were marked as prefix).
    one, two = prompts(1) * 2, ['{"thoughts": "a", "action": "hit"}', '{"thoughts": "a", "action": "stand"}']
    with torch.no_grad():
        scores = policy.score(one, two)
    shared = len(policy.tokenizer('{"thoughts": "a", "action": "', add_special_tokens=False)["input_ids"])
    torch.testing.assert_close(scores.token_logp[0, :shared], scores.token_logp[1, :shared], atol=1e-5, rtol=0.0)


def test_batched_generation_matches_alone_and_writes_no_image_tokens(policy):
    special = set(suppressed_token_ids(policy.tokenizer, policy.processor, keep=[policy.tokenizer.eos_token_id]))
    assert policy.processor.image_token_id in special
    batch_prompts = prompts(3)
    together = policy.generate(batch_prompts, max_new_tokens=6, do_sample=False, stop_at_json_end=False)
    assert any(output.token_ids for output in together)
    for prompt, output in zip(batch_prompts, together):
        assert not special & set(output.token_ids) and policy.done_token_id not in output.token_ids
        alone = policy.generate([prompt], max_new_tokens=6, do_sample=False, stop_at_json_end=False)[0]
        assert alone.token_ids == output.token_ids  # left padding does not change what is written


def test_one_subtb_step_moves_the_adapters_only(policy):
    # Two trajectories of two steps; the state flows use the [DONE] parameterisation with log R = 0 mid-episode.
    step_prompts, responses = prompts(4), [RESPONSES[0], RESPONSES[1], RESPONSES[1], RESPONSES[0]]
    adapters, heads = policy.parameter_groups()
    frozen = {name: p.detach().clone() for name, p in policy.model.named_parameters() if not p.requires_grad}
    before = [p.detach().clone() for p in adapters]
    optimizer = torch.optim.Adam(adapters, lr=1e-2)
    policy.train()
    try:
        out = policy.score(step_prompts, responses, cot_weight=0.5)
        log_pf = out.log_pf.view(2, 2)
        log_reward = torch.tensor([0.0, -1.0])
        log_flow = torch.cat([-out.done_logp.view(2, 2), log_reward[:, None]], dim=1)
        loss = subtrajectory_balance(log_pf, log_flow, torch.ones(2, 2, dtype=torch.bool), lam=0.9)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in adapters)
        optimizer.step()
    finally:
        optimizer.zero_grad(set_to_none=True)
        policy.eval()
    assert any(not torch.equal(p, b) for p, b in zip(adapters, before))
    assert all(torch.equal(p, frozen[name]) for name, p in policy.model.named_parameters() if name in frozen)
    with torch.no_grad():  # undo the step: the module-scoped policy is shared with the other tests
        for p, b in zip(adapters, before):
            p.copy_(b)


def test_4bit_loading_keeps_the_vision_side_and_lm_head_unquantized(saved):
    import bitsandbytes as bnb
    from transformers import AutoModelForImageTextToText

    from gflowvlm.model.loading import quantization_config

    _, directory = saved
    config = ModelConfig(name_or_path=str(directory), adapter="qlora")
    model = AutoModelForImageTextToText.from_pretrained(directory, quantization_config=quantization_config(config))
    decoder = language_model_path(model) + "."
    quantized = {name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    linear = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert quantized and quantized == {name for name in linear if name.startswith(decoder)}
