"""parse_action / action_span: the documented results, exact spans, and a fuzz run that nothing breaks."""
from __future__ import annotations

import builtins
import json
import random
import time

import pytest

from gflowvlm.response_parser import MAX_OUTPUT_CHARS, action_span, parse_action

NUMBER_LINE = ["+", "-"]
BLACKJACK = ["stand", "hit"]
EZ_POINTS = [str(n) for n in range(1, 11)] + ["+", "*", "="]
POINTS24 = [str(n) for n in range(1, 11)] + ["+", "-", "*", "/", "(", ")", "="]
ALFWORLD = ["go to countertop 1", "go to countertop 10", "go to cabinet 2", "open cabinet 2",
            "take apple 1 from countertop 1", "put apple 1 in/on countertop 1", "look", "inventory",
            "examine countertop 1"]
ALL_GAMES = [NUMBER_LINE, BLACKJACK, EZ_POINTS, POINTS24, ALFWORLD]


def response(action: str, thoughts: str = "I think this is right.") -> str:
    return json.dumps({"thoughts": thoughts, "action": action})


def assert_span_is(text: str, value: str) -> None:
    span = action_span(text)
    assert span is not None, text
    start, end = span
    assert text[start:end] == value, (text, span)


# ----- table tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("admissible", ALL_GAMES, ids=["numberline", "blackjack", "ezpoints", "points24", "alf"])
def test_every_card_game_action_reads_back(admissible):
    for command in admissible:
        text = response(command)
        assert parse_action(text, admissible) == command
        assert_span_is(text, command)


@pytest.mark.parametrize("text, expected", [
    ('{"thoughts": "x", "action": "10"}', "10"),
    ('{"thoughts": "x", "action": "1"}', "1"),
    ('{"thoughts": "x", "action": 10}', "10"),
    ('{"thoughts": "x", "action": 10.0}', "10"),
    ('{"thoughts": "x", "action": "100"}', None),
    ('{"thoughts": "x", "action": "0"}', None),
    ('{"thoughts": "x", "action": "play 10"}', "10"),
    # "1" occurs as a whole word, "10" does not: the substring rule finds exactly one command.
    ('{"thoughts": "x", "action": "1 0"}', "1"),
])
def test_ten_never_reads_as_one(text, expected):
    assert parse_action(text, POINTS24) == expected


@pytest.mark.parametrize("value, expected", [
    ("STAND", "stand"), ("  Hit ", "hit"), ("'stand'", "stand"), ("stand.", "stand"), ("Hit!", "hit"),
    ("\u201cstand\u201d", "stand"), ("I will stand", "stand"), ("hit or stand", None), ("fold", None),
    ("", None), ("standing", None),
])
def test_case_quotes_whitespace_punctuation(value, expected):
    assert parse_action(response(value), BLACKJACK) == expected


@pytest.mark.parametrize("value, expected", [
    ("go to countertop 1", "go to countertop 1"),
    ("go to countertop 10", "go to countertop 10"),
    ("Go   To  Countertop 10.", "go to countertop 10"),
    ("I should go to countertop 10 now", "go to countertop 10"),
    ("I should go to countertop 1 now", "go to countertop 1"),
    ("go to countertop 1 then go to cabinet 2", None),
    ("take apple 1 from countertop 1", "take apple 1 from countertop 1"),
    ("put apple 1 in/on countertop 1", "put apple 1 in/on countertop 1"),
    ("go to countertop 3", None),
    ("look", "look"),
])
def test_alfworld_commands(value, expected):
    assert parse_action(response(value), ALFWORLD) == expected


def test_nested_admissible_commands_take_the_longest():
    admissible = ["go to desk 1", "desk 1", "look"]
    assert parse_action(response("i go to desk 1"), admissible) == "go to desk 1"
    assert parse_action(response("desk 1"), admissible) == "desk 1"


def test_punctuation_commands_need_an_exact_match():
    assert parse_action(response("3+4"), POINTS24) is None
    assert parse_action(response(" ( "), POINTS24) == "("
    assert parse_action(response("'*'"), POINTS24) == "*"
    assert parse_action(response("+."), POINTS24) == "+"


def test_returns_the_admissible_spelling():
    assert parse_action(response("go to desk 1"), ["Go To Desk 1"]) == "Go To Desk 1"


