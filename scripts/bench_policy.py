"""Speed and memory of the policy: generation tokens/s (batch 1 and 16), scoring samples/s with backward, MFU.

Tiny model (always): the built-in tiny LLaVA on this machine, NumberLine prompts of ~200 tokens with a 64x64 image
(history included, as the trainer builds them) and the oracle's JSON responses.

GPU (when CUDA is available): a model with LLaVA-1.6-Mistral-7B's architecture (LlavaNextConfig written below:
CLIP ViT-L/14-336 + Mistral-7B, random bf16 weights), saved to a local directory and loaded through the policy's
normal path (VLMPolicy.from_config) twice: bf16 LoRA and 4-bit QLoRA. MFU of the scoring forward + backward is
model FLOPs / (seconds x 790 TFLOP/s, the H200's dense bf16 peak). Model FLOPs are counted from the shapes: decoder
linear layers 2·N·T forward + 2·N·T backward (activation gradients; the frozen base gets no weight gradients),
causal attention 2·T²·d per layer forward and twice that backward, lm_head on the kept positions, the frozen
vision tower forward only. Recomputation under gradient checkpointing is not counted (the MFU convention).

    python scripts/bench_policy.py                      # tiny model; GPU section when CUDA is there
    python scripts/bench_policy.py --gpu-arch tiny      # run the GPU section's code on a tiny LLaVA-NeXT (CPU check)
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from gflowvlm.config import ModelConfig, PromptConfig
from gflowvlm.model.corpus import build_corpus
from gflowvlm.model.tiny_vlm import build_tiny_vlm, save_tiny_vlm
from gflowvlm.policy import VLMPolicy

H200_BF16_PEAK = 790e12
TARGET_BATCH_SPEEDUP = 6.0
TARGET_MFU = 0.35


def number_line_samples(count: int, image_size: int, history_steps: int = 4):
    """(prompts, responses) of NumberLine states `history_steps` steps into different episodes (~200 tokens).

    One state per episode, all at the same depth: the collector generates for its environments step by step, so a
    real batch holds prompts of about the same length (left padding then costs little).
    """
    import gymnasium as gym

    import envs  # noqa: F401
    from gflowvlm.prompting import HistoryStep, PromptBuilder

    env_id = "gflowvlm/NumberLine-v0"
    builder = PromptBuilder(env_id, PromptConfig())
    prompts, responses, seed = [], [], 0
    while len(prompts) < count:
        env = gym.make(env_id, split="ood", image_size=image_size)
        observation, info = env.reset(seed=seed)
        seed += 1
        history, done = [], False
        while not done:
            game = env.unwrapped
            action = game.expert_action()
            if len(history) == history_steps:
                prompts.append(builder.build(info["task"], history, info["admissible_actions"], observation["image"]))
                responses.append(builder.response(game.expert_thoughts(), action, game.state_fields()))
                break
            history.append(HistoryStep(observation["text"], action))
            observation, _, terminated, truncated, info = env.step(action)
            done = terminated or truncated
    return prompts, responses


def timed(function, repeats: int) -> float:
    """Fastest seconds of `function()` over `repeats` calls after one warm-up call (as timeit advises: slower runs
    measure the other processes on a shared machine, not the code)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        _synchronize()
        started = time.perf_counter()
        function()
        _synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def generation_tokens_per_second(policy: VLMPolicy, prompts, new_tokens: int, repeats: int) -> float:
    """Generated tokens per second, prefill included (one seed for every call, so every call makes the same
    tokens: an untrained model rarely samples EOS, so that is about len(prompts) * new_tokens)."""
    counts = []

    def run():
        outputs = policy.generate(prompts, max_new_tokens=new_tokens, seed=0, stop_at_json_end=False)
        counts.append(sum(len(o.token_ids) for o in outputs))
    seconds = timed(run, repeats)
    return counts[-1] / seconds


def scoring_step(policy: VLMPolicy, batch, head: str):
    def run():
        policy.zero_grad(set_to_none=True)
        out = policy(batch, cot_weight=0.5)
        loss = -out.log_pf.mean() + policy.head(head, out.hidden).square().mean()
        loss.backward()
    return run


def peak_memory() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU (max allocated)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process peak)"


