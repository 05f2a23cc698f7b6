"""`gflowvlm play` and `gflowvlm make-sft-data`: the oracle's strategy as an option, the oracle's success rate without
images, training's prompt settings for SFT data, and bad flags as one line before anything is written."""
import json
import re

import pytest

from envs.blackjack import BlackjackEnv
from gflowvlm import cli
from gflowvlm.stats import wilson_interval

BLACKJACK = "gflowvlm/Blackjack-v0"
NUMBERLINE = "gflowvlm/NumberLine-v0"
LINE = re.compile(r"^(?P<env>\S+) \((?P<setting>[^)]*)\): oracle success (?P<rate>[\d.]+)% "
                  r"\[(?P<low>[\d.]+), (?P<high>[\d.]+)\] over (?P<n>\d+) episodes")


def run(capsys, args):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out.strip().splitlines(), captured.err.strip().splitlines()


def oracle_wins(strategy: str, episodes: int) -> int:
    env = BlackjackEnv(image_size=16, strategy=strategy)
    wins = 0
    for seed in range(episodes):
        env.reset(seed=seed)
        while True:
            _, _, terminated, truncated, info = env.step(env.expert_action())
            if terminated or truncated:
                wins += info["success"]
                break
    return wins


@pytest.mark.parametrize("strategy", ["basic", "stand17"])
def test_play_prints_the_oracle_success_rate_without_writing(capsys, tmp_path, monkeypatch, strategy):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, ["play", "--env", BLACKJACK, "--split", "id", "--episodes", "200", "--no-images",
                                "--expert-strategy", strategy, "--image-size", "16"])
    assert code == 0
    match = LINE.match(out[-1])
    assert match, out
    assert match["env"] == BLACKJACK and match["setting"] == f"id, strategy {strategy}" and match["n"] == "200"
    wins = oracle_wins(strategy, 200)  # the same seeds (0..199), played here by hand
    low, high = wilson_interval(wins, 200)
    assert match["rate"] == f"{100 * wins / 200:.1f}"
    assert (match["low"], match["high"]) == (f"{100 * low:.1f}", f"{100 * high:.1f}")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_the_strategy_changes_the_oracle(capsys):
    rates = {}
    for strategy in ("basic", "stand17"):
        code, out, _ = run(capsys, ["play", "--env", BLACKJACK, "--episodes", "300", "--no-images",
                                    "--expert-strategy", strategy, "--image-size", "16"])
        assert code == 0
        rates[strategy] = LINE.match(out[-1])["rate"]
    assert oracle_wins("basic", 300) != oracle_wins("stand17", 300)
    assert rates["basic"] != rates["stand17"]


def test_play_writes_images_or_only_a_transcript(capsys, tmp_path):
    code, out, _ = run(capsys, ["play", "--env", NUMBERLINE, "--episodes", "2", "--image-size", "32",
                                "--out", str(tmp_path / "frames")])
    assert code == 0 and "images in" in out[-1] and LINE.match(out[-1])
    pngs = sorted(p.name for p in (tmp_path / "frames").glob("*.png"))
    records = [json.loads(line) for line in (tmp_path / "frames" / "transcript.jsonl").read_text().splitlines()]
    assert pngs and all(record["image"] in pngs for record in records)
    code, out, _ = run(capsys, ["play", "--env", NUMBERLINE, "--episodes", "2", "--image-size", "32", "--no-images",
                                "--out", str(tmp_path / "text")])
    assert code == 0 and "images in" not in out[-1]
    assert sorted(p.name for p in (tmp_path / "text").iterdir()) == ["transcript.jsonl"]
    records = [json.loads(line) for line in (tmp_path / "text" / "transcript.jsonl").read_text().splitlines()]
    assert records and all("image" not in record and record["action"] for record in records)


@pytest.mark.parametrize("args, flag", [
    (["--env", BLACKJACK, "--episodes", "0"], "--episodes"),
    (["--env", BLACKJACK, "--episodes", "-1"], "--episodes"),
    (["--env", BLACKJACK, "--episodes", "many"], "--episodes"),
    (["--env", BLACKJACK, "--seed", "-3"], "--seed"),
    (["--env", BLACKJACK, "--image-size", "4"], "--image-size"),
    (["--env", NUMBERLINE, "--expert-strategy", "basic"], "--expert-strategy"),
    (["--env", BLACKJACK, "--expert-strategy", "lucky"], "--expert-strategy"),
    (["--env", BLACKJACK, "--split", "train"], "--split"),
    (["--env", "gflowvlm/Nope-v0"], "--env"),
    (["--env", BLACKJACK, "--env", "CartPole-v1"], "--env"),
])
def test_play_bad_flags_are_one_line_and_write_nothing(capsys, tmp_path, args, flag):
    out = tmp_path / "frames"
    code, _, err = run(capsys, ["play", *args, "--out", str(out)])
    assert code == 2
    assert len(err) == 1 and flag in err[0], err
    assert not out.exists()


