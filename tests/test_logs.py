"""Logged and fresh teacher outputs: parsing with line-numbered errors, and pairing by prompt."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from distill_audit.errors import UsageError
from distill_audit.logs import LoggedOutput, distinct_outputs, load_outputs, pair_outputs


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_reads_prompt_completion_lines_and_ignores_other_keys(tmp_path: Path) -> None:
    path = _write(tmp_path / "l.jsonl", [{"prompt": "a", "completion": " b", "id": 1}, "", {"prompt": "c", "completion": "d"}])
    out = load_outputs(path, "--teacher-logs")
    assert out == (LoggedOutput("a", " b", 1), LoggedOutput("c", "d", 3))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "empty"),
        (["{not json"], ":1: not valid JSON"),
        ([{"prompt": "a", "completion": "b"}, {"prompt": "a", "response": "b"}], ":2: needs string fields"),
        ([{"prompt": "a", "completion": 3}], "'completion' missing or not a string"),
        ([["a", "b"]], ":1: expected a JSON object"),
    ],
)
def test_malformed_logs_are_one_clear_error(tmp_path: Path, lines: list[object], message: str) -> None:
    path = _write(tmp_path / "l.jsonl", lines) if lines else tmp_path / "l.jsonl"
    if not lines:
        path.write_text("")
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        load_outputs(path, "--teacher-logs")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_outputs(tmp_path / "none.jsonl", "--teacher-logs")
    with pytest.raises(UsageError, match="is a directory"):
        load_outputs(tmp_path, "--teacher-logs")


def test_pairs_by_prompt_and_repeat_and_refuses_unpaired_sets() -> None:
    logged = [LoggedOutput("p", "1"), LoggedOutput("q", "2"), LoggedOutput("p", "3"), LoggedOutput("r", "4")]
    fresh = [LoggedOutput("q", "x"), LoggedOutput("p", "y"), LoggedOutput("p", "z"), LoggedOutput("s", "w")]
    pairs = pair_outputs(logged, fresh, "file")
    assert [(a.completion, b.completion) for a, b in zip(pairs.logged, pairs.fresh)] == [("1", "y"), ("2", "x"), ("3", "z")]
    assert pairs.unpaired_logged == 1 and pairs.unpaired_fresh == 1
    with pytest.raises(UsageError, match="share no prompt"):
        pair_outputs(logged, [LoggedOutput("other", "x")], "file")


def test_a_line_separator_inside_a_json_string_does_not_split_the_line(tmp_path: Path) -> None:
    # U+2028 and U+2029 are legal raw inside JSON strings; str.splitlines() would cut the line there
    path = tmp_path / "logs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completion": "a\u2028b\u2029c"}, ensure_ascii=False) + "\r\n",
                    encoding="utf-8")
    (out,) = load_outputs(path, "--teacher-logs")
    assert out.completion == "a\u2028b\u2029c" and out.line == 1


# -- one pair, one unit ----------------------------------------------------------------------------------------


def test_a_repeated_line_is_one_unit_but_different_answers_to_one_prompt_are_kept() -> None:
    logged = [LoggedOutput("p", "A"), LoggedOutput("p", "A"), LoggedOutput("p", "B"), LoggedOutput("q", "C"),
              LoggedOutput("p", "A")]
    fresh = [LoggedOutput("p", "x"), LoggedOutput("p", "x"), LoggedOutput("p", "y"), LoggedOutput("p", "z"),
             LoggedOutput("q", "w")]
    pairs = pair_outputs(logged, fresh, "fresh.jsonl")
    assert [(a.completion, b.completion) for a, b in zip(pairs.logged, pairs.fresh)] == [("A", "x"), ("B", "y"), ("C", "w")]
    assert (pairs.logged_duplicates_dropped, pairs.fresh_duplicates_dropped) == (2, 1)
    assert (pairs.unpaired_logged, pairs.unpaired_fresh) == (0, 1)  # ("p", "z"): a third distinct fresh answer
    record = pairs.to_dict()
    assert (record["pairs"], record["logged_duplicates_dropped"], record["fresh_duplicates_dropped"]) == (3, 2, 1)


def test_twelve_answers_logged_thirty_times_are_twelve_pairs() -> None:
    logged = [LoggedOutput(f"prompt {i}", f" answer {i}") for _ in range(30) for i in range(12)]
    fresh = [LoggedOutput(f"prompt {i}", f" fresh {i}.{k}") for k in range(30) for i in range(12)]
    pairs = pair_outputs(logged, fresh, "sampled here")
    assert len(pairs.logged) == 12 and pairs.logged_duplicates_dropped == 348
    assert pairs.unpaired_fresh == 348 and pairs.fresh_duplicates_dropped == 0
    assert distinct_outputs(logged) == (tuple(logged[:12]), 348)


def test_loading_keeps_every_line_and_says_how_many_repeat(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines: list[object] = [{"prompt": "a", "completion": "b"} for _ in range(3)]
    lines.append({"prompt": "a", "completion": "c"})
    path = _write(tmp_path / "l.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="distill_audit.logs"):
        out = load_outputs(path, "--teacher-fresh")
    assert [o.line for o in out] == [1, 2, 3, 4]
    assert "--teacher-fresh" in caplog.text and "2 line(s) repeat an earlier line's prompt and completion" in caplog.text


# -- faults at the door ------------------------------------------------------------------------------------------


def test_a_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "a", "completion": "b"}\r\n\r\n{"prompt": "c", "completion": "d"}\r\n')
    assert load_outputs(path, "--teacher-logs") == (LoggedOutput("a", "b", 1), LoggedOutput("c", "d", 3))


@pytest.mark.parametrize(("line", "message"), [
    ('{"prompt": "a", "completion": "b\\ud800"}',
     ':1: "completion" is not valid Unicode (a lone surrogate U+D800 at character 1'),
    ('{"prompt": 1, "x\\ny\\u2028": 2}', "keys: prompt, x\\ny\\u2028)"),
    ("[" * 50_000, ":1: not valid JSON (nested too deeply)"),
    ('{"prompt": ' + "1" * 5000 + "}", ":1: not valid JSON (a number with too many digits)"),
])
def test_hostile_lines_are_one_line_errors(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "l.jsonl", [line])
    with pytest.raises(UsageError) as info:
        load_outputs(path, "--teacher-logs")
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1


def test_unpaired_files_name_the_fresh_source() -> None:
    with pytest.raises(UsageError, match=r"fresh teacher outputs \(fresh\.jsonl\) share no prompt"):
        pair_outputs([LoggedOutput("a", "b")], [LoggedOutput("c", "d")], "fresh.jsonl")
