"""The transcript backend: a closed teacher served from its logged answers, read from real files."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill_audit import synthetic
from distill_audit.backends.base import Capability, GenerateParams, ModelAdapter
from distill_audit.backends.remote import UNKNOWN_ID, TokenMap
from distill_audit.backends.transcript import CUT_CHARS, CUT_LOGGED, CUT_TOKENIZER, TranscriptAdapter, load_transcript
from distill_audit.errors import CapabilityError, UsageError


def write(path: Path, *lines: Any) -> Path:
    """One JSON object per line; a str is written as it is (for malformed and blank lines)."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def chat_item(token: str, logprob: float, alts: list[tuple[str, float]]) -> dict[str, Any]:
    return {
        "token": token, "logprob": logprob, "bytes": list(token.encode()),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts],
    }


COMPLETIONS_LP = {
    "tokens": [" Paris", ".", " It"],
    "token_logprobs": [-0.1, -0.5, -1.2],
    "text_offset": [0, 6, 7],
    "top_logprobs": [{" Lyon": -3.0, " Paris": -0.1}, {".": -0.5, ",": -1.5}, {" It": -1.2, " The": -0.9}],
}


# -- formats ------------------------------------------------------------------------------------------------


def test_plain_line_with_completions_logprobs(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl",
                 {"prompt": "Capital of France?", "completion": " Paris. It", "model": "m-1", "logprobs": COMPLETIONS_LP},
                 {"prompt": "Two", "completion": "no logprobs here"})
    first, second = load_transcript(path)
    assert (first.prompt, first.completion, first.model, first.line) == ("Capital of France?", " Paris. It", "m-1", 1)
    assert first.tokens == (" Paris", ".", " It")
    assert first.token_logprobs == (-0.1, -0.5, -1.2)
    assert first.top is not None
    assert first.top[0] == ((" Paris", -0.1), (" Lyon", -3.0))  # most likely first, whatever the log's order
    assert first.top[2] == ((" The", -0.9), (" It", -1.2))
    assert (second.tokens, second.token_logprobs, second.top, second.model, second.line) == (None, None, None, None, 2)


def test_chat_log_with_string_response_and_message_response(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl",
                 {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                  "response": "Hello."},
                 {"messages": [{"role": "user", "content": "Q2"}],
                  "response": {"role": "assistant", "content": "A2"}, "model": "gpt-x"})
    a, b = load_transcript(path)
    assert (a.prompt, a.completion, a.model, a.tokens) == ("Hi?", "Hello.", None, None)
    assert (b.prompt, b.completion, b.model) == ("Q2", "A2", "gpt-x")


def test_chat_completion_object_gives_text_model_and_logprobs(tmp_path: Path) -> None:
    response = {
        "object": "chat.completion", "model": "gpt-4o-2024",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Yes, sure"},
                     "logprobs": {"content": [chat_item("Yes", -0.2, [("Yes", -0.2), ("No", -2.0)]),
                                              chat_item(",", -0.4, [("!", -1.9), (",", -0.4)]),
                                              chat_item(" sure", -0.7, [(" sure", -0.7)])]}}],
    }
    path = write(tmp_path / "t.jsonl", {"messages": [{"role": "user", "content": "Can you?"}], "response": response})
    (entry,) = load_transcript(path)
    assert (entry.prompt, entry.completion, entry.model) == ("Can you?", "Yes, sure", "gpt-4o-2024")
    assert entry.tokens == ("Yes", ",", " sure")
    assert entry.token_logprobs == (-0.2, -0.4, -0.7)
    assert entry.top is not None and entry.top[1] == ((",", -0.4), ("!", -1.9))
    assert entry.token_bytes == (b"Yes", b",", b" sure")


