"""Parsing System 1's keyframe answers and System 2's grounding answers the way the official code reads them.

The reward-level agreement with the official code is in ``test_official_oracle.py``; this file pins
the parser's own records: counts, kept moments, frames, keyframe descriptions, typed errors, and
hostile answers (huge numbers, deep nesting, very long text) that must fail cleanly and fast.
"""

from __future__ import annotations

import json
import random
import re
import time

import pytest

from omni_r1.systems.answer import (
    AnswerParseError,
    BadFields,
    BadJson,
    EmptyAnswer,
    MissingTags,
    NoMoments,
    OutOfRange,
    extract_answer,
    frame_index,
    matches_format,
    object_spans,
    parse_box_entries,
    parse_rewrite,
    parse_seconds,
    parse_selection,
    try_parse,
)
from omni_r1.systems.prompts import format_timestamp
from omni_r1.types import Keyframe, KeyframeSelection

CLIP = {"duration": 8.0, "num_frames": 16}  # 16 frames treated as 2 fps


def moment(start: str, end: str, description: object = "the red circle") -> str:
    return json.dumps({"start_time": start, "end_time": end, "description": description})


def completion(answer: str, think: str = "The circle is clearest early on.") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def parse(text: str, **clip: object) -> KeyframeSelection:
    return parse_selection(text, **{**CLIP, **clip})


# ----------------------------------------------------------------------------------------------- well-formed


def test_single_moment_chooses_every_frame_it_spans() -> None:
    selection = parse(completion(moment("00:01.00", "00:02.00")))
    assert selection.task == "revos" and selection.format_ok
    assert (selection.objects_found, selection.objects_parsed, selection.objects_kept) == (1, 1, 1)
    [m] = selection.moments
    assert (m.start, m.end, m.kept, m.frames) == (1.0, 2.0, True, (2, 3, 4))
    assert selection.keyframes == tuple(Keyframe(f, "the red circle") for f in (2, 3, 4))


@pytest.mark.parametrize("layout", [
    lambda objs: "[" + ", ".join(objs) + "]",
    lambda objs: "\n".join(objs),
    lambda objs: "Here are the moments: " + " and ".join(objs) + ".",
], ids=["json-list", "newlines", "prose"])
def test_moments_are_found_in_any_layout(layout) -> None:
    objs = [moment("00:00.00", "00:00.00", "A"), moment("00:03.00", "00:03.00", "B"), moment("00:06.50", "00:07.00", "C")]
    selection = parse(completion(layout(objs)))
    assert selection.objects_found == 3 and selection.objects_kept == 3
    assert selection.keyframes == ((0, "A"), (6, "B"), (13, "C"), (14, "C"))


def test_frames_are_deduplicated_ascending_and_capped_at_max_keyframes() -> None:
    objs = [moment("00:03.00", "00:04.00", "late"), moment("00:00.50", "00:01.50", "early"), moment("00:01.00", "00:01.00")]
    selection = parse(completion("\n".join(objs)))
    assert selection.frames == (1, 2, 3, 6, 7, 8)  # all distinct chosen frames, for R_num
    assert [k.frame for k in selection.keyframes] == [1, 2, 3, 6]
    assert [k.frame for k in parse(completion("\n".join(objs)), max_keyframes=2).keyframes] == [1, 2]


def test_each_keyframe_takes_the_first_kept_moment_that_contains_it() -> None:
    objs = [moment("00:09.00", "00:09.50", "past the end"), moment("00:01.00", "00:01.50", "A"),
            moment("00:00.50", "00:01.00", "B")]
    selection = parse(completion("\n".join(objs)))
    assert selection.objects_kept == 2 and not selection.moments[0].kept and selection.moments[0].frames == ()
    assert selection.keyframes == ((1, "B"), (2, "A"), (3, "A"))


def test_frames_past_the_last_are_clipped_and_the_end_itself_is_kept() -> None:
    assert parse(completion(moment("00:07.50", "00:08.00"))).frames == (15,)
    assert parse(completion(moment("00:08.00", "00:08.00"))).objects_kept == 1


# ----------------------------------------------------------------------------------------------- official leniency


