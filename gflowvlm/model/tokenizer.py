"""The tiny VLM's tokenizer: a byte-level BPE trained with the `tokenizers` library, plus chat templates.

Byte-level, so any text the model writes (unicode, stray punctuation) tokenises without an unknown token;
numbers are split into single digits so that OOD numbers (10..50) are made of the same tokens as ID ones, and
a double quote is always its own token, so a JSON string value (the action above all) never shares a token with
the quotes and braces around it: the action's tokens are exactly the action.
`[DONE]` is one ordinary (non-special) added token: the policy scores it, and decoding keeps it.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gflowvlm.tokens import DONE_TOKEN  # also imported from here by the model code


@dataclass(frozen=True)
class TokenizerSpec:
    """The special tokens of one family's tokenizer and its chat template."""
    pad: str
    eos: str
    bos: str | None
    extra: dict[str, str]  # named special tokens, e.g. {"image_token": "<image>"}
    chat_template: str

    def special_tokens(self) -> list[str]:
        named = [self.pad, self.eos] + ([self.bos] if self.bos else []) + list(self.extra.values())
        return list(dict.fromkeys(named))


# A message's content is a string or a list of {"type": "image"} / {"type": "text", "text": ...} items.
# Newlines are written as {{ '\n' }}: transformers renders templates with trim_blocks, which would eat a literal
# newline that follows a block tag.
_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}IMAGE"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
)
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}ASSISTANT:" + _CONTENT + "{{ eos_token }}{{ '\\n' }}"
    "{% else %}USER: " + _CONTENT.replace("IMAGE", "<image>{{ '\\n' }}") + "{{ '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}{{ '\\n' }}"
    + _CONTENT.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>") +
    "<|im_end|>{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)

# SmolVLM's layout ("User:<image>...<end_of_utterance>\nAssistant:"); the processor expands <image> into
# <fake_token_around_image><global-img><image>*n<fake_token_around_image>.
IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}:"
    + _CONTENT.replace("IMAGE", "<image>") +
    "<end_of_utterance>{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
# Gemma's turns; the assistant is "model". Gemma 3's processor expands <start_of_image> into the image block.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}{{ '\\n' }}"
    + _CONTENT.replace("IMAGE", "<start_of_image>") +
    "<end_of_turn>{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model{{ '\\n' }}{% endif %}"
)
# PaliGemma has no chat turns: image tokens, the prefix text and a newline (the processor puts BOS after the image
# tokens); the answer (suffix) follows.
PALIGEMMA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}"
    + _CONTENT.replace("IMAGE", "") + "{{ eos_token }}{% else %}"
    + _CONTENT.replace("IMAGE", "<image>") + "{{ '\\n' }}{% endif %}{% endfor %}"
)

TOKENIZER_SPECS = {
    "llava": TokenizerSpec(pad="<pad>", eos="</s>", bos="<s>", extra={"image_token": "<image>"},
                           chat_template=LLAVA_CHAT_TEMPLATE),
    "qwen2_vl": TokenizerSpec(
        pad="<|endoftext|>", eos="<|im_end|>", bos=None,
        extra={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
               "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>",
               "im_start_token": "<|im_start|>"},
        chat_template=QWEN2_VL_CHAT_TEMPLATE),
    "llava_onevision": TokenizerSpec(pad="<pad>", eos="</s>", bos="<s>",
                                     extra={"image_token": "<image>", "video_token": "<video>"},
                                     chat_template=LLAVA_CHAT_TEMPLATE),
    "idefics3": TokenizerSpec(
        pad="<pad>", eos="<end_of_utterance>", bos="<|im_start|>",
        extra={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
               "global_image_token": "<global-img>"},
        chat_template=IDEFICS3_CHAT_TEMPLATE),
    "gemma3": TokenizerSpec(
        pad="<pad>", eos="<end_of_turn>", bos="<bos>",
        extra={"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
               "start_of_turn_token": "<start_of_turn>"},
        chat_template=GEMMA3_CHAT_TEMPLATE),
    "paligemma": TokenizerSpec(pad="<pad>", eos="<eos>", bos="<bos>", extra={"image_token": "<image>"},
                               chat_template=PALIGEMMA_CHAT_TEMPLATE),
}


def train_tokenizer(texts: Iterable[str], spec: TokenizerSpec, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it as a transformers tokenizer with `spec`'s special tokens."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(spec.special_tokens()) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (bytes + special tokens), got {vocab_size}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.Split('"', behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=2, show_progress=False,
                                  special_tokens=spec.special_tokens(), initial_alphabet=alphabet)
    backend.train_from_iterator(list(texts), trainer)
    backend.add_tokens([AddedToken(DONE_TOKEN, special=False, normalized=False)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=spec.bos, eos_token=spec.eos, pad_token=spec.pad,
        extra_special_tokens=dict(spec.extra),
        model_max_length=4096, padding_side="right", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = spec.chat_template
    return tokenizer