def test_top_level_chat_logprobs(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {
        "messages": [{"role": "user", "content": "Say ok"}], "response": "ok",
        "logprobs": {"content": [chat_item("ok", -0.05, [("ok", -0.05), ("OK", -3.1)])]},
    })
    empty = {"messages": [{"role": "user", "content": "Say no"}], "response": "no", "logprobs": {"content": []}}
    write(path, path.read_text(encoding="utf-8").strip(), empty)
    entry, no_tokens = load_transcript(path)
    assert entry.tokens == ("ok",) and entry.token_logprobs == (-0.05,)
    assert no_tokens.tokens is None  # an empty list for a non-empty answer: no log-probs
    assert entry.top == ((("ok", -0.05), ("OK", -3.1)),)


def test_fine_tuning_form_takes_the_last_user_turn_before_the_final_answer(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "second answer"},
    ]})
    (entry,) = load_transcript(path)
    assert (entry.prompt, entry.completion) == ("second question", "second answer")


def test_multi_part_content_joins_the_text_parts(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                     {"type": "image_url", "image_url": {"url": "data:,"}},
                                     {"type": "text", "text": "what is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ]})
    (entry,) = load_transcript(path)
    assert entry.prompt == "Look:\nwhat is it?"
    assert entry.completion == "A cat."


def test_a_raw_line_separator_inside_a_string_does_not_split_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"prompt": "a\u2028b", "completion": "c\u2029d"}, {"prompt": "x", "completion": "y"})
    entries = load_transcript(path)
    assert [(e.prompt, e.completion, e.line) for e in entries] == [("a\u2028b", "c\u2029d", 1), ("x", "y", 2)]


# -- refusals -----------------------------------------------------------------------------------------------


def test_every_malformed_line_is_named_in_one_error(tmp_path: Path) -> None:
    good = {"prompt": "p", "completion": "c"}
    path = write(
        tmp_path / "transcript.jsonl",
        good,                                                                         # 1
        "",                                                                           # 2 blank: skipped
        "{not json",                                                                  # 3
        good,                                                                         # 4
        {"prompt": "p", "answer": "c"},                                               # 5 no completion
        {"prompt": "p", "completion": "c",
         "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-1.0]}},               # 6 lengths disagree
        {"prompt": "p", "completion": "c",
         "logprobs": {"tokens": ["c"], "token_logprobs": ["high"]}},                  # 7 non-numeric
        {"messages": [{"role": "system", "content": "s"}], "response": "r"},          # 8 no user turn
        [1, 2],                                                                       # 9 not an object
        {"messages": [{"role": "user", "content": "u"}],
         "response": {"choices": [{"message": {"role": "assistant", "content": None}}]}},  # 10 no text
    )
    with pytest.raises(UsageError) as info:
        load_transcript(path)
    message = str(info.value)
    assert "\n" not in message
    assert "transcript.jsonl: 7 malformed lines: " in message
    for n in (3, 5, 6, 7, 8, 9, 10):
        assert f"line {n}: " in message
    for n in (1, 2, 4):
        assert f"line {n}: " not in message
    assert "line 3: not valid JSON" in message
    assert 'line 5: no "completion" or "response"' in message
    assert "logprobs.token_logprobs with 1 entries for 2 tokens (the lengths must agree)" in message
    assert "line 7: logprobs.token_logprobs[0] = 'high' (expected a number)" in message
    assert "line 8: no user message" in message


def test_many_malformed_lines_are_capped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", *(["oops"] * 13))
    with pytest.raises(UsageError) as info:
        load_transcript(path)
    message = str(info.value)
    assert "13 malformed lines" in message
    assert "line 10: " in message and "line 11: " not in message
    assert message.endswith("; and 3 more")


@pytest.mark.parametrize("content", ["", "\n  \n\t\n"])
def test_an_empty_or_blank_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=r"^--teacher-transcript .*t\.jsonl: no transcript entries \(the file is empty\)$"):
        load_transcript(path)


def test_missing_file_directory_and_non_utf8_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_transcript(tmp_path / "absent.jsonl", flag="--x")
    with pytest.raises(UsageError, match="is a directory"):
        load_transcript(tmp_path)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1"))
    with pytest.raises(UsageError, match="not UTF-8"):
        TranscriptAdapter.load(latin)


