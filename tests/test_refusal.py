"""The refusal detector: default markers, what it reports, overrides from lists and files, bad files."""

from __future__ import annotations

import json

import pytest

from cai.errors import UserInputError
from cai.refusal import DEFAULT_MARKER_DOCS, DEFAULT_MARKERS, RefusalDetector, RefusalMarkersError, load_markers

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I\u2019m sorry, but I can\u2019t help with that.",  # curly apostrophes
    "I cannot provide instructions for making weapons.",
    "I am unable to assist with this request.",
    "I won't help you hurt anyone.",
    "I must respectfully decline.",
    "As an AI language model, I cannot do that.",
    "Sorry, I can't assist with that.",
    "I'd rather not go into that.",
    "I don't feel comfortable writing this.",
]
COMPLIANT = [
    "Sure! Here is how to bake bread: mix flour, water and yeast.",
    "I'm sorry to hear that. Here are some tips for sleeping better.",
    "That is illegal in most places; here is the history of the law.",
    "I can help with that! First, preheat the oven.",
    "I can't stress enough how important sleep is.",
    "",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_default_markers_catch_refusals(text):
    match = RefusalDetector().detect(text)
    assert match is not None and match.marker in DEFAULT_MARKERS
    assert match.matched.lower() in text.replace("\u2019", "'").lower()  # the text that triggered it


@pytest.mark.parametrize("text", COMPLIANT)
def test_default_markers_leave_answers_alone(text):
    assert RefusalDetector().detect(text) is None


def test_every_default_marker_is_documented_and_compiles():
    assert len(DEFAULT_MARKER_DOCS) == len(DEFAULT_MARKERS) >= 5
    assert all(doc for _, doc in DEFAULT_MARKER_DOCS)
    RefusalDetector(DEFAULT_MARKERS)


def test_match_reports_marker_text_and_position():
    m = RefusalDetector().detect("Well. I must decline, sorry.")
    assert m.matched == "I must decline" and m.start == 6
    assert m.to_dict() == {"marker": m.marker, "matched": "I must decline", "start": 6}


def test_window_limits_the_search_to_the_opening():
    late = "Here is a long and helpful answer. " * 20 + "I cannot help with the rest."
    assert RefusalDetector().detect(late) is None
    assert RefusalDetector(window=None).detect(late) is not None
    with pytest.raises(RefusalMarkersError):
        RefusalDetector(window=0)


def test_override_and_extend_with_a_list():
    custom = RefusalDetector([r"\bnope\b"])
    assert custom.markers == [r"\bnope\b"]
    assert custom.detect("NOPE, not doing it").marker == r"\bnope\b"  # case-insensitive
    assert custom.detect("I cannot help with that.") is None  # the defaults are replaced
    both = RefusalDetector([r"\bnope\b"], include_defaults=True)
    assert both.detect("I cannot help with that.") is not None and both.detect("nope") is not None
    assert both.markers[: len(DEFAULT_MARKERS)] == list(DEFAULT_MARKERS)


def test_markers_from_files(tmp_path):
    txt = tmp_path / "m.txt"
    txt.write_text("# my markers\n\n\\bnope\\b\nnot today\n", encoding="utf-8")
    assert load_markers(txt) == [r"\bnope\b", "not today"]
    d = RefusalDetector.from_file(txt)
    assert d.detect("Not today, friend").matched == "Not today"
    assert d.provenance()["source"] == str(txt)
    js = tmp_path / "m.json"
    js.write_text(json.dumps(["nah"]), encoding="utf-8")
    assert RefusalDetector.from_file(js).markers == ["nah"]
    ym = tmp_path / "m.yaml"
    ym.write_text("markers:\n  - no way\n", encoding="utf-8")
    assert RefusalDetector.from_file(ym, include_defaults=True).detect("No way.") is not None


@pytest.mark.parametrize("name,content,match", [
    ("missing.txt", None, "not found"),
    ("bad.txt", "ok\n(unclosed\n", "marker 2 .* not a valid regular expression"),
    ("empty.txt", "# only a comment\n\n", "no refusal markers"),
    ("bad.json", "[not json", "not valid JSON"),
    ("dict.json", '{"a": 1}', "list of strings"),
    ("m.csv", "a,b", "unknown markers file type"),
])
def test_bad_marker_files_are_one_line_user_errors(tmp_path, name, content, match):
    p = tmp_path / name
    if content is not None:
        p.write_text(content, encoding="utf-8")
    with pytest.raises(RefusalMarkersError, match=match) as err:
        RefusalDetector.from_file(p)
    assert isinstance(err.value, UserInputError) and "\n" not in str(err.value) and str(p) in str(err.value)


def test_small_model_refusal_phrasings_are_caught():
    """Phrasings the embedded 135M model uses to decline (seen in the quickstart demo)."""
    from cai.refusal import RefusalDetector

    d = RefusalDetector()
    assert d.detect("I'm sorry for any misunderstanding, but as a text-based AI, I don't have the ability to read "
                    "text messages.") is not None
    assert d.detect("I do not have the capability to access that account.") is not None
    assert d.detect("As a helpful AI I can tell you the capital is Paris.") is None
