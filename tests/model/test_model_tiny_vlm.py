"""The built-in tiny VLM: its tokenizer, its corpus, make-tiny-model, and loading through the Auto classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
from transformers.utils import is_torchvision_available

from gflowvlm.model.corpus import CARD_ENV_IDS, build_corpus
from gflowvlm.model.tiny_vlm import (TINY_FAMILIES, VIDEO_PROCESSOR_FAMILIES, build_tiny_vlm, make_tiny_model_main,
                                     save_tiny_vlm)
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
    for family in TINY_FAMILIES:  # the models of every family build here, torchvision or not
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


@pytest.mark.parametrize("family,processor", [("qwen2_vl", "Qwen2VLProcessor"), ("qwen2_5_vl", "Qwen2_5_VLProcessor"),
                                              ("llava_onevision", "LlavaOnevisionProcessor")])
def test_video_processor_families_save_an_ordinary_processor_that_loads_without_torchvision(tmp_path, family,
                                                                                           processor):
    import json

    from gflowvlm.model.loading import load_processor

    assert family in VIDEO_PROCESSOR_FAMILIES
    out = tmp_path / family
    assert make_tiny_model_main(["--out", str(out), "--family", family, "--corpus-episodes", "1"]) == 0
    saved = json.loads((out / "processor_config.json").read_text())
    # The library's class name and a video processor entry: with torchvision, AutoProcessor builds the full one.
    assert saved["processor_class"] == processor and "video_processor_type" in saved["video_processor"]
    assert json.loads((out / "tokenizer_config.json").read_text())["processor_class"] == processor
    loaded = load_processor(str(out))
    assert processor in [cls.__name__ for cls in type(loaded).__mro__]
    if is_torchvision_available():
        assert type(AutoProcessor.from_pretrained(out)).__name__ == processor == type(loaded).__name__
    else:  # transformers always loads these processors' video processor, and every one of those needs torchvision
        with pytest.raises(ImportError, match="requires the Torchvision library"):
            AutoProcessor.from_pretrained(out)
        assert not hasattr(loaded, "video_processor")


@pytest.mark.parametrize("family,model_class", [("idefics3", "Idefics3ForConditionalGeneration"),
                                                ("gemma3", "Gemma3ForConditionalGeneration"),
                                                ("paligemma", "PaliGemmaForConditionalGeneration")])
def test_make_tiny_model_builds_the_families_without_a_video_processor(tmp_path, capsys, family, model_class):
    out = tmp_path / family
    assert make_tiny_model_main(["--out", str(out), "--family", family, "--corpus-episodes", "1"]) == 0
    assert f"wrote a tiny {family} VLM" in capsys.readouterr().out
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == model_class
    assert len(processor.tokenizer(DONE_TOKEN, add_special_tokens=False)["input_ids"]) == 1
    assert make_tiny_model_main(["--out", str(tmp_path / "x"), "--family", family, "--vision-tower", "large"]) == 2
    assert make_tiny_model_main(["--out", str(tmp_path / "y"), "--family", family, "--image-size", "40"]) == 2


# ----- make-tiny-model --align: caption pre-training on named envs -------------------------------------------
ALIGN_KEYS = {"envs", "accuracy", "per_env", "reached_target", "target_accuracy", "steps", "seconds", "seed",
              "image_size", "config", "family", "loss_history"}


def _alignment(directory):
    import json

    return json.loads((directory / "alignment.json").read_text())


def test_align_writes_per_env_held_out_accuracy(tmp_path):
    out = tmp_path / "seeing"
    argv = ["--out", str(out), "--align", "gflowvlm/NumberLine-v0", "--align-steps", "3", "--align-pairs", "40",
            "--corpus-episodes", "1", "--seed", "2"]
    assert make_tiny_model_main(argv) == 0
    summary = _alignment(out)
    assert ALIGN_KEYS <= set(summary)
    assert summary["envs"] == ["gflowvlm/NumberLine-v0"] and summary["steps"] == 3 and summary["seed"] == 2
    assert summary["image_size"] == 64 and summary["family"] == "llava" and summary["config"]["steps"] == 3
    entry = summary["per_env"]["gflowvlm/NumberLine-v0"]
    assert 0.0 <= entry["accuracy"] <= 1.0 and entry["accuracy"] == summary["accuracy"]
    # Both splits were drawn (ood has numbers up to 50), and a fifth of the distinct states is held out.
    assert entry["train_pairs"] + entry["eval_pairs"] >= 60 and entry["eval_pairs"] >= 5
    assert entry["history"] == [[3, entry["accuracy"]]]
    assert summary["config"]["caption"] == "image"  # the default: what the image shows (env.image_caption)
    # 16 held-out pairs, all read by the evaluation: nothing is left to confirm with, and nothing is claimed.
    assert entry["confirm_pairs"] == 0 and entry["confirmed_accuracy"] is None and summary["confirmations"] == []
    assert make_tiny_model_main(["--out", str(tmp_path / "bad"), "--align", "gflowvlm/NumberLine-v0",
                                 "--align-confirm", "-1"]) == 2
    model = AutoModelForImageTextToText.from_pretrained(out)  # the aligned model is an ordinary HF directory
    assert model.config.vision_config.image_size == 64


def test_align_on_several_envs_uses_the_largest_recipe_image_size(tmp_path):
    from gflowvlm.model.env_alignment import recipe_image_size

    envs = ["gflowvlm/NumberLine-v0", "gflowvlm/Points24-v0"]
    out = tmp_path / "two"
    argv = ["--out", str(out), "--align", envs[0], "--align", envs[1], "--align-steps", "2", "--align-pairs", "12",
            "--corpus-episodes", "1"]
    assert make_tiny_model_main(argv) == 0
    summary = _alignment(out)
    assert set(summary["per_env"]) == set(envs) == set(summary["envs"])
    assert summary["image_size"] == recipe_image_size(envs) == recipe_image_size(envs[1:]) > 64
    assert AutoProcessor.from_pretrained(out).image_processor.crop_size["height"] == summary["image_size"]


def test_align_on_an_unknown_env_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "never"
    assert make_tiny_model_main(["--out", str(out), "--align", "gflowvlm/NoSuchGame-v0"]) == 2
    assert make_tiny_model_main(["--out", str(out), "--align", "no_such_module:Game-v0"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "unknown env id 'gflowvlm/NoSuchGame-v0'" in errors[0]
    assert "cannot import module 'no_such_module'" in errors[1]
    assert not out.exists()  # checked before anything is built or written


def _register_user_env():
    """A user's env, as in tests/envs/test_user_env.py: one grey tile of 8 shades to read, then "stop"."""
    import gymnasium as gym
    from PIL import Image

    from envs.base import VLMEnv

    class ShadeTile(VLMEnv):
        def default_max_steps(self):
            return 1

        def _reset_state(self, options):
            self.shade = int(self.np_random.integers(8))

        def task(self):
            return "Say stop."

        def state_text(self):
            return f"tile shade {self.shade}"

        def admissible_actions(self):
            return ["stop"]

        def _apply(self, command):
            return 1.0, True

        def log_reward(self):
            return 0.0

        def is_success(self):
            return True

        def draw(self):
            return np.asarray(Image.new("RGB", (self.image_size,) * 2, (30 * self.shade,) * 3), dtype=np.uint8).copy()

        def expert_action(self):
            return "stop"

        def expert_thoughts(self):
            return "Nothing to do."

    if "usertest/ShadeTile-v0" not in gym.registry:
        gym.register("usertest/ShadeTile-v0", entry_point=ShadeTile)
    return "usertest/ShadeTile-v0"