# -- the adapter --------------------------------------------------------------------------------------------


def test_capabilities_follow_what_the_log_holds(tmp_path: Path) -> None:
    with_top = write(tmp_path / "a.jsonl", {"prompt": "q", "completion": " Paris. It", "logprobs": COMPLETIONS_LP})
    no_top = write(tmp_path / "b.jsonl", {"prompt": "q", "completion": " Paris. It",
                                          "logprobs": dict(COMPLETIONS_LP, top_logprobs=None)})
    mixed = write(tmp_path / "c.jsonl", {"prompt": "q", "completion": " Paris. It", "logprobs": COMPLETIONS_LP},
                  {"prompt": "r", "completion": "s"})
    plain = write(tmp_path / "d.jsonl", {"prompt": "q", "completion": "a"})
    gen, topk = Capability.GENERATE, Capability.GENERATE_TOPK
    assert TranscriptAdapter.load(with_top).capabilities == {gen, topk}
    assert TranscriptAdapter.load(no_top).capabilities == {gen}
    assert TranscriptAdapter.load(mixed).capabilities == {gen}
    assert TranscriptAdapter.load(plain).capabilities == {gen}


def test_never_scores_and_is_not_live(tmp_path: Path) -> None:
    adapter = TranscriptAdapter.load(write(tmp_path / "t.jsonl", {"prompt": "q", "completion": "a",
                                                                   "logprobs": {"tokens": ["a"], "token_logprobs": [-1]}}))
    assert isinstance(adapter, ModelAdapter)
    assert adapter.live is False
    assert not adapter.capabilities & {Capability.SCORE, Capability.SCORE_TOPK, Capability.HIDDEN_STATES}
    with pytest.raises(CapabilityError, match="cannot score text"):
        adapter.score(["q a"], top_k=5)
    with pytest.raises(CapabilityError):
        adapter.hidden_states(["q a"], [0])
    with pytest.raises(CapabilityError, match="--teacher-tokenizer DIR"):
        adapter.count_tokens(["q"])
    assert adapter.context_length is None


def test_generate_cuts_at_logged_tokens_with_their_logprobs_and_alternatives(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"prompt": "q", "completion": " Paris. It", "logprobs": COMPLETIONS_LP})
    adapter = TranscriptAdapter.load(path)
    (g,) = adapter.generate(["q"], GenerateParams(max_new_tokens=2, top_k=3))
    assert g.text == " Paris."
    assert g.token_ids.dtype == np.int64 and g.token_ids.tolist() == [UNKNOWN_ID, UNKNOWN_ID]  # no tokenizer
    assert g.token_logprobs.dtype == np.float32
    np.testing.assert_allclose(g.token_logprobs, [-0.1, -0.5], rtol=1e-6)
    assert g.topk_ids.shape == (2, 3) and g.topk_logprobs.shape == (2, 3)
    np.testing.assert_allclose(g.topk_logprobs[0], [-0.1, -3.0, -np.inf], rtol=1e-6)  # sorted, padded with -inf
    assert g.topk_ids[0].tolist() == [UNKNOWN_ID] * 3
    (whole,) = adapter.generate(["q"], GenerateParams(max_new_tokens=50, top_k=1))
    assert whole.text == " Paris. It" and whole.topk_logprobs.shape == (3, 1)
    np.testing.assert_allclose(whole.topk_logprobs[:, 0], [-0.1, -0.5, -0.9], rtol=1e-6)
    assert adapter.runtime["cut"] == CUT_LOGGED