def test_several_objects_first_with_action_wins():
    text = '{"thoughts": "a", "action": "+"}\n{"thoughts": "b", "action": "-"}'
    assert parse_action(text, NUMBER_LINE) == "+"
    assert_span_is(text, "+")
    text = '{"note": "no action here"} {"thoughts": "b", "action": "-"}'
    assert parse_action(text, NUMBER_LINE) == "-"
    assert action_span(text) == (text.rindex("-"), text.rindex("-") + 1)


def test_trailing_and_leading_garbage():
    text = 'Sure! Here it is: {"thoughts": "go up", "action": "+"} and then {"broken'
    assert parse_action(text, NUMBER_LINE) == "+"
    assert_span_is(text, "+")
    text = 'noise {"thoughts": "go up", "action": "hit"}}}} ]]'
    assert parse_action(text, BLACKJACK) == "hit"


def test_python_dict_with_single_quotes():
    text = "{'thoughts': \"I'm at 16, so I hit\", 'action': 'hit'}"
    assert parse_action(text, BLACKJACK) == "hit"
    assert_span_is(text, "hit")


def test_action_key_inside_thoughts_is_not_the_field():
    text = '{"thoughts": "the \\"action\\": \\"-\\" is wrong, action: - too", "action": "+"}'
    assert parse_action(text, NUMBER_LINE) == "+"
    assert action_span(text) == (text.rindex("+"), text.rindex("+") + 1)
    broken = '{"thoughts": "the \\"action\\": \\"-\\" is wrong", "action": "+"'  # no closing brace
    assert parse_action(broken, NUMBER_LINE) == "+"
    assert action_span(broken) == (broken.rindex("+"), broken.rindex("+") + 1)


def test_tolerant_forms():
    cases = [
        ('{"thoughts": "x", "action": "stand', "stand"),  # missing closing quote and brace
        ('{"thoughts": "x", "action": "stand\n}', "stand"),
        ('{"thoughts": "x", "action": "stand }', "stand"),
        ('{"thoughts": "x", "action": stand}', "stand"),  # unquoted
        ('{"thoughts": "x", "ACTION"  :\n\t "hit"  }', "hit"),
        ("action: hit\nthoughts: whatever", "hit"),
        ('{"thoughts": "x", \'action\': hit, "extra": 1', "hit"),
    ]
    for text, expected in cases:
        assert parse_action(text, BLACKJACK) == expected, text
        assert_span_is(text, expected)


def test_span_with_unicode_spacing_and_escapes():
    prefix = "思考 🚀 ünïcödé\n"
    text = prefix + '{ "thoughts" :\n "say \\"hi\\" \\\\ ok" ,\n\n  "action"\n:\r\n  "go to cabinet 2"\n}'
    assert parse_action(text, ALFWORLD) == "go to cabinet 2"
    assert_span_is(text, "go to cabinet 2")


def test_span_for_number_and_empty_values():
    text = '{"action": 7}'
    assert_span_is(text, "7")
    text = '{"thoughts": "t", "action": ""}'
    assert action_span(text) == (text.rindex('"'), text.rindex('"'))
    assert parse_action(text, BLACKJACK) is None


def test_no_action_field():
    for text in ["", "stand", '{"thoughts": "stand"}', "my action: stand", "{}", "{'a': 1}", "null"]:
        assert action_span(text) is None, text
        assert parse_action(text, BLACKJACK) is None, text


def test_non_scalar_action_value_names_nothing():
    text = '{"thoughts": "t", "action": ["hit"]}'
    assert parse_action(text, BLACKJACK) is None
    assert_span_is(text, '["hit"]')


def test_non_string_inputs_never_raise():
    for output in [None, 3, 3.5, ["hit"], {"action": "hit"}, object()]:
        assert parse_action(output, BLACKJACK) is None
        assert action_span(output) is None
    assert parse_action(b'{"action": "hit"}', BLACKJACK) == "hit"
    assert parse_action(response("hit"), None) is None
    assert parse_action(response("hit"), "hit") is None  # a string is not a list of commands
    assert parse_action(response("hit"), [None, 3, "hit"]) == "hit"


# ----- fuzzing ----------------------------------------------------------------------------------------------
_PIECES = ['{', '}', '[', ']', '"', "'", ':', ',', '\\', '\n', ' ', '\t', 'action', '"action"', "'action'",
           'ACTION', 'thoughts', '"thoughts"', 'null', 'true', '1e999', '-0', '\\u00', '\\"', 'é', '🚀', '\x00',
           '\ud800', '__import__("os")', 'eval(', '#', '/*']


def _random_whitespace(rng: random.Random) -> str:
    return "".join(rng.choice([" ", "\n", "\t", "\r", ""]) for _ in range(rng.randint(0, 3)))