def test_align_on_a_user_registered_env(tmp_path):
    env_id = _register_user_env()
    out = tmp_path / "user"
    argv = ["--out", str(out), "--align", env_id, "--align-steps", "2", "--align-pairs", "16",
            "--corpus-episodes", "1"]
    assert make_tiny_model_main(argv) == 0
    summary = _alignment(out)
    assert summary["envs"] == [env_id] and summary["image_size"] == 64  # an env without a recipe: the default
    assert summary["per_env"][env_id]["eval_pairs"] >= 1


def test_vision_tower_sizes(corpus, tmp_path, capsys):
    from gflowvlm.model.tiny_vlm import tiny_model, tiny_model_config, tiny_tokenizer

    tokenizer = tiny_tokenizer("llava", corpus)
    small, large = (tiny_model(tiny_model_config("llava", tokenizer, 64, tower), 0) for tower in ("small", "large"))
    assert (small.config.vision_config.hidden_size, small.config.vision_config.num_hidden_layers) == (64, 2)
    assert (large.config.vision_config.hidden_size, large.config.vision_config.num_hidden_layers) == (128, 4)
    widths = [m.in_features for m in large.modules() if isinstance(m, torch.nn.Linear)]
    assert min(widths) >= 64  # still fine for CPU 4-bit
    out = tmp_path / "q"
    assert make_tiny_model_main(["--out", str(out), "--family", "qwen2_vl", "--vision-tower", "large"]) == 2
    assert "one vision tower size" in capsys.readouterr().err