def test_generate_rebuilds_text_from_bytes_when_tokens_split_a_character(tmp_path: Path) -> None:
    """OpenAI writes a token that ends inside a character as an escape; its bytes still spell the answer."""
    euro = "\u20ac".encode()  # three bytes, split over two tokens
    content = [{"token": "5", "logprob": -0.1, "bytes": [0x35]},
               {"token": "\\xe2\\x82", "logprob": -0.2, "bytes": list(euro[:2])},
               {"token": "\\xac", "logprob": -0.3, "bytes": list(euro[2:])},
               {"token": " ok", "logprob": -0.4, "bytes": list(b" ok")}]
    path = write(tmp_path / "t.jsonl", {"messages": [{"role": "user", "content": "price?"}],
                                        "response": "5\u20ac ok", "logprobs": {"content": content}})
    adapter = TranscriptAdapter.load(path)
    texts = [adapter.generate(["price?"], GenerateParams(max_new_tokens=m))[0].text for m in (1, 2, 3, 4)]
    assert texts == ["5", "5", "5\u20ac", "5\u20ac ok"]


def test_generate_through_a_real_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    token_map = TokenMap.load(tokenizer_dir, flag="--teacher-tokenizer")
    tok = token_map.tokenizer
    answer = synthetic.Grammar().text(2, seed=5)
    path = write(tmp_path / "t.jsonl", {"prompt": "Go", "completion": answer})
    adapter = TranscriptAdapter.load(path, token_map=token_map)
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) > 6
    (g,) = adapter.generate(["Go"], GenerateParams(max_new_tokens=5))
    assert g.token_ids.tolist() == ids[:5]
    assert g.text == tok.decode(ids[:5])
    assert answer.startswith(g.text) and len(g.text) < len(answer)
    assert np.isnan(g.token_logprobs).all() and g.token_logprobs.shape == (5,)
    assert g.topk_ids.shape == (0, 0) and g.topk_logprobs.shape == (0, 0)
    (whole,) = adapter.generate(["Go"], GenerateParams(max_new_tokens=len(ids) + 3))
    assert whole.text == answer and whole.token_ids.tolist() == ids
    assert adapter.count_tokens([answer]) == [len(ids) + 1]  # with <s>
    assert adapter.runtime["cut"] == CUT_TOKENIZER


def test_logged_token_strings_map_to_real_ids_through_the_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    token_map = TokenMap.load(tokenizer_dir)
    tok = token_map.tokenizer
    prompt, answer = "Kise", " lile dani kilo."
    ids = tok(prompt + answer, add_special_tokens=False)["input_ids"]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    # what a server returns: the text each generated token adds after everything before it
    pieces = [tok.decode(ids[: i + 1])[len(tok.decode(ids[:i])):] for i in range(n_prompt, len(ids))]
    assert "".join(pieces) == answer
    steps = [{p: -0.5, "zzz-not-a-token": -2.0} for p in pieces]
    line = {"prompt": prompt, "completion": answer,
            "logprobs": {"tokens": pieces, "token_logprobs": [-0.5] * len(pieces), "top_logprobs": steps}}
    adapter = TranscriptAdapter.load(write(tmp_path / "t.jsonl", line), token_map=token_map)
    (g,) = adapter.generate([prompt], GenerateParams(max_new_tokens=3, top_k=2))
    assert g.token_ids.tolist() == ids[n_prompt: n_prompt + 3]
    assert g.topk_ids[:, 0].tolist() == ids[n_prompt: n_prompt + 3]
    assert g.topk_ids[:, 1].tolist() == [UNKNOWN_ID] * 3


def test_token_id_strings_are_decoded_with_the_tokenizer(tmp_path: Path, tokenizer_dir: Path) -> None:
    """vLLM's return_tokens_as_token_ids logs "token_id:N": the ids are exact, the text comes from decoding."""
    token_map = TokenMap.load(tokenizer_dir)
    tok = token_map.tokenizer
    answer = "Kise lile dani kilo."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    line = {"prompt": "p", "completion": answer,
            "logprobs": {"tokens": [f"token_id:{i}" for i in ids], "token_logprobs": [-1.0] * len(ids)}}
    path = write(tmp_path / "t.jsonl", line)
    (g,) = TranscriptAdapter.load(path, token_map=token_map).generate(["p"], GenerateParams(max_new_tokens=2))
    assert g.token_ids.tolist() == ids[:2]
    assert g.text == tok.decode(ids[:2]) and answer.startswith(g.text) and g.text != answer
    (bare,) = TranscriptAdapter.load(path).generate(["p"], GenerateParams(max_new_tokens=2))
    assert bare.token_ids.tolist() == ids[:2]  # the ids need no tokenizer
    assert answer.startswith(bare.text) and len(bare.text) < len(answer)  # text cut in proportion