def _spaced_json(rng: random.Random, thoughts: str, action: str) -> str:
    ws = lambda: _random_whitespace(rng)  # noqa: E731
    return (f"{ws()}{{{ws()}\"thoughts\"{ws()}:{ws()}{json.dumps(thoughts, ensure_ascii=rng.random() < 0.5)}"
            f"{ws()},{ws()}\"action\"{ws()}:{ws()}\"{action}\"{ws()}}}{ws()}")


def _adversarial_strings(rng: random.Random, count: int):
    for index in range(count):
        kind = index % 5
        if kind == 0:
            raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))
            yield raw.decode("utf-8", errors="replace"), None
        elif kind == 1:
            yield "".join(rng.choice(_PIECES + POINTS24 + BLACKJACK) for _ in range(rng.randint(0, 40))), None
        elif kind == 2:
            text = response(rng.choice(POINTS24), thoughts=rng.choice(["action: +", 'say "action": "-"', "x"]))
            cut = rng.randint(0, len(text))
            mutated = list(text[:cut])
            for _ in range(rng.randint(0, 3)):
                mutated.insert(rng.randint(0, len(mutated)), rng.choice(_PIECES))
            yield "".join(mutated), None
        else:
            game = rng.choice(ALL_GAMES)
            action = rng.choice(game)
            thoughts = "".join(rng.choice(_PIECES + ["I", " think", " the", " action", " is"])
                               for _ in range(rng.randint(0, 12)))
            noise = rng.choice(["", "Answer: ", "思考 ", "action: x\n"]) if kind == 3 else ""
            yield noise + _spaced_json(rng, thoughts, action), (game, action)


def test_fuzz_never_raises_and_only_returns_admissible(monkeypatch):
    evaluated: list[str] = []
    for name in ("eval", "exec", "compile"):
        original = getattr(builtins, name)

        def spy(*args, _name=name, _original=original, **kwargs):
            evaluated.append(_name)
            return _original(*args, **kwargs)
        monkeypatch.setattr(builtins, name, spy)

    rng = random.Random(1234)
    checked_exact = 0
    started = time.perf_counter()
    for text, known in _adversarial_strings(rng, 10_000):
        admissible = known[0] if known else rng.choice(ALL_GAMES)
        result = parse_action(text, admissible)
        span = action_span(text)
        assert result is None or result in admissible
        assert span is None or 0 <= span[0] <= span[1] <= min(len(text), MAX_OUTPUT_CHARS)
        if known:
            assert result == known[1], text
            assert text[span[0]:span[1]] == known[1], text
            checked_exact += 1
    assert checked_exact >= 3_000
    assert evaluated == []
    assert time.perf_counter() - started < 30


def test_code_in_output_is_never_run(tmp_path):
    marker = tmp_path / "pwned_x"
    payloads = [
        f"__import__('os').system('touch {marker}')",
        json.dumps({"thoughts": "t", "action": f"__import__('os').system('touch {marker}')"}),
        "{'action': __import__('os').system('touch %s')}" % marker,
        f'{{"action": "{{}}".format(open("{marker}", "w"))}}',
        f"action: exec(\"open('{marker}', 'w')\")",
    ]
    for text in payloads:
        for admissible in ALL_GAMES:
            result = parse_action(text, admissible)
            assert result is None or result in admissible
        action_span(text)
    assert not marker.exists()


def test_huge_and_deep_inputs_are_bounded():
    rng = random.Random(7)
    alphabet = '{}[]":, \n\\abc'
    cases = [
        "x" * 1_000_000 + response("hit"),  # the action lies beyond the read limit
        "".join(rng.choice(alphabet) for _ in range(1_000_000)),
        '{"a":' * 10_000 + '"x"' + "}" * 10_000,
        "[" * 10_000 + response("hit") + "]" * 10_000,
        '{"action": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"a": 1, ' * 100_000,
        '{"a":"' + "x{" * 500_000,
        '"action": "' + "hit " * 250_000,
    ]
    for text in cases:
        started = time.perf_counter()
        result = parse_action(text, BLACKJACK)
        span = action_span(text)
        assert time.perf_counter() - started < 2.0, text[:40]
        assert result is None or result in BLACKJACK
        assert span is None or span[1] <= MAX_OUTPUT_CHARS
    assert parse_action(cases[0], BLACKJACK) is None
    assert parse_action(cases[3], BLACKJACK) == "hit"
    assert parse_action(cases[4], BLACKJACK) is None