def bench(policy: VLMPolicy, prompts, responses, args, label: str) -> dict[str, float]:
    batch = policy.prepare_batch(prompts[: args.batch], responses[: args.batch])
    real = batch["model_inputs"]["attention_mask"].sum(1).float()
    prompt_tokens = batch["prompt_lengths"].float()
    print(f"[{label}] batch {args.batch}: prompt tokens {prompt_tokens.mean():.0f} (incl. image), "
          f"response tokens {(real - prompt_tokens).mean():.0f}, padded width {batch['response_mask'].shape[1]}")
    prepare = timed(lambda: policy.prepare_batch(prompts[: args.batch], responses[: args.batch]), args.repeats)
    policy.train()
    step = timed(scoring_step(policy, batch, "value"), args.repeats)
    policy.eval()
    single = generation_tokens_per_second(policy, prompts[:1], args.new_tokens, args.repeats)
    batched = generation_tokens_per_second(policy, prompts[: args.batch], args.new_tokens, args.repeats)
    print(f"[{label}] generation: batch 1 {single:.1f} tokens/s, batch {args.batch} {batched:.1f} tokens/s "
          f"({batched / single:.1f}x; target >= {TARGET_BATCH_SPEEDUP:.0f}x)")
    print(f"[{label}] scoring forward+backward at batch {args.batch}: {step * 1000:.0f} ms/step = "
          f"{args.batch / step:.1f} samples/s (+ {prepare * 1000:.0f} ms to tokenise the batch)")
    print(f"[{label}] peak memory: {peak_memory()}")
    return {"step_seconds": step}


def bench_tiny(args) -> None:
    corpus = build_corpus(episodes_per_env=10)
    with tempfile.TemporaryDirectory() as directory:
        save_tiny_vlm(*build_tiny_vlm("llava", 64, seed=0, corpus=corpus), directory)
        config = ModelConfig(name_or_path=directory, lora_dropout=0.0)
        policy = VLMPolicy.from_config(config, heads=("value",), device="cpu")
        parameters = sum(p.numel() for p in policy.model.parameters()) / 1e6
        print(f"[tiny] LLaVA tiny: {parameters:.2f}M parameters, LoRA r={config.lora_r} on q/k/v/o")
        prompts, responses = number_line_samples(args.batch, image_size=64)
        bench(policy, prompts, responses, args, "tiny")


# ----- LLaVA-1.6-Mistral-7B's architecture ------------------------------------------------------------------------
def llava_next_config(arch: str, tokenizer):
    from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    image_token = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    if arch == "llava-1.6-mistral-7b":
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                  num_attention_heads=16, image_size=336, patch_size=14, projection_dim=768,
                                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
        text = MistralConfig(vocab_size=32064, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                             rms_norm_eps=1e-5, rope_theta=1e6, sliding_window=None, tie_word_embeddings=False,
                             **ids)
        pinpoints = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
        tile, patch = 336, 14
    else:  # the same code path at toy size, to check this section without a GPU
        vision = CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=32, patch_size=16, projection_dim=64)
        text = MistralConfig(vocab_size=len(tokenizer) + 64, hidden_size=128, intermediate_size=384,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             sliding_window=None, tie_word_embeddings=False, **ids)
        pinpoints, tile, patch = [[32, 64], [64, 32], [64, 64]], 32, 16
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
                             vision_feature_select_strategy="default", projector_hidden_act="gelu",
                             tie_word_embeddings=False, image_seq_length=(tile // patch) ** 2)
    return config, tile, patch, pinpoints


def save_random_llava_next(arch: str, directory: Path, device: torch.device) -> None:
    """Random bf16 weights with the architecture of `arch`, saved with a LLaVA-NeXT processor (tiny tokenizer:
    no hub access; token identities do not matter for speed, the 32064-row embeddings and lm_head are real)."""
    from transformers import (CLIPImageProcessorPil, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)

    from gflowvlm.model.tiny_vlm import tiny_tokenizer

    tokenizer = tiny_tokenizer("llava", build_corpus(episodes_per_env=2))
    config, tile, patch, pinpoints = llava_next_config(arch, tokenizer)
    clip = CLIPImageProcessorPil()
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints,
        image_mean=clip.image_mean, image_std=clip.image_std)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=tokenizer.chat_template)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = LlavaNextForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    del model