def test_generate_by_the_character_rule_without_tokens_or_tokenizer(tmp_path: Path) -> None:
    answer = "alpha beta gamma delta epsilon zeta"
    adapter = TranscriptAdapter.load(write(tmp_path / "t.jsonl", {"prompt": "p", "completion": answer}))
    (g,) = adapter.generate(["p"], GenerateParams(max_new_tokens=3))  # about 12 characters
    assert g.text == "alpha beta"  # ends before whitespace, not inside "gamma"
    assert g.token_ids.tolist() == [UNKNOWN_ID] * 3 and np.isnan(g.token_logprobs).all()
    assert g.topk_ids.shape == (0, 0)
    (whole,) = adapter.generate(["p"], GenerateParams(max_new_tokens=100))
    assert whole.text == answer and len(whole.token_ids) == math.ceil(len(answer) / 4)
    (word,) = TranscriptAdapter.load(write(tmp_path / "w.jsonl", {"prompt": "p", "completion": "x" * 30})).generate(
        ["p"], GenerateParams(max_new_tokens=2))
    assert word.text == "x" * 8  # one long word: a hard cut
    assert adapter.runtime["cut"] == CUT_CHARS


def test_generate_answers_the_first_logged_entry_whatever_the_seed(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"prompt": "a", "completion": "first"}, {"prompt": "b", "completion": "bee"},
                 {"prompt": "a", "completion": "second"})
    adapter = TranscriptAdapter.load(path)
    assert adapter.logged_prompts == ("a", "b")
    for params in (GenerateParams(), GenerateParams(do_sample=True, seed=7, temperature=0.7)):
        assert [g.text for g in adapter.generate(["b", "a", "a"], params)] == ["bee", "first", "first"]
    runtime = adapter.runtime
    assert runtime["backend"] == "transcript" and runtime["entries"] == 3 and runtime["prompts"] == 2
    assert runtime["has_logprobs"] is False and runtime["model"] == "unknown"


def test_a_prompt_not_in_the_transcript_is_refused(tmp_path: Path) -> None:
    adapter = TranscriptAdapter.load(write(tmp_path / "t.jsonl", {"prompt": "known", "completion": "yes"}))
    with pytest.raises(CapabilityError) as info:
        adapter.generate(["known", "never logged prompt", "another one", "never logged prompt"], GenerateParams())
    message = str(info.value)
    assert "2 prompts are not in" in message
    assert "never logged prompt" in message
    assert "can only answer the prompts it logged" in message


def test_fingerprint_is_the_content_and_the_model(tmp_path: Path, tokenizer_dir: Path) -> None:
    lines = [{"prompt": "p", "completion": "answer one", "model": "gpt-x"},
             {"prompt": "q", "completion": "two", "model": "gpt-x"}]
    a = write(tmp_path / "a.jsonl", *lines)
    fp1 = TranscriptAdapter.load(a).fingerprint
    assert TranscriptAdapter.load(a).fingerprint == fp1
    moved = tmp_path / "sub" / "b.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(a.read_bytes())
    assert TranscriptAdapter.load(moved).fingerprint == fp1  # the path is not part of it
    changed = tmp_path / "c.jsonl"
    changed.write_bytes(a.read_bytes().replace(b"answer one", b"answer onE"))
    assert TranscriptAdapter.load(changed).fingerprint["model"] != fp1["model"]
    assert fp1["format"] == "transcript" and fp1["weights"].startswith("unknown")
    with_tok = TranscriptAdapter.load(a, token_map=TokenMap.load(tokenizer_dir)).fingerprint
    assert with_tok["tokenizer"] == TokenMap.load(tokenizer_dir).fingerprint and with_tok["model"] != fp1["model"]
    assert TranscriptAdapter.load(a).model == "gpt-x"
    assert TranscriptAdapter.load(write(tmp_path / "d.jsonl", lines[0], dict(lines[1], model="gpt-y"))).model == "unknown"


