"""Final-answer extraction and normalisation (cai.answers)."""

from __future__ import annotations

import pytest

from cai.answers import AnswerExtractor, normalize_answer, words_to_number
from cai.errors import UserInputError


@pytest.mark.parametrize(
    "text, answer, method",
    [
        ("3 + 4 = 7. The answer is 7.", "7", "answer_is"),
        ("the answer is $1,234.50.", "1234.5", "answer_is"),
        ("The answer is 5.0", "5", "answer_is"),
        ("So she has 12 left.\nThe final answer is: 12 apples", "12", "answer_is"),
        ("Final answer: twenty-one", "21", "answer_is"),
        ("The answer is one hundred and five.", "105", "answer_is"),
        ("Answer: -3", "-3", "answer_is"),
        ("answer = 50%", "50", "answer_is"),
        ("The answer is 3.5 hours.\nThat is all.", "3.5", "answer_is"),
        (r"so we get \boxed{3/4}", "0.75", "boxed"),
        ("The answer is 1/3", "1/3", "answer_is"),
        ("The answer is **Paris**.", "paris", "answer_is"),
        # The last statement wins: models revise themselves.
        ("The answer is 7. Wait, I forgot the bag. The answer is 8.", "8", "answer_is"),
        # No answer line: fall back to the last number, and say so.
        ("He buys 3 packs of 4, so 12 pens in all", "12", "last_number"),
        ("It costs $2,000 in total.", "2000", "last_number"),
    ],
)
def test_default_extractor_reads_many_formats(text, answer, method):
    got = AnswerExtractor().extract(text)
    assert got.ok, got
    assert (got.answer, got.method) == (answer, method)


@pytest.mark.parametrize("text, reason", [
    ("", "empty output"),
    ("   \n", "empty output"),
    ("I am not sure how to solve this.", "no 'The answer is X' and no number"),
])
def test_failures_carry_a_reason(text, reason):
    got = AnswerExtractor().extract(text)
    assert got.answer is None and not got.ok
    assert reason in got.reason


def test_without_fallback_a_missing_answer_line_fails():
    got = AnswerExtractor(fallback_last_number=False).extract("so 12 pens in all")
    assert got.answer is None
    assert "The answer is X" in got.reason


def test_regex_and_last_number_extractors():
    rx = AnswerExtractor("regex", pattern=r"#### (\S+)")
    assert rx.extract("3*4=12\n#### 12\n#### 13").answer == "13"
    assert AnswerExtractor("last_number").extract("2 then 3 then 4.0").answer == "4"
    assert AnswerExtractor("last_number").extract("none here").reason == "no number in the text"


def test_bad_extractor_settings_are_user_errors():
    with pytest.raises(UserInputError, match="not a valid regex"):
        AnswerExtractor("regex", pattern="(unclosed")
    with pytest.raises(UserInputError, match="needs a pattern"):
        AnswerExtractor("regex")
    with pytest.raises(UserInputError, match="unknown answer extractor"):
        AnswerExtractor("nope")  # type: ignore[arg-type]


def test_normalisation_makes_equal_numbers_equal():
    forms = ["1200", "1,200", "$1,200.", "1200.0", 1200, 1200.0, "1200 dollars"]
    assert {normalize_answer(f) for f in forms} == {"1200"}
    assert normalize_answer("0.5") == normalize_answer("1/2") == "0.5"
    assert normalize_answer("twelve") == "12"
    assert normalize_answer("  Paris. ") == "paris"
    assert normalize_answer("12", numeric=False) == "12"
    assert normalize_answer("...") is None


def test_words_to_number():
    assert words_to_number("forty-two") == 42
    assert words_to_number("two thousand and five") == 2005
    assert words_to_number("banana") is None
