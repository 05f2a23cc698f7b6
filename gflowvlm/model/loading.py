"""Loading a base VLM + processor from a hub id or a local directory: one call for every family and size.

`AutoModelForImageTextToText` + `AutoProcessor`, with the config's dtype, attention implementation, 4-bit
quantization (QLoRA: nf4, vision tower / projector / lm_head kept in full precision), gradient checkpointing and
device placement. The tiny built-in model and LLaVA-1.6-Mistral-7B go through exactly these lines.

`trust_remote_code` is passed through only as the caller's own value for this call (never read from a file): with
it off, an `auto_map` in a directory's config names code that is not run. A local directory that gflowvlm wrote (a
run's final/ used as the base of the next stage) is verified by its manifest first.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

from gflowvlm import checkpoint
from gflowvlm.config import ModelConfig
from gflowvlm.errors import UserError
from gflowvlm.model.families import QUANTIZATION_SKIP_MODULES
from gflowvlm.model.tokenizer import DONE_TOKEN

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


class ModelLoadError(UserError, ValueError):
    """A model or processor that cannot be loaded from what the config names (one-line message)."""


def default_device() -> torch.device:
    """This process's accelerator: cuda:LOCAL_RANK under `accelerate launch` / torchrun, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def load_processor(name_or_path: str, trust_remote_code: bool = False):
    try:
        # bool(): None would let transformers ask on a terminal, or decide by itself.
        return AutoProcessor.from_pretrained(name_or_path, trust_remote_code=bool(trust_remote_code))
    except ImportError as error:
        # Qwen2-VL / Qwen2.5-VL / LLaVA-OneVision processors always load a video processor, which needs
        # torchvision; without it, the same processor minus the video part (image_only_processors.py).
        if "torchvision" in str(error).lower():
            from gflowvlm.model.image_only_processors import IMAGE_ONLY_PROCESSORS, saved_processor_class

            image_only = IMAGE_ONLY_PROCESSORS.get(saved_processor_class(name_or_path) or "")
            if image_only is not None:
                try:
                    return image_only.from_pretrained(name_or_path)
                except (ImportError, OSError, ValueError, KeyError) as second:
                    error = second
        raise ModelLoadError(f"cannot load the processor of {name_or_path!r}: {_first_line(error)}") from error
    except (OSError, ValueError, KeyError) as error:
        raise ModelLoadError(f"cannot load the processor of {name_or_path!r}: {_first_line(error)}") from error


def load_model_and_processor(config: ModelConfig, device: torch.device | str | None = None,
                             processor_path: str | None = None, verified: bool = False):
    """(model, processor) for `config`; the processor comes from `processor_path` when given (a saved policy).

    `verified`: the caller has just verified the directories by their manifests (not hashed twice).
    """
    if not config.name_or_path:
        raise ModelLoadError("model.name_or_path is empty: give a hub id or a directory (gflowvlm make-tiny-model)")
    if config.dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype must be one of {list(DTYPES)}, got {config.dtype!r}")
    local = Path(config.name_or_path)
    if (config.name_or_path.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise ModelLoadError(f"model.name_or_path {config.name_or_path!r} is not a directory")
    if not verified and local.is_dir() and (local / checkpoint.MANIFEST).is_file():
        checkpoint.verify(local, allow_code=bool(config.trust_remote_code))
    device = torch.device(device) if device is not None else default_device()
    processor = load_processor(processor_path or config.name_or_path, config.trust_remote_code)
    kwargs = dict(dtype=DTYPES[config.dtype], trust_remote_code=bool(config.trust_remote_code),
                  device_map={"": str(device)})
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    if config.adapter == "qlora":
        kwargs["quantization_config"] = quantization_config(config)
    try:
        model = AutoModelForImageTextToText.from_pretrained(config.name_or_path, **kwargs)
    except ImportError as error:
        raise ModelLoadError(f"cannot load model {config.name_or_path!r}: {_first_line(error)}") from error
    except (OSError, ValueError, KeyError, SafetensorError) as error:
        raise ModelLoadError(f"cannot load model {config.name_or_path!r}: {_first_line(error)}") from error
    add_done_token(model, processor.tokenizer)
    if config.adapter == "qlora":
        from peft import prepare_model_for_kbit_training

        # Freezes the base, casts the unquantized parts to float32 (stable LayerNorms / lm_head), and turns on
        # gradient checkpointing when asked.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, processor


def quantization_config(config: ModelConfig) -> BitsAndBytesConfig:
    compute = torch.bfloat16 if config.dtype == "bfloat16" else (
        torch.float16 if config.dtype == "float16" else torch.float32)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute, llm_int8_skip_modules=list(QUANTIZATION_SKIP_MODULES))


def add_done_token(model, tokenizer) -> int:
    """Make `[DONE]` one token of `tokenizer` and `model`; returns its id.

    The built-in tiny model has it already. For a real checkpoint it is added, and the new embedding and output
    rows are set to the mean of the existing rows: deterministic (unlike transformers' sampled mean-resizing), so
    a base model reloaded next to a saved adapter has the same `[DONE]` row and the saved scores reproduce.
    """
    if DONE_TOKEN in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids(DONE_TOKEN)
    tokenizer.add_tokens([DONE_TOKEN])
    old_size = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_size:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
                if layer is not None:
                    layer.weight[old_size:] = layer.weight[:old_size].float().mean(0).to(layer.weight.dtype)
    return tokenizer.convert_tokens_to_ids(DONE_TOKEN)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