def test_no_think_is_needed_to_parse_but_the_format_reward_sees_it() -> None:
    selection = parse("<answer>" + moment("00:01.00", "00:01.00") + "</answer>")
    assert selection.objects_kept == 1 and not selection.format_ok
    assert not matches_format("<answer>x</answer>") and matches_format("<think>a</think>\n <answer>x</answer>")


@pytest.mark.parametrize("stamp,seconds", [
    ("00:01.00", 1.0), ("0:02.5", 2.05), ("00:01.500", 6.0), ("01:02.35", 62.35), ("00:75.00", 75.0),
    ("00:01.00 seconds", 1.0), ("00:00.07", 0.07),
])
def test_times_follow_the_official_prefix_pattern_and_arithmetic(stamp: str, seconds: float) -> None:
    # t = mm * 60 + ss + ff * 10 / 1000: ff is read as an integer whatever its digit count
    assert parse_seconds(stamp) == pytest.approx(seconds, abs=1e-12)


@pytest.mark.parametrize("stamp", [" 00:01.00", "1.5", "00:01", "a00:01.00", None, 5, ["00:01.00"]])
def test_times_that_do_not_start_with_the_pattern_do_not_parse(stamp: object) -> None:
    assert parse_seconds(stamp) is None


def test_frame_index_is_the_official_float_arithmetic() -> None:
    assert frame_index(1.5, 2.0, 100) == 3 and frame_index(7.9, 2.0, 10) == 9


@pytest.mark.parametrize("description,text", [("", ""), (7, "7"), ({"a": 1}, None), ([1, 2], "[1, 2]")])
def test_any_present_description_parses(description: object, text: str | None) -> None:
    answer = completion(moment("00:01.00", "00:01.00", description))
    if text is None:  # a nested object closes the official ({...}) match early: the JSON breaks
        assert isinstance(try_parse(answer, task="revos", **CLIP), BadJson)
        return
    assert parse(answer).keyframes == ((2, text),)


def test_a_null_description_is_counted_but_not_parsed() -> None:
    error = try_parse(completion(moment("00:01.00", "00:01.00", None)), task="revos", **CLIP)
    assert isinstance(error, BadFields) and (error.objects_found, error.objects_parsed) == (1, 0)


def test_objects_end_at_the_first_closing_brace() -> None:
    assert object_spans('a {"k": "}"} b {"x": {"y": 1}} {') == ['{"k": "}', '{"x": {"y": 1}']


def test_object_spans_equal_the_official_regex() -> None:
    rng = random.Random(0)
    texts = ["", "{", "}", "{}", "{{}}", "a{b}c{d", "}{", *("".join(rng.choice("{}ab\n\"") for _ in range(40))
                                                           for _ in range(500))]
    for text in texts:
        assert object_spans(text) == re.findall(r"({[\s\S]*?})", text), text


def test_the_answer_is_the_first_answer_block_stripped() -> None:
    assert extract_answer("<think>x</think><answer>\n a \n</answer><answer>b</answer>") == "a"
    assert extract_answer("<think>x</think>") is None


# ----------------------------------------------------------------------------------------------- typed errors


@pytest.mark.parametrize("text,error", [
    ("<think>x</think>", MissingTags),
    ("<think>x</think><answer>" + moment("00:01.00", "00:01.00"), MissingTags),
    ("<think>x</think><answer>  </answer>", EmptyAnswer),
    (completion("the circle at one second"), NoMoments),
    (completion("{start_time: 00:01.00}"), BadJson),
    (completion(json.dumps({"start_time": "00:01.00", "description": "x"})), BadFields),
    (completion(moment("00:09.00", "00:09.00")), OutOfRange),
    (completion(moment("00:02.00", "00:01.00")), OutOfRange),
])
def test_malformed_answers_raise_typed_errors(text: str, error: type[AnswerParseError]) -> None:
    with pytest.raises(error):
        parse(text)
    assert isinstance(try_parse(text, task="revos", **CLIP), error)