def scoring_flops(policy: VLMPolicy, batch) -> float:
    """Model FLOPs of one scoring forward + backward (see the module docstring)."""
    base = policy._base_model()
    text = base.config.get_text_config()
    vision = base.config.vision_config
    decoder = base.get_decoder()
    linear = sum(m.in_features * m.out_features for n, m in decoder.named_modules()
                 if isinstance(m, torch.nn.Linear) and "lora_" not in n)
    lengths = batch["model_inputs"]["attention_mask"].sum(1).double()
    tokens = float(lengths.sum())
    attention = 2.0 * float((lengths ** 2).sum()) * text.hidden_size * text.num_hidden_layers
    kept = batch["logits_to_keep"] * lengths.numel()
    head = 2.0 * text.hidden_size * text.vocab_size * kept
    decoder_flops = 2 * (2.0 * linear * tokens) + 3 * attention + 2 * head
    pixels = batch["model_inputs"]["pixel_values"]
    crops = pixels.shape[0] * pixels.shape[1] if pixels.dim() == 5 else pixels.shape[0]
    patches = (vision.image_size // vision.patch_size) ** 2 + 1
    tower = base.model.vision_tower
    tower_linear = sum(m.in_features * m.out_features for m in tower.modules() if isinstance(m, torch.nn.Linear))
    vision_flops = crops * (2.0 * tower_linear * patches
                            + 4.0 * patches ** 2 * vision.hidden_size * vision.num_hidden_layers)
    return decoder_flops + vision_flops


def bench_gpu(args) -> None:
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    with tempfile.TemporaryDirectory(dir=args.workdir) as directory:
        started = time.perf_counter()
        save_random_llava_next(args.gpu_arch, Path(directory), device)
        print(f"[{args.gpu_arch}] random checkpoint written in {time.perf_counter() - started:.0f} s")
        image_size = 336 if args.gpu_arch == "llava-1.6-mistral-7b" else 64
        prompts, responses = number_line_samples(args.batch, image_size=image_size)
        for adapter in ("lora", "qlora"):
            gc.collect()  # the previous policy's weights, before the next one is loaded
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            dtype = "bfloat16" if device.type == "cuda" else "float32"
            config = ModelConfig(name_or_path=directory, dtype=dtype, adapter=adapter, lora_dropout=0.0,
                                 gradient_checkpointing=args.gradient_checkpointing, attn_implementation="sdpa",
                                 head_hidden=[1024, 512])
            policy = VLMPolicy.from_config(config, heads=("value",), device=device)
            label = f"{args.gpu_arch} {adapter}"
            result = bench(policy, prompts, responses, args, label)
            flops = scoring_flops(policy, policy.prepare_batch(prompts[: args.batch], responses[: args.batch]))
            achieved = flops / result["step_seconds"]
            print(f"[{label}] scoring model FLOPs {flops / 1e12:.3g} TFLOP/step, {achieved / 1e12:.3g} TFLOP/s, "
                  f"MFU {achieved / H200_BF16_PEAK:.1%} of {H200_BF16_PEAK / 1e12:.0f} TFLOP/s "
                  f"(target >= {TARGET_MFU:.0%} on the H200, bf16 LoRA)")
            del policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared 2-core machine two OpenMP threads that wait "
                             "for each other make tiny matmuls 10-100x slower)")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--gpu-arch", default="llava-1.6-mistral-7b", choices=["llava-1.6-mistral-7b", "tiny"])
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--workdir", default=None, help="where the random checkpoint is written (default: tmp)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {load:.1f} (other processes share these cores), "
          f"CUDA {'available: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'not available'}")
    if not args.skip_tiny:
        bench_tiny(args)
    if torch.cuda.is_available() or args.gpu_arch == "tiny":
        bench_gpu(args)
    else:
        print("GPU section skipped: CUDA is not available (LLaVA-1.6-Mistral-7B architecture, bf16 LoRA and QLoRA, "
              "MFU; run on a GPU machine, or --gpu-arch tiny to check this section's code on the CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
