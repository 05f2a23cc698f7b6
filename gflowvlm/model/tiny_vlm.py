"""The built-in tiny VLM: small enough to train on a laptop CPU, saved as an ordinary Hugging Face model directory.

`build_tiny_vlm` returns (model, processor) with randomly initialised, seeded weights; `save_tiny_vlm` writes
config + safetensors + processor (tokenizer, image processor, chat template), which then loads with the same
`AutoModelForImageTextToText` / `AutoProcessor` calls as LLaVA-1.6 or Qwen2-VL. Families:

- llava (default): CLIP-style vision tower (hidden 64, 2 layers, 4 heads, patch 16: a 64x64 image gives 16 image
  tokens; `--vision-tower large`: hidden 128, 4 layers) + Llama decoder (hidden 128, 4 layers, 4 query / 2
  key-value heads, MLP 256): 1.0M parameters (1.8M with the large tower);
- llava_next: the same parts as LLaVA-NeXT (LLaVA-1.6): tiles of half the image size and `image_sizes`;
- qwen2_vl: a Qwen2-VL vision tower (patch 14, 2x2 merge, images resized to give 16 tokens) + Qwen2 decoder;
  qwen2_5_vl: the same with Qwen2.5-VL's windowed vision tower. transformers builds both processors with a video
  processor, which needs torchvision; without it they are built without the video part (image_only_processors.py);
- idefics3 (SmolVLM): an Idefics3 vision tower (patch 8) whose 2x2 pixel shuffle gives 16 tokens + Llama decoder,
  image splitting off (one global image);
- gemma3: a SigLIP tower (patch 8) average-pooled to 16 soft tokens + Gemma 3 decoder (head_dim 32);
- paligemma: a SigLIP tower (patch 16, 16 tokens) + Gemma decoder; its processor adds PaliGemma's 1,152 <loc>/<seg>
  tokens, and prompt tokens attend to each other both ways (prefix-LM), the response causally;
- llava_onevision: SigLIP tower + Qwen2 decoder with LLaVA-OneVision's anyres tiles; its processor also holds a
  video processor (the same as for Qwen without torchvision).
Every fixed-size family gets 16 image tokens for a 64x64 image, as the LLaVA tiny model.

`--align ENV_ID` (repeatable) also caption-pre-trains the model on those envs' observations before saving it
(LLaVA's stage-1 alignment; gflowvlm/model/env_alignment.py) and writes `alignment.json` with the held-out
caption accuracy per env; image size and vision tower then default to the envs' recipes.

Every linear layer has in_features >= 64: bitsandbytes' CPU 4-bit kernels crash below that, and the tiny model is
what QLoRA is tested on. The tokenizer is trained on the environments' text (gflowvlm/model/corpus.py).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (CLIPVisionConfig, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig,
                          GemmaConfig, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3VisionConfig,
                          LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, LlavaNextProcessor, LlavaOnevisionConfig,
                          LlavaOnevisionForConditionalGeneration, LlavaProcessor, PaliGemmaConfig,
                          PaliGemmaForConditionalGeneration, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2VLConfig,
                          Qwen2VLForConditionalGeneration, SiglipVisionConfig)
from transformers.utils import is_torchvision_available

from gflowvlm.model.corpus import Corpus, build_corpus
from gflowvlm.model.tokenizer import TOKENIZER_SPECS, train_tokenizer

TINY_FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "idefics3", "gemma3", "paligemma",
                 "llava_onevision")
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
# Families whose tiny model has one vision tower size (the LLaVA families have "small" and "large").
ONE_TOWER_FAMILIES = tuple(f for f in TINY_FAMILIES if f not in ("llava", "llava_next"))
# transformers builds these processors with a video processor; every video processor needs torchvision. Without
# it they are built without the video part (gflowvlm/model/image_only_processors.py).
VIDEO_PROCESSOR_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava_onevision")
PATCH = 16  # CLIP patch size of the LLaVA families
QWEN_PATCH, QWEN_MERGE = 14, 2
# Two key/value heads (grouped-query attention, as Mistral): half the KV cache to copy per generated token, which
# is what batch-16 sampling on a CPU spends its time on besides the matmuls.
DECODER = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_TOWER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=64, hidden_act="quick_gelu")
# Vision towers by name (LLaVA families). "small" is the default; "large" (hidden 128, 4 layers) is what the card
# games' alignment recipes use (gflowvlm/model/env_alignment.py): with it the tiny model read Points24's formula
# line about twice as fast (gflowvlm/model/vision_alignment.py has the figures).
VISION_TOWERS = {"small": CLIP_TOWER,
                 "large": dict(CLIP_TOWER, hidden_size=128, intermediate_size=512, num_hidden_layers=4)}
IMAGE_MEAN, IMAGE_STD = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
# SigLIP / Idefics3 towers of the newer families: the CLIP tower's widths, no projection.
SIGLIP_TOWER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
GEMMA_DECODER = dict(DECODER, head_dim=32, rms_norm_eps=1e-6)


def check_image_size(family: str, image_size: int) -> None:
    step = 2 * PATCH if family in ("llava_next", "llava_onevision") else PATCH
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {list(TINY_FAMILIES)}")
    if not isinstance(image_size, int) or image_size < step or image_size % step or image_size > 1024:
        raise ValueError(f"--image-size for {family} must be a multiple of {step} in [{step}, 1024], got {image_size}")


def tiny_tokenizer(family: str, corpus: Corpus, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    spec = TOKENIZER_SPECS["qwen2_vl" if family in QWEN_FAMILIES else family if family in TOKENIZER_SPECS
                           else "llava"]
    return train_tokenizer(corpus.texts, spec, vocab_size)


def check_vision_tower(family: str, tower: str) -> None:
    if tower not in VISION_TOWERS:
        raise ValueError(f"unknown vision tower {tower!r}; choose one of {list(VISION_TOWERS)}")
    if family in ONE_TOWER_FAMILIES and tower != "small":
        raise ValueError(f"--vision-tower: the {family} tiny model has one vision tower size ('small')")


def tiny_model_config(family: str, tokenizer: PreTrainedTokenizerFast, image_size: int, tower: str = "small"):
    """The model config of a tiny `family` model whose vocabulary is `tokenizer`'s."""
    check_image_size(family, image_size)
    check_vision_tower(family, tower)
    ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
               bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    image_token_id = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    tokens = (image_size // PATCH) ** 2
    if family == "idefics3":
        # Patch 8 and the 2x2 pixel shuffle (scale_factor 2): (image_size / 16)^2 tokens.
        return Idefics3Config(text_config=LlamaConfig(**DECODER, **ids),
                              vision_config=Idefics3VisionConfig(**SIGLIP_TOWER, patch_size=PATCH // 2,
                                                                 image_size=image_size),
                              scale_factor=2, image_token_id=image_token_id, tie_word_embeddings=False)
    if family == "gemma3":
        # Patch 8, pooled 2x2 to (image_size / 16)^2 soft tokens.
        text = Gemma3TextConfig(**GEMMA_DECODER, **ids, query_pre_attn_scalar=32, sliding_window=512)
        return Gemma3Config(text_config=text, vision_config=SiglipVisionConfig(**SIGLIP_TOWER, patch_size=PATCH // 2,
                                                                               image_size=image_size),
                            mm_tokens_per_image=tokens, image_token_id=image_token_id,
                            boi_token_id=tokenizer.convert_tokens_to_ids(tokenizer.boi_token),
                            eoi_token_id=tokenizer.convert_tokens_to_ids(tokenizer.eoi_token),
                            tie_word_embeddings=False)
    if family == "paligemma":
        hidden = GEMMA_DECODER["hidden_size"]
        return PaliGemmaConfig(text_config=GemmaConfig(**GEMMA_DECODER, **ids),
                               vision_config=SiglipVisionConfig(**SIGLIP_TOWER, patch_size=PATCH, image_size=image_size,
                                                                projection_dim=hidden),
                               projection_dim=hidden, image_token_id=image_token_id, tie_word_embeddings=False)
    if family == "llava_onevision":
        tile = image_size // 2
        return LlavaOnevisionConfig(text_config=Qwen2Config(**DECODER, **ids),
                                    vision_config=SiglipVisionConfig(**SIGLIP_TOWER, patch_size=PATCH, image_size=tile),
                                    image_token_index=image_token_id,
                                    video_token_index=tokenizer.convert_tokens_to_ids(tokenizer.video_token),
                                    vision_feature_select_strategy="full", vision_feature_layer=-1,
                                    image_grid_pinpoints=_grid_pinpoints(tile), vision_aspect_ratio="anyres_max_9",
                                    tie_word_embeddings=False)
    if family in QWEN_FAMILIES:
        head_dim = DECODER["hidden_size"] // DECODER["num_attention_heads"]
        third = head_dim // 2 // 3  # M-RoPE splits the rotary half-dimension over (time, height, width)
        text = dict(DECODER, **ids, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                     "mrope_section": [head_dim // 2 - 2 * third, third, third]})
        vision = dict(depth=2, embed_dim=64, hidden_size=DECODER["hidden_size"], num_heads=4, mlp_ratio=4,
                      patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2)
        if family == "qwen2_5_vl":  # windowed attention in the first block, full attention in the last
            vision = dict(depth=2, hidden_size=64, intermediate_size=256, out_hidden_size=DECODER["hidden_size"],
                          num_heads=4, patch_size=QWEN_PATCH, spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                          window_size=QWEN_PATCH * QWEN_MERGE * 2, fullatt_block_indexes=[1])
        return (Qwen2_5_VLConfig if family == "qwen2_5_vl" else Qwen2VLConfig)(
            text_config=text, vision_config=vision, image_token_id=image_token_id,
            video_token_id=tokenizer.convert_tokens_to_ids(tokenizer.video_token),
            vision_start_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_start_token),
            vision_end_token_id=tokenizer.convert_tokens_to_ids(tokenizer.vision_end_token), tie_word_embeddings=False)
    tile = image_size // 2 if family == "llava_next" else image_size
    common = dict(text_config=LlamaConfig(**DECODER, **ids),
                  vision_config=CLIPVisionConfig(**VISION_TOWERS[tower], image_size=tile, patch_size=PATCH),
                  image_token_index=image_token_id, vision_feature_layer=-1,
                  vision_feature_select_strategy="default", projector_hidden_act="gelu", tie_word_embeddings=False,
                  image_seq_length=(tile // PATCH) ** 2)
    if family == "llava_next":
        return LlavaNextConfig(**common, image_grid_pinpoints=_grid_pinpoints(tile))
    return LlavaConfig(**common)


def _grid_pinpoints(tile: int) -> list[list[int]]:
    # Up to 2x2 tiles, as LLaVA-NeXT's resolutions are multiples of its tower's input size.
    return [[tile, tile], [tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]


def tiny_image_processor(family: str, image_size: int):
    check_image_size(family, image_size)
    tokens = (image_size // PATCH) ** 2
    if family == "idefics3":
        from transformers import Idefics3ImageProcessorPil

        # No splitting: one global image resized to image_size x image_size.
        return Idefics3ImageProcessorPil(do_image_splitting=False, size={"longest_edge": image_size},
                                         max_image_size={"longest_edge": image_size}, image_mean=IMAGE_MEAN,
                                         image_std=IMAGE_STD)
    if family in ("gemma3", "paligemma"):
        from transformers import Gemma3ImageProcessorPil, SiglipImageProcessorPil

        size = {"height": image_size, "width": image_size}
        if family == "gemma3":
            return Gemma3ImageProcessorPil(size=size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
        processor = SiglipImageProcessorPil(size=size, image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
        processor.image_seq_length = tokens  # PaliGemma's processor reads it here (and it is saved with it)
        return processor
    if family == "llava_onevision":
        from transformers import LlavaOnevisionImageProcessorPil

        tile = image_size // 2
        return LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile},
                                               image_grid_pinpoints=_grid_pinpoints(tile), image_mean=IMAGE_MEAN,
                                               image_std=IMAGE_STD)
    if family in QWEN_FAMILIES:
        from transformers import Qwen2VLImageProcessorPil

        # Resize every image so that it gives (image_size / 16)^2 merged tokens, as many as the LLaVA tiny model.
        side = image_size // PATCH * QWEN_PATCH * QWEN_MERGE
        return Qwen2VLImageProcessorPil(min_pixels=side * side, max_pixels=side * side, patch_size=QWEN_PATCH,
                                        merge_size=QWEN_MERGE, temporal_patch_size=2, image_mean=IMAGE_MEAN,
                                        image_std=IMAGE_STD)
    if family == "llava_next":
        from transformers import LlavaNextImageProcessorPil

        tile = image_size // 2
        return LlavaNextImageProcessorPil(size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile},
                                          image_grid_pinpoints=_grid_pinpoints(tile), image_mean=IMAGE_MEAN,
                                          image_std=IMAGE_STD)
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size},
                                 image_mean=IMAGE_MEAN, image_std=IMAGE_STD)


def tiny_processor(family: str, image_processor, tokenizer: PreTrainedTokenizerFast):
    template = tokenizer.chat_template
    if family in VIDEO_PROCESSOR_FAMILIES:
        from transformers import (LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor, Qwen2_5_VLProcessor,
                                  Qwen2VLProcessor, Qwen2VLVideoProcessor)

        from gflowvlm.model.image_only_processors import IMAGE_ONLY_PROCESSORS

        library = {"qwen2_vl": Qwen2VLProcessor, "qwen2_5_vl": Qwen2_5_VLProcessor,
                   "llava_onevision": LlavaOnevisionProcessor}[family]
        kwargs = dict(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
        if family == "llava_onevision":
            kwargs.update(num_image_tokens=(image_processor.size["height"] // PATCH) ** 2,
                          vision_feature_select_strategy="full")
        if not is_torchvision_available():  # the same processor without the video part, saved as the library's
            return IMAGE_ONLY_PROCESSORS[library.__name__](**kwargs)
        video = LlavaOnevisionVideoProcessor() if family == "llava_onevision" else Qwen2VLVideoProcessor()
        return library(**kwargs, video_processor=video)
    tokens = (image_processor_size(image_processor) // PATCH) ** 2
    if family == "idefics3":
        from transformers import Idefics3Processor

        return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens,
                                 chat_template=template)
    if family == "gemma3":
        from transformers import Gemma3Processor

        return Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens,
                               chat_template=template)
    if family == "paligemma":
        from transformers import PaliGemmaProcessor

        # Adds PaliGemma's <loc0000>..<seg127> tokens to the tokenizer: the model is built after the processor.
        return PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    processor_class = LlavaNextProcessor if family == "llava_next" else LlavaProcessor
    # num_additional_image_tokens=1: CLIP's CLS token, which the "default" strategy then drops again.
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                           vision_feature_select_strategy="default", num_additional_image_tokens=1,
                           chat_template=tokenizer.chat_template)


def image_processor_size(image_processor) -> int:
    size = image_processor.size
    return int(size.get("longest_edge") or size.get("height") or size["shortest_edge"])


def tiny_model(config, seed: int):
    """Randomly initialised weights, identical for the same config and seed (the global RNG is left alone)."""
    model_class = {LlavaConfig: LlavaForConditionalGeneration, LlavaNextConfig: LlavaNextForConditionalGeneration,
                   Qwen2VLConfig: Qwen2VLForConditionalGeneration, Qwen2_5_VLConfig: Qwen2_5_VLForConditionalGeneration,
                   Idefics3Config: Idefics3ForConditionalGeneration, Gemma3Config: Gemma3ForConditionalGeneration,
                   PaliGemmaConfig: PaliGemmaForConditionalGeneration,
                   LlavaOnevisionConfig: LlavaOnevisionForConditionalGeneration}[type(config)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    text = config.get_text_config()
    model.generation_config.update(eos_token_id=text.eos_token_id, pad_token_id=text.pad_token_id,
                                   bos_token_id=text.bos_token_id)
    return model.eval()


def build_tiny_vlm(family: str = "llava", image_size: int = 64, seed: int = 0, vocab_size: int = 1024,
                   corpus: Corpus | None = None, vision_tower: str = "small"):
    """(model, processor) of a tiny `family` VLM; `corpus` defaults to the environments' text."""
    check_image_size(family, image_size)
    check_vision_tower(family, vision_tower)
    corpus = corpus if corpus is not None else build_corpus(seed=seed)
    tokenizer = tiny_tokenizer(family, corpus, vocab_size)
    processor = tiny_processor(family, tiny_image_processor(family, image_size), tokenizer)
    model = tiny_model(tiny_model_config(family, tokenizer, image_size, vision_tower), seed)
    return model, processor


def save_tiny_vlm(model, processor, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def make_tiny_model_arguments(family: str, image_size: int, seed: int, align: Sequence[str],
                              align_steps: int | None = None, align_target: float | None = None,
                              align_caption: str = "image", align_confirm: int | None = None) -> list[str]:
    """The `make-tiny-model` command line (less --out) that builds this model: what decides it at one commit.
    None leaves an option at its default (the envs' recipes), and leaves it out of the line."""
    argv = ["--family", family, "--image-size", str(image_size), "--seed", str(seed)]
    if align_steps is not None:
        argv += ["--align-steps", str(align_steps)]
    if align_target is not None:
        argv += ["--align-target", str(align_target)]
    argv += ["--align-caption", align_caption]
    if align_confirm is not None:
        argv += ["--align-confirm", str(align_confirm)]
    for env_id in align:
        argv += ["--align", env_id]
    return argv


def make_tiny_model_main(argv: list[str] | None = None) -> int:
    from gflowvlm.model.vision_alignment import CAPTION_SOURCES

    parser = argparse.ArgumentParser(prog="gflowvlm make-tiny-model", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="directory to write (created; must be empty unless --force)")
    parser.add_argument("--family", default="llava", choices=TINY_FAMILIES)
    parser.add_argument("--image-size", type=int, default=None, help="input resolution of the vision tower "
                        "(default 64, or the largest the --align envs' recipes render at)")
    parser.add_argument("--vision-tower", default=None, choices=sorted(VISION_TOWERS),
                        help="vision tower size (default small, or what the --align envs' recipes use)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the tokenizer corpus and alignment")
    parser.add_argument("--vocab-size", type=int, default=1024, help="upper bound of the BPE vocabulary")
    parser.add_argument("--corpus-episodes", type=int, default=40, help="oracle episodes per env and split")
    parser.add_argument("--align", action="append", default=[], metavar="ENV_ID",
                        help="caption pre-train on this env's observations (repeatable; writes alignment.json)")
    parser.add_argument("--align-steps", type=int, default=None,
                        help="upper bound of caption pre-training steps (default: the envs' recipe)")
    parser.add_argument("--align-target", type=float, default=None,
                        help="stop once every env's held-out exact-caption accuracy reaches this (default 0.98)")
    parser.add_argument("--align-pairs", type=int, default=None,
                        help="caption pairs drawn per env and split (default: the envs' recipe)")
    parser.add_argument("--align-caption", default="image", choices=CAPTION_SOURCES,
                        help="what the model learns to write for an image: image = what it shows (the env's "
                             "image_caption), text = the observation text (Blackjack's adds totals and outcomes)")
    parser.add_argument("--align-confirm", type=int, default=None, metavar="N",
                        help="held-out pairs beyond the 128 evaluated that must confirm the target before an early "
                             "stop (default 512; 0: stop at the first evaluation that reaches it, as before)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out directory")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse already printed its one-line error (or the help)
        return int(exit_.code or 0)
    out = Path(args.out)
    try:
        if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.force)):
            raise ValueError(f"--out {out} exists and is not an empty directory (use --force to write into it)")
        if args.corpus_episodes < 1:
            raise ValueError(f"--corpus-episodes must be positive, got {args.corpus_episodes}")
        if args.align_steps is not None and args.align_steps < 1:
            raise ValueError(f"--align-steps must be positive, got {args.align_steps}")
        if args.align_pairs is not None and args.align_pairs < 2:
            raise ValueError(f"--align-pairs must be at least 2, got {args.align_pairs}")
        if args.align_confirm is not None and args.align_confirm < 0:
            raise ValueError(f"--align-confirm must be >= 0, got {args.align_confirm}")
        if args.align_target is not None and not 0.0 <= args.align_target <= 1.0:
            raise ValueError(f"--align-target must be in [0, 1], got {args.align_target}")
        image_size, tower = args.image_size, args.vision_tower
        if args.align:
            from gflowvlm.model.env_alignment import check_env_ids, recipe_image_size, recipe_vision_tower

            check_env_ids(args.align)  # before the corpus: a typo fails in a second, not after minutes
            if image_size is not None and image_size < recipe_image_size(args.align):
                print(f"note: the recipe of these envs renders them at {recipe_image_size(args.align)} px; "
                      f"at {image_size} px some of their text may be too small to read")
            image_size = image_size or recipe_image_size(args.align)
            tower = tower or (recipe_vision_tower(args.align) if args.family not in ONE_TOWER_FAMILIES else None)
        image_size, tower = image_size or 64, tower or "small"
        check_image_size(args.family, image_size)
        check_vision_tower(args.family, tower)
        corpus = build_corpus(episodes_per_env=args.corpus_episodes, seed=args.seed)
        if args.align:
            from gflowvlm.model.env_alignment import make_seeing_model

            summary = make_seeing_model(out, args.align, args.family, image_size, args.seed, args.align_steps,
                                        args.align_target, corpus, args.vocab_size,
                                        pairs_per_split=args.align_pairs, vision_tower=tower,
                                        caption=args.align_caption, confirm_max=args.align_confirm)
            parameters, vocabulary = summary["parameters"], summary["vocabulary"]
        else:
            model, processor = build_tiny_vlm(args.family, image_size, args.seed, args.vocab_size, corpus, tower)
            save_tiny_vlm(model, processor, out)
            parameters, vocabulary = sum(p.numel() for p in model.parameters()), len(processor.tokenizer)
    except (ValueError, OSError) as error:
        print(f"gflowvlm make-tiny-model: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for env_id, reason in corpus.skipped.items():
        print(f"tokenizer corpus: skipped {env_id} ({reason})")
    print(f"wrote a tiny {args.family} VLM to {out}: {parameters / 1e6:.2f}M parameters, vocabulary {vocabulary}, "
          f"image {image_size}x{image_size}, {tower} vision tower, seed {args.seed}")
    if args.align:
        figures = ", ".join(f"{env_id} {entry['accuracy']:.1%}" + (
            "" if entry.get("confirmed_accuracy") is None else
            f" (confirmed on {entry['confirm_pairs']} other pairs: {entry['confirmed_accuracy']:.1%})")
            for env_id, entry in summary["per_env"].items())
        print(f"caption pre-training: {summary['steps']} steps, {summary['seconds']:.0f} s; held-out exact "
              f"captions: {figures} ({out / 'alignment.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(make_tiny_model_main())