def test_play_needs_out_or_no_images(capsys, tmp_path):
    code, _, err = run(capsys, ["play", "--env", BLACKJACK])
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "--no-images" in err[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, ["play", "--env", BLACKJACK, "--out", str(blocker)])
    assert code == 2 and len(err) == 1 and "--out" in err[0] and "is a file" in err[0]


# ----- make-sft-data -------------------------------------------------------------------------------------------
def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sft_data_follows_the_expert_strategy(capsys, tmp_path):
    path = tmp_path / "bj.jsonl"
    code, out, _ = run(capsys, ["make-sft-data", "--env", BLACKJACK, "--samples", "60", "--image-size", "16",
                                "--expert-strategy", "stand17", "--out", str(path)])
    assert code == 0 and "wrote 60 records" in out[-1]
    records = read(path)
    assert len(records) == 60
    env = BlackjackEnv(image_size=16)  # replay each record's state and check the paper's rule chose its action
    for record in records:
        env.reset(seed=record["task_seed"])
        for _ in range(record["step"]):
            env.step("hit")  # stand17 only ever hits before its last step
        expected = "stand" if env.player_total() >= 17 else "hit"
        assert json.loads(record["response"])["action"] == expected
    basic = tmp_path / "basic.jsonl"
    assert run(capsys, ["make-sft-data", "--env", BLACKJACK, "--samples", "60", "--image-size", "16",
                        "--out", str(basic)])[0] == 0
    assert [r["response"] for r in read(basic)] != [r["response"] for r in records]


def test_sft_data_uses_the_training_prompt_settings(capsys, tmp_path):
    for args, most in ((["--no-history"], 0), (["--max-history-steps", "1"], 1), ([], 10)):
        path = tmp_path / f"nl{most}.jsonl"
        assert run(capsys, ["make-sft-data", "--env", NUMBERLINE, "--samples", "30", "--image-size", "16",
                            *args, "--out", str(path)])[0] == 0
        steps = [len(re.findall(r"^Step \d+:", r["prompt"], flags=re.M)) for r in read(path)]
        assert max(steps) == most if most < 10 else max(steps) > 1
        if most == 0:
            assert all("History:" not in r["prompt"] for r in read(path))


@pytest.mark.parametrize("args, flag", [
    (["--env", NUMBERLINE, "--samples", "0"], "--samples"),
    (["--env", NUMBERLINE, "--samples", "5", "--done-fraction", "1"], "--done-fraction"),
    (["--env", NUMBERLINE, "--samples", "5", "--done-fraction", "nan"], "--done-fraction"),
    (["--env", NUMBERLINE, "--samples", "5", "--max-history-steps", "-1"], "--max-history-steps"),
    (["--env", NUMBERLINE, "--samples", "5", "--image-size", "4"], "--image-size"),
    (["--env", NUMBERLINE, "--samples", "5", "--expert-strategy", "basic"], "--expert-strategy"),
    (["--env", BLACKJACK, "--samples", "5", "--expert-strategy", "lucky"], "--expert-strategy"),
    (["--env", "gflowvlm/Nope-v0", "--samples", "5"], "--env"),
    (["--env", NUMBERLINE, "--samples", "5", "--split", "train"], "--split"),
    (["--env", NUMBERLINE], "--samples"),
])
def test_make_sft_data_bad_flags_are_one_line_and_write_nothing(capsys, tmp_path, args, flag):
    code, _, err = run(capsys, ["make-sft-data", *args, "--out", str(tmp_path / "data" / "x.jsonl")])
    assert code == 2
    assert len(err) == 1 and flag in err[0], err
    assert not (tmp_path / "data").exists()


