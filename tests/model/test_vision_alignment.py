"""Vision alignment (captioning stage): label masking, caption pairs, training behaviour, and the full recipe."""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import replace

import gymnasium
import numpy as np
import pytest
import torch

import envs  # noqa: F401  (registers the environments)
from gflowvlm.model.corpus import build_corpus
from gflowvlm.model.tiny_vlm import build_tiny_vlm
from gflowvlm.model.vision_alignment import (IGNORE_INDEX, AlignmentConfig, align_vision, caption_accuracy, caption_of,
                                             caption_loss, caption_pairs, collate, encode_example,
                                             split_by_caption, split_parameters)

NUMBER_LINE = "gflowvlm/NumberLine-v0"



@pytest.fixture(scope="module")
def tiny():
    # A small tokenizer corpus keeps the build fast; the architecture is the project's tiny LLaVA.
    return build_tiny_vlm("llava", image_size=64, seed=0, corpus=build_corpus(episodes_per_env=3, seed=0))


@pytest.fixture(scope="module")
def number_line_pairs():
    return caption_pairs([NUMBER_LINE], 144, image_size=64, seed=0)


def test_labels_mask_everything_but_the_caption_and_eos(tiny, number_line_pairs):
    _, processor = tiny
    tokenizer = processor.tokenizer
    image, caption = number_line_pairs[0]
    example = encode_example(processor, image, caption)
    ids, labels = example["input_ids"][0], example["labels"][0]
    caption_ids = tokenizer(caption, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    supervised = labels != IGNORE_INDEX
    # Exactly the last len(caption)+1 positions are supervised, and they are the caption then eos.
    assert supervised.sum().item() == len(caption_ids)
    assert supervised[-len(caption_ids):].all()
    assert labels[supervised].tolist() == caption_ids == ids[-len(caption_ids):].tolist()
    assert tokenizer.decode(labels[supervised], skip_special_tokens=True).strip() == caption
    # The image tokens and the instruction are in the prompt, never in the labels.
    image_token_id = tokenizer.convert_tokens_to_ids(tokenizer.image_token)
    assert (ids == image_token_id).sum().item() == 16
    assert not (labels == image_token_id).any()
    assert "Describe the state" in tokenizer.decode(ids[~supervised])


def test_paligemma_captions_are_the_causal_answer_not_the_prefix(number_line_pairs):
    # PaliGemma's prefix-LM attends both ways over token type 0: captions must be typed 1 (as generation does), or
    # caption training would let each caption token see the next one.
    from gflowvlm.model.families import response_token_types

    model, processor = build_tiny_vlm("paligemma", image_size=64, seed=0, corpus=build_corpus(episodes_per_env=1))
    image, caption = number_line_pairs[0]
    types = response_token_types(model)
    assert types == {"token_type_ids": 1}
    example = encode_example(processor, image, caption, types)
    supervised = example["labels"][0] != IGNORE_INDEX
    assert (example["token_type_ids"][0] == supervised.long()).all()
    with torch.no_grad():  # a changed last caption token leaves the earlier positions' logits as they were
        logits = model(**example).logits
        changed = {k: v.clone() for k, v in example.items()}
        changed["input_ids"][0, -2] = processor.tokenizer.convert_tokens_to_ids("1")
        again = model(**changed).logits
    torch.testing.assert_close(logits[0, :-2], again[0, :-2], atol=1e-5, rtol=0.0)


def test_collate_pads_right_for_training_and_left_for_generation(tiny, number_line_pairs):
    _, processor = tiny
    short = encode_example(processor, *number_line_pairs[0])
    long = encode_example(processor, number_line_pairs[1][0], number_line_pairs[1][1] + " and more words")
    pad_id = processor.tokenizer.pad_token_id
    right = collate([short, long], pad_id, left=False)
    gap = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    assert gap > 0
    assert right["input_ids"].shape == (2, long["input_ids"].shape[1])
    assert (right["labels"][0, -gap:] == IGNORE_INDEX).all() and (right["attention_mask"][0, -gap:] == 0).all()
    assert right["pixel_values"].shape[0] == 2
    left = collate([short, long], pad_id, left=True)
    assert (left["input_ids"][0, :gap] == pad_id).all() and (left["attention_mask"][0, :gap] == 0).all()
    assert torch.equal(left["input_ids"][0, gap:], short["input_ids"][0])


def test_collate_pads_other_per_token_keys_and_concatenates_per_image_ones():
    # Shapes as a Qwen2-VL-style processor returns them: flat patches and a grid per image, token type ids.
    def example(length: int, patches: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.arange(1, length + 1)[None],
                "attention_mask": torch.ones(1, length, dtype=torch.long),
                "token_type_ids": torch.ones(1, length, dtype=torch.long), "labels": torch.full((1, length), 5),
                "pixel_values": torch.randn(patches, 12), "image_grid_thw": torch.tensor([[1, 2, patches // 2]])}
    batch = collate([example(3, 4), example(5, 6)], pad_id=0, left=False)
    assert batch["token_type_ids"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"][0].tolist() == [5, 5, 5, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["pixel_values"].shape == (10, 12) and batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 3]]


def test_caption_pairs_images_match_their_text(number_line_pairs):
    captions = [caption for _, caption in number_line_pairs]
    counts = Counter(captions)
    # Balanced over the 36 states of the id split (6 targets x 6 current numbers, current == target at the end).
    assert len(counts) == 36 and set(counts.values()) == {4}
    env = gymnasium.make(NUMBER_LINE, image_size=64)
    checked = 0
    for image, caption in number_line_pairs:
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        words = caption.split()
        target, current = int(words[2].rstrip(",")), int(words[5])
        if target != current:  # a reset cannot start on the target; those states are checked through uniqueness
            obs, _ = env.reset(options={"start": current, "target": target})
            assert obs["text"] == caption
            assert np.array_equal(obs["image"], image)
            checked += 1
    assert checked == 120
    # Different captions never share an image, so a caption can be read off its image.
    by_image = {image.tobytes(): caption for image, caption in number_line_pairs}
    assert len(by_image) == 36


def test_caption_pairs_covers_every_env_requested():
    pairs = caption_pairs(["gflowvlm/Blackjack-v0", "gflowvlm/EZPoints-v0"], 10, image_size=64, seed=1)
    assert len(pairs) == 20
    assert all(c.startswith(("dealer", "cards")) for _, c in pairs)
    assert sum(c.startswith("cards") for _, c in pairs) == 10
    first, again = caption_pairs([NUMBER_LINE], 5, 64, seed=3), caption_pairs([NUMBER_LINE], 5, 64, seed=3)
    assert [c for _, c in first] == [c for _, c in again]  # seeded: the same pairs every time
    assert all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, again))
    with pytest.raises(ValueError, match="n must be"):
        caption_pairs([NUMBER_LINE], 0, image_size=64, seed=0)


def test_split_by_caption_holds_out_unseen_states(number_line_pairs):
    train, held_out = split_by_caption(number_line_pairs, 0.2, seed=0)
    train_captions, held_captions = {c for _, c in train}, {c for _, c in held_out}
    assert not train_captions & held_captions
    assert len(held_captions) == 7 and len(train) + len(held_out) == len(number_line_pairs)


def test_align_vision_lowers_the_caption_loss_and_restores_flags(tiny, number_line_pairs):
    model, processor = tiny
    model = copy.deepcopy(model)  # the module's fixture stays untrained for the other tests
    batch = collate([encode_example(processor, *p) for p in number_line_pairs[:32]],
                    processor.tokenizer.pad_token_id, left=False)
    with torch.no_grad():
        before = caption_loss(model, batch).item()
    config = AlignmentConfig(steps=20, warmup_steps=5, batch_size=8, eval_every=20, eval_max=8, seed=0)
    result = align_vision(model, processor, number_line_pairs, config, progress=False)
    with torch.no_grad():
        after = caption_loss(model, batch).item()
    assert after < 0.7 * before
    assert result["steps"] == 20 and len(result["history"]) == 1 and 0.0 <= result["accuracy"] <= 1.0
    assert result["eval_pairs"] == 8 and result["train_pairs"] == 116
    assert all(p.requires_grad for p in model.parameters())
    assert not model.training  # build_tiny_vlm returns the model in eval mode; align_vision puts it back


def test_first_phase_trains_only_the_vision_side(tiny, number_line_pairs):
    model, processor = tiny
    model = copy.deepcopy(model)
    vision, decoder = split_parameters(model)
    vision_before = [p.detach().clone() for p in vision]
    decoder_before = [p.detach().clone() for p in decoder]
    config = AlignmentConfig(steps=3, first_phase_steps=3, warmup_steps=0, batch_size=4, eval_every=3, eval_max=2)
    align_vision(model, processor, number_line_pairs, config, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(decoder, decoder_before))
    assert any(not torch.equal(a, b) for a, b in zip(vision, vision_before))


def test_config_schedule_and_validation():
    config = AlignmentConfig(steps=1100, lr=1e-3, warmup_steps=100, schedule="cosine", min_lr_ratio=0.1)
    assert config.lr_factor(0) == pytest.approx(0.01)
    assert config.lr_factor(99) == pytest.approx(1.0)
    assert config.lr_factor(600) == pytest.approx(0.55)
    assert config.lr_factor(1099) == pytest.approx(0.1, abs=1e-5)
    assert replace(config, schedule="constant").lr_factor(1000) == 1.0
    with pytest.raises(ValueError, match="schedule"):
        AlignmentConfig(schedule="linear")
    with pytest.raises(ValueError, match="eval_fraction"):
        AlignmentConfig(eval_fraction=1.0)
    with pytest.raises(ValueError, match="no pairs"):
        caption_accuracy(None, None, [])


def test_target_zero_stops_at_the_first_evaluation(tiny, number_line_pairs):
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    train, held_out = split_by_caption(number_line_pairs, 0.2, seed=0)
    config = AlignmentConfig(steps=50, warmup_steps=1, batch_size=2, eval_every=2, eval_max=4, target_accuracy=0.0)
    result = align_vision(model, processor, train, config, progress=False,
                          eval_pairs={"a": held_out[:4], "b": held_out[4:8]})
    assert result["steps"] == 2 and result["reached_target"]
    assert set(result["per_env"]) == {"a", "b"} and all(len(h) == 1 for h in result["per_env_history"].values())


def test_early_stop_waits_for_every_env(tiny, number_line_pairs, monkeypatch):
    # Scripted held-out accuracies: env "easy" is read from the start, env "hard" only at its third evaluation.
    import gflowvlm.model.vision_alignment as alignment

    train, held_out = split_by_caption(number_line_pairs, 0.2, seed=0)
    easy, hard = held_out[:3], held_out[3:6]
    hard_curve = iter([0.0, 0.5, 0.97, 1.0])
    easy_captions = {c for _, c in easy}
    monkeypatch.setattr(alignment, "caption_accuracy",
                        lambda model, processor, group: 1.0 if group[0][1] in easy_captions else next(hard_curve))
    config = AlignmentConfig(steps=40, warmup_steps=1, batch_size=2, eval_every=3, target_accuracy=0.95)
    result = align_vision(copy.deepcopy(tiny[0]), tiny[1], train, config, progress=False,
                          eval_pairs={"easy": easy, "hard": hard})
    assert result["steps"] == 9 and result["reached_target"]
    assert result["per_env"] == {"easy": 1.0, "hard": 0.97} and result["accuracy"] == 0.97
    assert result["per_env_history"]["hard"] == [[3, 0.0], [6, 0.5], [9, 0.97]]
    assert [row[1] for row in result["history"]] == [0.0, 0.5, 0.97]  # the overall figure is the lowest env's


def test_early_stop_needs_a_larger_held_out_sample_to_confirm(tiny, number_line_pairs, monkeypatch):
    # Scripted: the 2-pair evaluation always reads 100%; the 6-pair confirmation reads 50% the first time it is
    # asked, then 100%. Training must go on past the first lucky evaluation and stop at the next one.
    import gflowvlm.model.vision_alignment as alignment

    train, held_out = split_by_caption(number_line_pairs, 0.2, seed=0)
    confirm_curve = iter([0.5, 1.0])
    monkeypatch.setattr(alignment, "caption_accuracy",
                        lambda model, processor, group: 1.0 if len(group) == 2 else next(confirm_curve))
    config = AlignmentConfig(steps=40, warmup_steps=1, batch_size=2, eval_every=3, eval_max=2, confirm_max=6,
                             target_accuracy=0.95)
    result = align_vision(copy.deepcopy(tiny[0]), tiny[1], train, config, progress=False,
                          eval_pairs={"all": held_out})
    assert result["steps"] == 6 and result["reached_target"]
    assert result["confirmations"] == [[3, {"all": 0.5}], [6, {"all": 1.0}]]
    # Never confirmed: the budget ends and the run says it missed, whatever the small evaluation read.
    monkeypatch.setattr(alignment, "caption_accuracy", lambda model, processor, group: 1.0 if len(group) == 2 else 0.5)
    missed = align_vision(copy.deepcopy(tiny[0]), tiny[1], train, replace(config, steps=7), progress=False,
                          eval_pairs={"all": held_out})
    assert missed["steps"] == 7 and not missed["reached_target"] and len(missed["confirmations"]) == 3
    # The confirmation reads other pairs than the evaluation, and none at all with confirm_max 0.
    assert missed["eval_sizes"] == {"all": 2} and missed["confirm_sizes"] == {"all": 6}
    unconfirmed = align_vision(copy.deepcopy(tiny[0]), tiny[1], train, replace(config, confirm_max=0),
                               progress=False, eval_pairs={"all": held_out})
    assert unconfirmed["steps"] == 3 and unconfirmed["reached_target"] and unconfirmed["confirmations"] == []
    with pytest.raises(ValueError, match="confirm_max"):
        AlignmentConfig(confirm_max=-1)


def test_an_env_without_pairs_beyond_its_evaluation_is_not_confirmed_again(tiny, number_line_pairs, monkeypatch):
    # Env "small" has only the 2 pairs its evaluation reads; "big" has more, and its first confirmation fails.
    import gflowvlm.model.vision_alignment as alignment

    train, held_out = split_by_caption(number_line_pairs, 0.2, seed=0)
    big_confirmations = iter([0.5, 1.0])
    monkeypatch.setattr(alignment, "caption_accuracy",
                        lambda model, processor, group: 1.0 if len(group) == 2 else next(big_confirmations))
    config = AlignmentConfig(steps=40, warmup_steps=1, batch_size=2, eval_every=3, eval_max=2, confirm_max=6,
                             target_accuracy=0.95)
    result = align_vision(copy.deepcopy(tiny[0]), tiny[1], train, config, progress=False,
                          eval_pairs={"small": held_out[:2], "big": held_out[2:]})
    assert result["steps"] == 6 and result["reached_target"]
    assert result["confirmations"] == [[3, {"big": 0.5}], [6, {"big": 1.0}]]
    assert result["confirm_sizes"] == {"small": 0, "big": 6}


def test_a_confirmation_reads_without_changing_the_training(tiny, number_line_pairs, monkeypatch):
    """A confirmation only decodes: a run whose confirmations (really decoded) all fail trains on to the same
    weights as a run that never confirms."""
    import gflowvlm.model.vision_alignment as alignment

    real = alignment.caption_accuracy
    train, held_out = split_by_caption(number_line_pairs, 0.2, seed=0)
    config = AlignmentConfig(steps=6, warmup_steps=1, batch_size=2, eval_every=2, eval_max=2, target_accuracy=0.95)
    weights = []
    for confirm_max in (0, 6):
        # The evaluation "passes" and the confirmation "fails", after each has decoded its pairs for real.
        monkeypatch.setattr(alignment, "caption_accuracy", lambda model, processor, group: (
            real(model, processor, group), 1.0 if confirm_max == 0 or len(group) == 2 else 0.0)[1])
        model = copy.deepcopy(tiny[0])
        result = align_vision(model, tiny[1], train, replace(config, confirm_max=confirm_max,
                                                             target_accuracy=None if confirm_max == 0 else 0.95),
                              progress=False, eval_pairs=held_out)
        assert result["steps"] == 6 and len(result["confirmations"]) == (0 if confirm_max == 0 else 3)
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_envs_are_drawn_in_equal_shares_whatever_their_pool_sizes():
    from gflowvlm.model.vision_alignment import _draw

    small, large = [(None, "a")] * 3, [(None, "b")] * 300
    drawn = _draw([small, large], 4000, torch.Generator().manual_seed(0))
    share = sum(caption == "a" for _, caption in drawn) / len(drawn)
    assert 0.45 < share < 0.55  # pooled, "a" would be 1% of the batches
    assert len(_draw([large], 7, torch.Generator().manual_seed(0))) == 7


@pytest.mark.slow
def test_recipe_teaches_the_tiny_model_to_read_number_line():
    model, processor = build_tiny_vlm("llava", image_size=64, seed=1)
    pairs = caption_pairs([NUMBER_LINE], 1000, image_size=64, seed=1)
    train, held_out = split_by_caption(pairs, 0.2, seed=1)
    result = align_vision(model, processor, train, AlignmentConfig(seed=1), progress=False, eval_pairs=held_out)
    # Measured on states (target, current) that training never saw, re-decoded here from scratch.
    assert caption_accuracy(model, processor, held_out) >= 0.95
    assert result["steps"] <= AlignmentConfig().steps


def test_caption_source_is_the_image_caption_where_the_env_has_one():
    env = gymnasium.make("gflowvlm/Blackjack-v0", image_size=64)
    obs, _ = env.reset(options={"dealer": [10, 6], "player": [9, 7], "next_cards": [5]})
    assert obs["text"] == "dealer shows 10, your cards 9 7 (total 16)"
    assert caption_of(env, obs) == "dealer shows 10, your cards 9 7"
    assert caption_of(env, obs, "text") == obs["text"]

    class UserEnv:  # a user's env without image_caption(): its observation text is the caption
        unwrapped = object()

    assert caption_of(UserEnv(), {"text": "a user's state"}) == "a user's state"
    image_pairs = caption_pairs(["gflowvlm/Blackjack-v0"], 50, 64, seed=0)
    text_pairs = caption_pairs(["gflowvlm/Blackjack-v0"], 50, 64, seed=0, caption="text")
    assert not any("total" in c for _, c in image_pairs) and all("total" in c for _, c in text_pairs)
    with pytest.raises(ValueError, match="unknown caption source"):
        caption_pairs([NUMBER_LINE], 5, 64, seed=0, caption="ocr")
    with pytest.raises(ValueError, match="unknown caption source"):
        AlignmentConfig(caption="ocr")


def test_the_fields_caption_is_the_replys_opening_object_and_other_instructions_reach_the_prompt(tiny):
    """caption "fields" writes state_fields() as JSON (the reading records of sft_data); encode_prompt puts another
    instruction where the captioning one stands, the default unchanged."""
    import json

    from gflowvlm.model.vision_alignment import INSTRUCTION, encode_prompt

    env = gymnasium.make(NUMBER_LINE, split="ood", image_size=64)
    obs, _ = env.reset(seed=4)
    fields = json.loads(caption_of(env, obs, "fields"))
    assert fields == {"current number": env.unwrapped.current, "target number": env.unwrapped.target}
    assert list(fields) == ["current number", "target number"]
    blackjack = gymnasium.make("gflowvlm/Blackjack-v0", image_size=64)
    obs, _ = blackjack.reset(seed=0)
    with pytest.raises(ValueError, match="state_fields"):
        caption_of(blackjack, obs, "fields")
    _, processor = tiny
    decode = processor.tokenizer.decode
    assert INSTRUCTION in decode(encode_prompt(processor, obs["image"])["input_ids"][0])
    other = decode(encode_prompt(processor, obs["image"], "Respond with the fields.")["input_ids"][0])
    assert "Respond with the fields." in other and INSTRUCTION not in other
