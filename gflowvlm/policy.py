"""The policy: a Hugging Face VLM (+ LoRA adapters) and its scalar heads, behind one small interface.

    policy = VLMPolicy.from_config(config.model, heads=("log_z",))
    outputs = policy.generate(prompts, temperature=1.0, seed=0)          # batched sampling, no gradient
    batch = policy.prepare_batch(prompts, [o.text for o in outputs])      # tokenised, padded, spans
    scores = model(batch, cot_weight=0.4)                                 # `model` = accelerator.prepare(policy)
    log_z = policy.head("log_z", scores.hidden)

Scoring goes through `forward(batch)` because under DDP only the prepared module's forward synchronises gradients.
The pieces live in gflowvlm/model/ (loading, adapters, heads, batching, scoring, generation); the chat template is
applied in gflowvlm/model/batching.py (one user message: the image, then `Prompt.text`).

Saved directory (`save_pretrained`): the peft adapter (adapter_config.json + adapter_model.safetensors, loadable
with `peft.PeftModel.from_pretrained(base, directory)`) or, for full fine-tuning, the whole model; the heads
(heads.safetensors); the processor; gflowvlm_policy.json (the ModelConfig and head names); and manifest.json. It is
written like a checkpoint (temporary directory, manifest, rename: see gflowvlm/checkpoint.py) and verified wherever
it is loaded (`from_pretrained`, `model.init_from`, a base model directory). Remote code never runs because a saved
file asks for it: only `trust_remote_code` given by the caller of this very call counts.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from gflowvlm import checkpoint
from gflowvlm.config import ModelConfig
from gflowvlm.config_schema import ConfigError, from_dict
from gflowvlm.model import batching
from gflowvlm.model.adapters import apply_adapters, load_adapter
from gflowvlm.model.families import response_token_types
from gflowvlm.model.generation import (JsonObjectEnd, eos_token_ids, sampling_config, suppressed_token_ids,
                                       trim_generated)
from gflowvlm.model.heads import HEAD_NAMES, build_heads, load_heads, save_heads
from gflowvlm.model.loading import ModelLoadError, load_model_and_processor
from gflowvlm.model.scoring import ScoreOutput, score_from_outputs
from gflowvlm.model.tokenizer import DONE_TOKEN

POLICY_FILE = "gflowvlm_policy.json"

__all__ = ["Generation", "ScoreOutput", "VLMPolicy"]


@dataclass
class Generation:
    text: str  # decoded response (special tokens removed)
    token_ids: list[int]  # generated ids (without prompt, without padding; the final EOS included when generated)


class VLMPolicy(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, processor: Any, config: ModelConfig,
                 heads: Sequence[str] = ("log_z", "flow", "value")):
        super().__init__()
        self.model = model
        self.processor = processor
        self.config = config
        self.tokenizer = processor.tokenizer
        if DONE_TOKEN not in self.tokenizer.get_vocab():
            raise ValueError(f"the tokenizer has no {DONE_TOKEN} token (load models with VLMPolicy.from_config)")
        self.done_token_id = self.tokenizer.convert_tokens_to_ids(DONE_TOKEN)
        hidden_size = self._base_model().config.get_text_config().hidden_size
        self.heads = build_heads(tuple(heads), hidden_size, config.head_hidden).to(self._device())
        self._keeps_logits = "logits_to_keep" in _forward_parameters(self._base_model())

    # ----- construction and persistence -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: ModelConfig, heads: Sequence[str] = ("log_z", "flow", "value"),
                    device: torch.device | str | None = None) -> "VLMPolicy":
        """Load `config.name_or_path`, then add adapters (or the ones saved in `config.init_from`) and heads."""
        if config.init_from:
            init = Path(config.init_from)
            if not (init / "adapter_config.json").is_file():
                raise ModelLoadError(f"model.init_from {str(init)!r} is not an adapter directory "
                                     "(no adapter_config.json; a policy saved with adapter=lora/qlora is)")
            if (init / POLICY_FILE).is_file() or (init / checkpoint.MANIFEST).is_file():  # saved by gflowvlm
                checkpoint.verify_saved_policy(init, allow_code=config.trust_remote_code)
        model, processor = load_model_and_processor(config, device)
        if config.init_from:
            model = load_adapter(model, str(init), trainable=True)
        else:
            model = apply_adapters(model, config)
        policy = cls(model, processor, config, heads)
        if config.init_from:
            load_heads(policy.heads, config.init_from, strict=False)
        return policy

    def save_pretrained(self, directory: str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the policy to `directory` (replaced whole): into a temporary sibling, then a manifest, then a
        rename, so a crash leaves the previous directory or the new one, never a mix of the two.

        `state`: whole tensors to write instead of the module's own (`state_to_save()` keys), for a policy whose
        own tensors are slices (FSDP2: gflowvlm/sharding.py)."""
        final = Path(directory)
        path = checkpoint.temporary_sibling(final)
        if path.exists():  # left by a crash mid-save
            shutil.rmtree(path)
        path.mkdir(parents=True)
        given = {} if state is None else {"state_dict": _subtree(state, "model.")}
        kind = self._saved_kind()
        if kind in ("adapter", "full"):
            self.model.save_pretrained(str(path), **given)
        save_heads(self.heads, path, None if state is None else _subtree(state, "heads."))
        self.processor.save_pretrained(str(path))
        meta = {"saved": kind, "heads": list(self.heads.keys()), "model": dataclasses.asdict(self.config)}
        (path / POLICY_FILE).write_text(json.dumps(meta, indent=2))
        checkpoint.finalize(path, final)

    def _saved_kind(self) -> str:
        if isinstance(self.model, PeftModel):
            return "adapter"
        if any(p.requires_grad for p in self.model.parameters()):
            return "full"
        return "heads"  # nothing of the model trains: the base is named in the config

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """The tensors `save_pretrained` writes, by state_dict key: the trainable ones (adapters, unfrozen weights,
        heads) and, for a full fine-tune (saved as a whole model), every tensor of the model."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        whole_model = self._saved_kind() == "full"
        return {key: value for key, value in self.state_dict().items()
                if key in trainable or (whole_model and key.startswith("model."))}

    @classmethod
    def from_pretrained(cls, directory: str, config: ModelConfig | None = None,
                        device: torch.device | str | None = None, *, trust_remote_code: bool = False) -> "VLMPolicy":
        """Reload a saved policy; `config` (default: the saved one) sets how the base is loaded (dtype, 4-bit...).

        The directory is verified first (manifest, hashes; then finite weights and the expected keys). Remote code
        runs only with `trust_remote_code=True` passed here: neither the saved metadata nor `config` (often read
        from a run's config.yaml) can turn it on.
        """
        path = Path(directory)
        meta_path = path / POLICY_FILE
        if not meta_path.is_file():
            raise ModelLoadError(f"{directory!r} is not a saved policy (no {POLICY_FILE})")
        checkpoint.verify_saved_policy(path, allow_code=trust_remote_code)
        meta = _read_policy_file(meta_path)
        saved_config = dataclasses.replace(meta["model"], trust_remote_code=trust_remote_code)
        config = dataclasses.replace(config or saved_config, trust_remote_code=trust_remote_code)
        if not config.name_or_path:
            config = dataclasses.replace(config, name_or_path=saved_config.name_or_path)
        if meta["saved"] == "full":  # the directory holds the whole fine-tuned model
            config = dataclasses.replace(config, name_or_path=str(path), init_from=None, adapter="full")
        # A full save is its own base and was verified above; a base named by the config is verified by the loader.
        model, processor = load_model_and_processor(config, device, processor_path=str(path),
                                                    verified=meta["saved"] == "full")
        if meta["saved"] == "adapter":
            model = load_adapter(model, str(path), trainable=True)
        elif meta["saved"] == "full":
            model = apply_adapters(model, dataclasses.replace(config, adapter="full", vision=saved_config.vision))
        else:
            model = apply_adapters(model, dataclasses.replace(config, adapter="none", vision="frozen"))
        policy = cls(model, processor, config, meta["heads"])
        load_heads(policy.heads, path, strict=True)
        _check_finite(policy, path)
        return policy

    # ----- scoring ------------------------------------------------------------------------------------------------
    def prepare_batch(self, prompts: Sequence[Any], responses: Sequence[str] | None = None) -> dict:
        """Tokenised, right-padded prompt (+ response + EOS) sequences with response / action masks (CPU tensors)."""
        return batching.build_score_batch(self.processor, prompts, responses,
                                          response_token_types(self._base_model()))

    def forward(self, batch: dict, cot_weight: float = 1.0) -> ScoreOutput:
        device = self._device()
        inputs = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                  for key, value in batch["model_inputs"].items()}
        if self._keeps_logits:
            inputs["logits_to_keep"] = int(batch["logits_to_keep"])
        captured: list[torch.Tensor] = []
        # The decoder's own output is the final (normed) hidden state; a hook takes it instead of
        # output_hidden_states=True, which would keep every layer's states (GBs for a 7B batch without grad).
        decoder = self._base_model().get_decoder()
        hook = decoder.register_forward_hook(lambda module, args, output: captured.append(output[0]))
        try:
            outputs = self.model(**inputs, use_cache=False, return_dict=True)
        finally:
            hook.remove()
        return score_from_outputs(outputs.logits, captured[-1], batch, self.done_token_id, cot_weight)

    def score(self, prompts: Sequence[Any], responses: Sequence[str] | None, cot_weight: float = 1.0) -> ScoreOutput:
        return self(self.prepare_batch(prompts, responses), cot_weight=cot_weight)

    def head(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """[N] output of head `name` on hidden states [N, H]."""
        if name not in self.heads:
            raise ValueError(f"the policy has no {name!r} head (it was built with {list(self.heads.keys())})")
        return self.heads[name](hidden.to(self._heads_device()))

    def parameter_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(trainable model parameters: adapters / unfrozen weights, head parameters)."""
        return [p for p in self.model.parameters() if p.requires_grad], list(self.heads.parameters())

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` alone (no chat template, no image): the prompt builder's budget unit."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ----- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: Sequence[Any], *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 128, do_sample: bool = True, seed: int | None = None,
                 stop_at_json_end: bool = True, allow_done: bool = False) -> list[Generation]:
        """Sample one response per prompt, all prompts in one left-padded batch; `seed` makes it repeatable.

        [DONE] is suppressed unless `allow_done`: its probability is scored (it defines the state flows of
        SubTB/DB) but in a rollout the environment decides when an episode ends, so the agent never samples it.
        """
        device = self._device()
        encoded = batching.encode_prompts(self.processor, prompts, padding_side="left")
        encoded = {key: value.to(device) if isinstance(value, torch.Tensor) else value
                   for key, value in encoded.items()}
        prompt_length = encoded["input_ids"].shape[1]
        eos_ids = eos_token_ids(self.tokenizer, self._base_model())
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos_ids[0]
        suppress = suppressed_token_ids(self.tokenizer, self.processor, keep=eos_ids)
        if not allow_done and self.done_token_id is not None and self.done_token_id >= 0:
            suppress = sorted(set(suppress) | {int(self.done_token_id)})
        config = sampling_config(max_new_tokens=max_new_tokens, do_sample=do_sample and temperature > 0,
                                 temperature=temperature, top_p=top_p, eos_ids=eos_ids, pad_id=pad_id,
                                 suppress=suppress)
        stopping = [JsonObjectEnd(self.tokenizer, prompt_length)] if stop_at_json_end else []
        was_training = self.model.training
        self.model.eval()  # no dropout while sampling; gradient checkpointing is off in eval mode
        try:
            # A seed draws from a private RNG stream (the caller's global RNG is left as it was); no seed draws from
            # the global RNG and advances it, so successive calls differ.
            forked = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [],
                                           enabled=seed is not None)
            with forked:
                if seed is not None:
                    torch.manual_seed(seed)
                sequences = self.model.generate(**encoded, generation_config=config, stopping_criteria=stopping)
        finally:
            self.model.train(was_training)
        outputs = []
        for row in sequences[:, prompt_length:].tolist():
            ids = trim_generated(row, eos_ids, pad_id, pad_is_generable=pad_id not in suppress)
            outputs.append(Generation(text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids))
        return outputs

    # ----- helpers -------------------------------------------------------------------------------------------------
    @property
    def _no_split_modules(self) -> list[str]:
        """The layer classes FSDP's transformer auto-wrap shards one by one (fsdp.yaml). accelerate reads them off
        the module it prepares, which is this policy, not the Hugging Face model: without them the whole policy
        would be one FSDP unit, gathered whole for every forward. Only classes the model contains (accelerate
        refuses a name it cannot find, and LLaVA lists CLIP's text embeddings, which it does not have)."""
        names = getattr(self._base_model(), "_no_split_modules", None) or []
        present = {type(module).__name__ for module in self.modules()}
        return sorted(name for name in names if name in present)

    def _base_model(self) -> torch.nn.Module:
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _heads_device(self) -> torch.device:
        parameter = next(self.heads.parameters(), None)
        return parameter.device if parameter is not None else self._device()


def _subtree(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def _read_policy_file(path: Path) -> dict[str, Any]:
    """gflowvlm_policy.json, checked field by field: {"saved": kind, "heads": [names], "model": ModelConfig}."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a mapping")
        model = from_dict(ModelConfig, meta.get("model"), "model")
    except (ValueError, UnicodeDecodeError, ConfigError) as error:
        raise checkpoint.CheckpointError(f"{path} is malformed: {' '.join(str(error).split())[:200]}") from None
    heads = meta.get("heads")
    if meta.get("saved") not in ("adapter", "full", "heads"):
        raise checkpoint.CheckpointError(f"{path} is malformed: saved must be adapter, full or heads")
    if not isinstance(heads, list) or not all(isinstance(name, str) and name in HEAD_NAMES for name in heads):
        raise checkpoint.CheckpointError(f"{path} is malformed: heads must be a list of {list(HEAD_NAMES)}")
    return {"saved": meta["saved"], "heads": heads, "model": model}


def _check_finite(policy: "VLMPolicy", path: Path) -> None:
    """A saved policy whose trained weights hold NaN or inf is refused: it would only ever produce garbage."""
    for name, parameter in list(policy.model.named_parameters()) + list(policy.heads.named_parameters()):
        if (parameter.requires_grad and parameter.is_floating_point()
                and not bool(torch.isfinite(parameter.detach()).all())):
            raise checkpoint.CheckpointError(f"saved policy {path} has non-finite weights ({name})")


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    return set(inspect.signature(model.forward).parameters)