def test_make_sft_data_out_under_a_file(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run(capsys, ["make-sft-data", "--env", NUMBERLINE, "--samples", "5",
                                "--out", str(blocker / "x.jsonl")])
    assert code == 2 and len(err) == 1 and "--out" in err[0]
    code, _, err = run(capsys, ["make-sft-data", "--env", NUMBERLINE, "--samples", "5", "--out", str(tmp_path)])
    assert code == 2 and len(err) == 1 and "is a directory" in err[0]


def test_caption_samples_are_the_alignments_own_training_pairs(capsys, tmp_path):
    """Caption records follow the expert's, are pairs that alignment with the same seed trains on (never one of its
    held-out captions), keep the image that was captioned, and include the OOD split's two-digit numbers."""
    import numpy as np
    from PIL import Image

    from gflowvlm.model.env_alignment import env_caption_sets
    from gflowvlm.model.vision_alignment import INSTRUCTION, AlignmentConfig

    path = tmp_path / "nl.jsonl"
    code, out, _ = run(capsys, ["make-sft-data", "--env", NUMBERLINE, "--samples", "20", "--caption-samples", "40",
                                "--image-size", "32", "--seed", "3", "--out", str(path)])
    assert code == 0 and "wrote 60 records" in out[-1]
    records = read(path)
    assert [r.get("kind") for r in records] == [None] * 20 + ["caption"] * 40
    train, held_out = env_caption_sets([NUMBERLINE], 32, 3, AlignmentConfig.eval_fraction)[NUMBERLINE]
    captions = records[20:]
    assert all(r["prompt"] == INSTRUCTION and not r["done"] for r in captions)
    trained = {}
    for image, text in train:
        trained.setdefault(text, []).append(image)
    assert not {r["response"] for r in captions} & {text for _, text in held_out}
    for record in captions:  # each record is one of alignment's training pairs, image and caption together
        image = np.asarray(Image.open(tmp_path / record["image"]).convert("RGB"))
        assert any(np.array_equal(image, seen) for seen in trained[record["response"]])
    assert len({r["response"] for r in captions}) > 30  # a draw over the pairs, not one state repeated
    assert any(int(n) >= 10 for r in captions for n in re.findall(r"\d+", r["response"]))  # OOD numbers
    assert all("{" in r["response"] for r in records[:20])  # the expert's JSON replies come first, unchanged


def test_reading_records_write_the_replys_state_fields_for_the_state_drawn(capsys, tmp_path):
    """--caption fields: each record answers the reading instruction with the JSON object the expert's reply opens
    with, for the state its image shows (checked against the text caption of the same image), OOD states included."""
    import numpy as np
    from PIL import Image

    from gflowvlm.model.env_alignment import env_caption_sets
    from gflowvlm.model.vision_alignment import AlignmentConfig
    from gflowvlm.prompting import reading_instruction

    path = tmp_path / "nl.jsonl"
    code, out, _ = run(capsys, ["make-sft-data", "--env", NUMBERLINE, "--samples", "20", "--caption-samples", "40",
                                "--caption", "fields", "--image-size", "32", "--seed", "3", "--out", str(path)])
    assert code == 0 and "wrote 60 records" in out[-1]
    records = read(path)
    expert, reading = records[:20], records[20:]
    assert [r.get("kind") for r in reading] == ["caption"] * 40
    assert reading_instruction(["current number", "target number"]) == (
        'The image shows the current state.\nRespond with a valid JSON object with fields "current number", '
        '"target number".')
    texts = {}  # image bytes -> the text caption the alignment draws for it (same rollouts, same seed)
    for split_pairs in env_caption_sets([NUMBERLINE], 32, 3, AlignmentConfig.eval_fraction, caption="text")[NUMBERLINE]:
        for image, text in split_pairs:
            texts[image.tobytes()] = text
    numbers = set()
    for record in reading:
        fields = json.loads(record["response"])
        assert list(fields) == ["current number", "target number"] and not record["done"]
        assert record["prompt"] == reading_instruction(list(fields))
        image = np.asarray(Image.open(tmp_path / record["image"]).convert("RGB"))
        assert texts[image.tobytes()] == (f"target number {fields['target number']}, "
                                          f"current number {fields['current number']}")
        numbers.update(fields.values())
    assert max(numbers) >= 10 and len({r["response"] for r in reading}) > 30  # OOD states, a draw over many
    reply = json.loads(expert[0]["response"])  # the expert's reply opens with the same object, same syntax
    opening = json.dumps({k: reply[k] for k in ("current number", "target number")})
    assert expert[0]["response"].startswith(opening[:-1] + ", ")


def test_reading_records_need_an_env_with_state_fields(capsys, tmp_path):
    code, _, err = run(capsys, ["make-sft-data", "--env", "gflowvlm/Blackjack-v0", "--samples", "5",
                                "--caption-samples", "4", "--caption", "fields", "--out",
                                str(tmp_path / "data" / "x.jsonl")])
    assert code == 2 and len(err) == 1 and "state_fields" in err[0], err
    assert not (tmp_path / "data").exists()


def test_bad_caption_samples_are_one_line_and_write_nothing(capsys, tmp_path):
    code, _, err = run(capsys, ["make-sft-data", "--env", NUMBERLINE, "--samples", "5", "--caption-samples", "-1",
                                "--out", str(tmp_path / "data" / "x.jsonl")])
    assert code == 2 and len(err) == 1 and "--caption-samples" in err[0], err
    assert not (tmp_path / "data").exists()
