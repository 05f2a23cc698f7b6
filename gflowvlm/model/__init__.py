"""The model layer behind `gflowvlm.policy.VLMPolicy`, one concept per module:

    loading.py           AutoModelForImageTextToText + AutoProcessor: dtype, attention, 4-bit, checkpointing, device
    families.py          the few module names that differ between VLM families (LLaVA, LLaVA-NeXT, Qwen2-VL)
    adapters.py          LoRA / QLoRA / full fine-tuning; vision tower frozen, adapted or fully trained
    heads.py             log Z, state-flow and value MLP heads, saved next to the adapter
    batching.py          prompts (+ responses) -> padded model inputs, action-span token masks
    scoring.py           one teacher-forced forward -> action / CoT log-probs, log p([DONE]), hidden state
    generation.py        sampling settings: suppressed special tokens, stop at the end of the JSON
    tiny_vlm.py          the built-in tiny VLM (`gflowvlm make-tiny-model`)
    tokenizer.py         its byte-level BPE tokenizer and chat templates
    corpus.py            the environments' text its tokenizer is trained on
    vision_alignment.py  caption pre-training that teaches a VLM to read its observation images
    env_alignment.py     that pre-training on named envs: per-env recipes, held-out states, alignment.json

Nothing is imported here: transformers is slow to import, and `gflowvlm --help` should stay instant.
"""