def test_a_prompt_logged_again_is_one_probe_and_the_repeats_are_counted(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "t.jsonl", {"prompt": "a", "completion": "first"}, {"prompt": "a", "completion": "first"},
                 {"prompt": "b", "completion": "bee"}, {"prompt": "a", "completion": "other"})
    with caplog.at_level(logging.WARNING, logger="distill_audit.backends.transcript"):
        adapter = TranscriptAdapter.load(path)
    assert adapter.logged_prompts == ("a", "b") and adapter.repeated_prompts == 2
    assert adapter.runtime["duplicate_prompts"] == 2 and adapter.runtime["entries"] == 4
    assert "2 entries repeat an earlier entry's prompt (1 with a different answer)" in caplog.text
    assert "answered by its first entry" in caplog.text
    (g,) = adapter.generate(["a"], GenerateParams(max_new_tokens=50))
    assert g.text == "first"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="distill_audit.backends.transcript"):
        assert TranscriptAdapter.load(write(tmp_path / "u.jsonl", {"prompt": "a", "completion": "x"})).repeated_prompts == 0
    assert caplog.text == ""


@pytest.mark.parametrize(("line", "problem"), [
    ({"prompt": "p", "completion": "c", "logprobs": {"tokens": ["c"], "token_logprobs": [10**400]}},
     "logprobs.token_logprobs[0] = 1000000000"),
    ({"prompt": "p", "completion": "c", "logprobs": {"tokens": ["c"], "token_logprobs": [0.7]}},
     "logprobs.token_logprobs[0] = 0.7 (expected a log-probability, at most 0)"),
    ({"prompt": "p", "completion": "c", "logprobs": {"tokens": ["token_id:" + "9" * 30], "token_logprobs": [-1]}},
     "logprobs.tokens[0] = 'token_id:99999"),
    ({"prompt": "p", "completion": "c", "logprobs": {"tokens": ["token_id:\u00b2"], "token_logprobs": [-1]}},
     "logprobs.tokens[0] = 'token_id:\u00b2' (expected a token id token_id:N"),
    ({"prompt": "p\ud800", "completion": "c"}, "the prompt is not valid Unicode (a lone surrogate U+D800 at character 1"),
    ({"prompt": "  ", "completion": "c"}, "the prompt is empty"),
    ({"messages": [{"role": "user", "content": ""}], "response": "c"}, "the prompt is empty"),
    ({"prompt\n": "p", "completion\u2028": "c"},
     'needs "prompt" and "completion", or "messages" (keys: completion\\u2028, prompt\\n)'),
])
def test_hostile_values_are_named_on_one_line(tmp_path: Path, line: dict[str, Any], problem: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")  # ensure_ascii: a lone surrogate travels as an escape
    with pytest.raises(UsageError) as info:
        load_transcript(path)
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "t.jsonl: 1 malformed line: line 1: " in message
    assert problem in message, message


def test_runaway_lines_are_malformed_lines_not_crashes(tmp_path: Path) -> None:
    path = write(tmp_path / "t.jsonl", {"prompt": "p", "completion": "c"}, "[" * 50_000, "7" * 5000)
    with pytest.raises(UsageError) as info:
        load_transcript(path)
    message = str(info.value)
    assert "line 2: not valid JSON (nested too deeply)" in message
    assert "line 3: not valid JSON (a number with too many digits)" in message


def test_a_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"prompt": "p", "completion": "c"}\r\n{"prompt": "q", "completion": "d"}\r\n')
    assert [(e.prompt, e.completion, e.line) for e in load_transcript(path)] == [("p", "c", 1), ("q", "d", 2)]
