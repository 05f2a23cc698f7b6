"""The built-in tiny VLM: its tokenizer, its corpus, make-tiny-model, and loading through the Auto classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from gflowvlm.model.corpus import CARD_ENV_IDS, build_corpus
from gflowvlm.model.tiny_vlm import build_tiny_vlm, make_tiny_model_main, save_tiny_vlm
from gflowvlm.model.tokenizer import DONE_TOKEN, TOKENIZER_SPECS, train_tokenizer



@pytest.fixture(scope="module")
def corpus():
    return build_corpus(episodes_per_env=2, seed=0)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_tokenizer(corpus.texts, TOKENIZER_SPECS["llava"], vocab_size=1024)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "llava"
    assert make_tiny_model_main(["--out", str(out), "--seed", "3", "--corpus-episodes", "2"]) == 0
    return out


def test_corpus_covers_every_card_env_and_alfworld(corpus):
    assert corpus.skipped == {}
    text = "\n".join(corpus.texts)
    for marker in ("current number", "dealer", "formula", "equals 24", "countertop", "microwave", "inventory"):
        assert marker in text, marker
    assert len(CARD_ENV_IDS) == 4


def test_tokenizer_is_byte_level_with_single_token_specials(tokenizer):
    for text in ("héllo ✓ 漢字 \t\n {\"a\": [1, 2]}", "\x00\x7f weird", "🙂"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    for token in (DONE_TOKEN, "<image>", "<pad>", "</s>", "<s>"):
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.unk_token is None
    assert 900 <= len(tokenizer) <= 1024
    # [DONE] survives decoding (it is an ordinary token), the image token does not.
    ids = tokenizer("a[DONE]<image>", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a[DONE]"


def test_numbers_split_into_digits_and_quotes_stand_alone(tokenizer):
    tokens = tokenizer.tokenize("current number 47 and 1234")
    digits = [t for t in tokens if any(c.isdigit() for c in t)]
    assert digits == ["4", "7", "1", "2", "3", "4"]
    tokens = tokenizer.tokenize('{"action": "+"}')
    plus = tokens.index("+")
    assert tokens[plus - 1] == '"' and tokens[plus + 1] == '"'


def test_chat_template_puts_image_then_text_then_generation_prompt(tokenizer):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Task: x"}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<s>USER: <image>\nTask: x\nASSISTANT:"
    reply = messages + [{"role": "assistant", "content": '{"action": "+"}'}]
    assert tokenizer.apply_chat_template(reply, tokenize=False).endswith('ASSISTANT:{"action": "+"}</s>\n')


def test_saved_tiny_model_loads_through_auto_classes(tiny_dir):
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert processor.chat_template and processor.tokenizer.convert_tokens_to_ids(DONE_TOKEN) >= 0
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "go to fridge 1"}]}]]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    encoded = processor(text=text, images=[np.zeros((64, 64, 3), np.uint8)], return_tensors="pt",
                        add_special_tokens=False)
    assert int((encoded["input_ids"] == model.config.image_token_id).sum()) == 16
    logits = model(**encoded).logits
    assert logits.shape[-1] == len(processor.tokenizer) and torch.isfinite(logits).all()


def test_every_linear_layer_is_wide_enough_for_cpu_4bit(corpus):
    for family in ("llava", "llava_next", "qwen2_vl"):
        model = build_tiny_model_only(family, corpus)
        widths = {name: m.in_features for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert widths and min(widths.values()) >= 64, (family, min(widths.items(), key=lambda kv: kv[1]))


def build_tiny_model_only(family, corpus):
    from gflowvlm.model.tiny_vlm import tiny_model, tiny_model_config, tiny_tokenizer

    return tiny_model(tiny_model_config(family, tiny_tokenizer(family, corpus), 64), seed=0)


def test_weights_are_seeded(corpus, tiny_dir):
    first = build_tiny_model_only("llava", corpus).state_dict()
    again = build_tiny_model_only("llava", corpus).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    from gflowvlm.model.tiny_vlm import tiny_model, tiny_model_config, tiny_tokenizer

    other = tiny_model(tiny_model_config("llava", tiny_tokenizer("llava", corpus), 64), seed=1).state_dict()
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])
    before = torch.random.get_rng_state()
    build_tiny_model_only("llava", corpus)
    assert torch.equal(before, torch.random.get_rng_state())  # building leaves the global RNG alone


def test_llava_next_passes_image_sizes_and_tiles_by_aspect_ratio(corpus, tmp_path):
    model, processor = build_tiny_vlm("llava_next", 64, seed=0, corpus=corpus)
    save_tiny_vlm(model, processor, tmp_path)
    processor = AutoProcessor.from_pretrained(tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]] * 2
    texts = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [np.zeros((64, 64, 3), np.uint8), np.zeros((32, 96, 3), np.uint8)]
    encoded = processor(text=texts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
    assert encoded["image_sizes"].tolist() == [[64, 64], [32, 96]]
    image_tokens = (encoded["input_ids"] == model.config.image_token_id).sum(1).tolist()
    assert image_tokens[0] != image_tokens[1]  # the wide image is tiled differently
    assert torch.isfinite(model(**encoded).logits).all()


def test_make_tiny_model_errors_are_one_line(tiny_dir, tmp_path, capsys):
    assert make_tiny_model_main(["--out", str(tiny_dir)]) == 2  # not empty
    assert make_tiny_model_main(["--out", str(tmp_path / "x"), "--image-size", "50"]) == 2
    assert make_tiny_model_main(["--out", str(tmp_path / "y"), "--family", "nope"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert "not an empty directory" in errors[0] and "multiple of 16" in errors[1]
    assert all(len(line) < 300 for line in errors[:2])


def test_qwen2_vl_needs_torchvision_for_its_processor(tmp_path, capsys):
    out = tmp_path / "qwen"
    code = make_tiny_model_main(["--out", str(out), "--family", "qwen2_vl", "--corpus-episodes", "1"])
    if is_torchvision_available():
        assert code == 0
        assert type(AutoProcessor.from_pretrained(out)).__name__ == "Qwen2VLProcessor"
    else:  # transformers builds Qwen2-VL processors with a video processor, which needs torchvision
        assert code == 2 and "needs torchvision" in capsys.readouterr().err
