"""Logged and fresh teacher outputs: parsing with line-numbered errors, and pairing by prompt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.errors import UsageError
from audit.logs import LoggedOutput, load_outputs, pair_outputs


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