def test_counts_survive_in_the_error_for_the_format_terms() -> None:
    text = completion(moment("00:09.00", "00:09.00") + moment("x", "y") + "{broken")
    error = try_parse(text, task="revos", **CLIP)
    assert isinstance(error, OutOfRange) and (error.objects_found, error.objects_parsed) == (2, 1)


def test_a_clip_with_no_frames_is_a_callers_mistake() -> None:
    with pytest.raises(ValueError, match="num_frames=0"):
        parse_selection(completion(moment("00:01.00", "00:01.00")), duration=1.0, num_frames=0)


# ----------------------------------------------------------------------------------------------- hostile


def test_huge_numbers_and_deep_nesting_fail_cleanly() -> None:
    huge = completion(moment("9" * 5000 + ":00.00", "9" * 5000 + ":00.00"))
    error = try_parse(huge, task="revos", **CLIP)  # parsed (the fields are there), never kept
    assert isinstance(error, OutOfRange) and error.objects_parsed == 1
    nested = completion('{"start_time": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert isinstance(try_parse(nested, task="revos", **CLIP), BadJson)


def test_a_very_long_answer_is_parsed_in_linear_time() -> None:
    text = completion(" ".join([moment("00:01.00", "00:01.00")] * 5000) + "{" * 100_000)
    started = time.perf_counter()
    selection = parse(text)
    assert selection.objects_found == 5000 + 0  # the unclosed braces never close
    assert time.perf_counter() - started < 30  # a guard against quadratic behaviour, not a speed claim


def test_long_completions_give_short_excerpts() -> None:
    error = try_parse("x" * 10_000, task="revos", **CLIP)
    assert isinstance(error, MissingTags) and len(error.completion_excerpt) < 200


# ----------------------------------------------------------------------------------------------- RefAVS


def test_refavs_answer_is_the_whole_answer_text_on_frame_zero() -> None:
    selection = parse_rewrite(completion(' {"description": "the brown dog"} '))
    assert selection.keyframes == ((0, '{"description": "the brown dog"}'),)
    assert parse_rewrite("<answer>the dog</answer>").keyframes == ((0, "the dog"),)
    with pytest.raises(EmptyAnswer):
        parse_rewrite(completion(" "))
    with pytest.raises(MissingTags):
        parse_rewrite("<think>only</think>")


# ----------------------------------------------------------------------------------------------- System 2

RESIZED, ORIGINAL = (140, 112), (280, 224)


def entries(answer: str) -> list:
    return list(parse_box_entries(answer, resized_size=RESIZED, original_size=ORIGINAL))


def test_fenced_grounding_answer_is_scaled_to_original_pixels() -> None:
    [box] = entries('```json\n[{"bbox_2d": [14, 28, 70, 56], "label": "red circle"}]\n```')
    assert (box.x1, box.y1, box.x2, box.y2, box.label) == (28, 56, 140, 112, "red circle")


def test_every_object_is_an_entry_and_invalid_ones_are_none() -> None:
    answer = json.dumps([{"bbox_2d": [1, 1, 9, 9]}, {"bbox": [1, 2, 3, 4]}, {"bbox_2d": [5, 5, 1, 1]},
                         {"bbox_2d": [-1, 0, 4, 4]}, {"bbox_2d": ["a", 0, 4, 4]}, {"bbox_2d": [0, 0, 1e999, 4]},
                         {"bbox_2d": [200, 200, 300, 300]}, {"bbox_2d": [1, 1, 9, 9], "label": 3}])
    found = entries(answer.replace("1e999", "Infinity"))
    assert [e is not None for e in found] == [True, False, False, False, False, False, False, True]
    assert found[-1].label == "3"
    assert found[0].x2 == 18  # 9 resized pixels, scaled 2x


def test_boxes_are_clipped_to_the_image_and_no_object_means_no_entry() -> None:
    [box] = entries('[{"bbox_2d": [100, 100, 500, 500]}]')
    assert (box.x2, box.y2) == (280, 224)
    assert entries("[]") == [] and entries("I cannot find it.") == []


def test_timestamps_round_trip() -> None:
    for seconds in (0.0, 0.5, 1.25, 59.99, 61.0, 5999.0):
        assert parse_seconds(format_timestamp(seconds)) == pytest.approx(seconds)
