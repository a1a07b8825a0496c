"""Fault injection for every reader of a user file: probe files (.txt, .jsonl), --teacher-logs and --teacher-fresh
(load_outputs, pair_outputs), transcripts (TranscriptAdapter.load) and watermark key files (read_key).

The property, for arbitrary bytes and for structured-but-wrong JSON (wrong types, missing fields, nested junk, huge
numbers, NaN, lone surrogates, byte-order marks, CRLF, U+2028, blank and truncated lines): a file either loads into
a valid value, or the reader raises a UsageError subclass whose message is one line naming the file. Any other
exception fails the test. A few command-line runs check the same at the door: exit 2, one line, no output files.
"""

from __future__ import annotations

import json
import math
import string
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from distill_audit.backends.base import GenerateParams
from distill_audit.backends.transcript import TranscriptAdapter
from distill_audit.errors import UsageError
from distill_audit.logs import LoggedOutput, LogPairs, load_outputs, pair_outputs
from distill_audit.probes import ProbeSet, load_probe_set
from distill_audit.watermark import KEY_FORMAT, MAX_CONTEXT_WIDTH, MAX_VOCAB_SIZE, SECRET_BYTES, WatermarkKey, read_key
from tests.conftest import cli

FUZZ = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ---------------------------------------------------------------------------------------------

SPECIAL = ["\ud800", "\udfff", "\u2028", "\u2029", "\ufeff", "\r", "\n", "\r\n", "\x00", "\x85", "\x0b", "\x1c",
           "\u202e", "\t", " ", "\u00e9", "\U0001f600", '"', "\\", "token_id:", "token_id:\u00b2", "token_id:" + "9" * 25]
plain_chars = st.characters(max_codepoint=0x2FFF, exclude_categories=["Cs"])  # surrogates come from SPECIAL
chars = st.sampled_from(SPECIAL) | plain_chars
texts = st.lists(chars, max_size=12).map("".join)
words = st.lists(st.sampled_from(["Kise", "lile", "dani", "kilo", "ria", "the", "cat", " ", "  "]), min_size=1,
                 max_size=6).map(" ".join)
good_text = words | texts
huge_ints = (st.sampled_from([10**309, -(10**309), 10**400, 2**63, -(2**63) - 1])
             | st.integers(min_value=10**300, max_value=10**320))
numbers = (st.integers() | huge_ints | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, -0.0, 1e-300, -1e308, 2**63, 2**64]))
scalars = st.none() | st.booleans() | numbers | texts
KEYS = ["prompt", "completion", "messages", "response", "logprobs", "tokens", "token_logprobs", "top_logprobs",
        "content", "role", "choices", "message", "text", "model", "bytes", "token", "logprob", "type"]
keys = st.sampled_from(KEYS) | texts
junk = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                    max_leaves=12)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the right shape, sometimes anything at all."""
    return st.one_of(good, good, good, junk)


def obj(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """An object with each field present or not, plus stray keys."""
    optional = st.fixed_dictionaries({}, optional={k: maybe(v) for k, v in fields.items()})
    return st.tuples(optional, st.dictionaries(keys, junk, max_size=2)).map(lambda t: {**t[1], **t[0]})


logprob = maybe(st.floats(max_value=0.0, allow_nan=False) | st.none())
completions_lp = obj({"tokens": st.lists(maybe(good_text), max_size=4),
                      "token_logprobs": st.lists(logprob, max_size=4),
                      "top_logprobs": st.lists(maybe(st.dictionaries(good_text, logprob, max_size=3)) | st.none(),
                                               max_size=4)})
chat_item = obj({"token": good_text, "logprob": logprob, "bytes": st.lists(st.integers(-2, 300), max_size=4),
                 "top_logprobs": st.lists(obj({"token": good_text, "logprob": logprob}), max_size=3)})
chat_lp = obj({"content": st.lists(chat_item, max_size=4) | st.none()})
lp = st.none() | completions_lp | chat_lp | st.lists(chat_item, max_size=3)
content = good_text | st.lists(maybe(obj({"type": st.sampled_from(["text", "image_url"]), "text": good_text})),
                               max_size=3)
message = obj({"role": st.sampled_from(["user", "assistant", "system", "tool"]), "content": content})
response = good_text | message | obj({"model": good_text, "choices": st.lists(
    obj({"message": message, "text": good_text, "logprobs": lp}), max_size=2)})
dirty_transcript = (obj({"prompt": good_text, "completion": good_text, "logprobs": lp, "model": good_text})
                    | obj({"prompt": good_text, "response": response, "logprobs": lp})
                    | obj({"messages": st.lists(message, max_size=4), "response": response, "logprobs": lp,
                           "model": good_text}))

# well-formed lines with awkward but legal content: most files of these load, so the loaded values get checked too
safe_chars = st.sampled_from([c for c in SPECIAL if not 0xD800 <= ord(c[0]) <= 0xDFFF]) | plain_chars
safe_text = st.lists(safe_chars, max_size=8).map("".join)
clean_prompt = st.sampled_from(["alpha", "beta", "gamma delta"]) | st.tuples(words, safe_text).map(
    lambda t: "x" + t[0] + t[1])
clean_answer = st.sampled_from(["", " one", " two three"]) | safe_text | words
# what the one OpenAI schema accepts: finite log-probs at most 0 (null, NaN and infinities are refused, as live)
clean_lp_value = st.floats(max_value=0.0, allow_infinity=False)


@st.composite
def clean_completions_lp(draw: st.DrawFn, answer: str) -> dict[str, Any]:
    """Completions-shaped log-probs: tokens that spell the answer, or token-id strings, or anything."""
    cut = sorted(draw(st.lists(st.integers(0, len(answer)), max_size=3)))
    kind = draw(st.sampled_from(["spell", "ids", "other"]))
    if kind == "spell":
        tokens = [answer[a:b] for a, b in zip([0, *cut], [*cut, len(answer)])]
    elif kind == "ids":
        tokens = [f"token_id:{i}" for i in draw(st.lists(st.integers(0, 2**63 - 1), max_size=4))]
    else:
        tokens = draw(st.lists(safe_text, max_size=4))
    values = [draw(clean_lp_value) for _ in tokens]
    top = [draw(st.dictionaries(safe_text, clean_lp_value, max_size=3)) for _ in tokens]
    return {"tokens": tokens, "token_logprobs": values, **({"top_logprobs": top} if draw(st.booleans()) else {})}


@st.composite
def clean_transcript(draw: st.DrawFn) -> dict[str, Any]:
    prompt, answer = draw(clean_prompt), draw(clean_answer)
    shape = draw(st.sampled_from(["plain", "plain+lp", "chat", "chat-message", "fine-tuning"]))
    if shape == "plain":
        return {"prompt": prompt, "completion": answer, "model": draw(st.sampled_from(["m", "m2"]))}
    if shape == "plain+lp":
        return {"prompt": prompt, "completion": answer, "logprobs": draw(clean_completions_lp(answer))}
    user = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]
    if shape == "chat":
        return {"messages": user, "response": answer}
    if shape == "chat-message":
        return {"messages": user, "response": {"role": "assistant", "content": answer}}
    return {"messages": [*user, {"role": "assistant", "content": answer}]}


clean_log = st.fixed_dictionaries({"prompt": clean_prompt, "completion": clean_answer}, optional={"id": st.integers()})
dirty_log = obj({"prompt": good_text, "completion": good_text, "id": st.integers()})
clean_probe = st.fixed_dictionaries({"prompt": clean_prompt}, optional={"id": st.integers()})
dirty_probe = obj({"prompt": good_text, "id": st.integers()})

RAW_LINES = ["1" * 5000, "[" * 5000, "{" * 3000 + "}" * 3000, "{", '{"prompt": ', "\ufeff{}", "NaN", "-Infinity",
             '{"prompt": "a", "prompt": 1}', '"\\ud800"', "\x00", "\u2028", "\r"]


@st.composite
def jsonl_files(draw: st.DrawFn, clean: st.SearchStrategy[Any], dirty: st.SearchStrategy[Any]) -> bytes:
    """JSONL bytes: either a clean file (well-formed lines, blank lines, a BOM, CRLF) or a faulty one (wrong lines,
    truncated lines, raw junk lines such as huge numbers and deep nesting, lone surrogates written raw or escaped)."""
    faulty = draw(st.booleans())
    lines = st.one_of(clean, clean, dirty) if faulty else clean
    rendered = []
    for value in draw(st.lists(lines, min_size=0 if faulty else 1, max_size=5)):
        line = json.dumps(value, ensure_ascii=draw(st.booleans()))
        if faulty and draw(st.integers(0, 9)) == 0:  # truncated
            line = line[: draw(st.integers(0, len(line)))]
        rendered.append(line)
    extra = st.sampled_from(["", "   ", "\t", *RAW_LINES]) if faulty else st.sampled_from(["", "   ", "\t"])
    for _ in range(draw(st.integers(0, 2))):
        rendered.insert(draw(st.integers(0, len(rendered))), draw(extra))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    text = eol.join(rendered) + draw(st.sampled_from(["", eol]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return (bom + text).encode("utf-8", "surrogatepass")


any_bytes = st.binary(max_size=300) | st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe{\x00}\x00", b"\xc3(", b"\x00\n"])
text_file = st.lists(texts | words, max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass"))


def _valid_key() -> dict[str, Any]:
    return {"format": KEY_FORMAT, "version": 1, "scheme": "s", "secret": "ab" * SECRET_BYTES, "gamma": 0.25,
            "delta": 2.0, "context_width": 1, "vocab_size": 1000, "tokenizer_sha256": "0" * 64}


key_values = {"version": st.integers(-2, 3) | huge_ints, "secret": st.text("0123456789abcdefABCDEFg", max_size=70),
              "gamma": numbers | huge_ints, "delta": numbers | huge_ints, "context_width": st.integers(-1, 20) | huge_ints,
              "vocab_size": st.integers(-1, 2**30) | huge_ints, "tokenizer_sha256": st.text("0123456789abcdefA",
                                                                                             max_size=70)}


@st.composite
def key_files(draw: st.DrawFn) -> bytes:
    data = _valid_key()
    for name in draw(st.lists(st.sampled_from(sorted(key_values)), max_size=3, unique=True)):
        action = draw(st.sampled_from(["drop", "junk", "value", "value"]))
        if action == "drop":
            del data[name]
        else:
            data[name] = draw(junk if action == "junk" else key_values[name])
    doc = data if draw(st.integers(0, 9)) else draw(junk)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text.encode("utf-8", "surrogatepass")


# -- the property ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _one_line_naming(exc: UsageError, path: Path) -> None:
    message = str(exc)
    assert message and "\n" not in message and len(message.splitlines()) == 1, message
    assert path.name in message, message


def attempt(read: Callable[[Path], Any], path: Path, data: bytes) -> Any:
    """Write ``data`` to ``path`` and read it: the value, or None after checking the error is one line naming
    the file. Any exception other than a UsageError propagates and fails the test."""
    path.write_bytes(data)
    path.chmod(0o600)  # a key file others can read is only warned about
    try:
        value = read(path)
    except UsageError as exc:
        _one_line_naming(exc, path)
        event("refused")
        return None
    event("loaded")
    return value


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_probe_set(ps: ProbeSet | None) -> None:
    if ps is None:
        return
    assert ps.prompts and len(set(ps.prompts)) == len(ps.prompts) == ps.n_total
    assert all(isinstance(p, str) and p.strip() and _is_text(p) for p in ps.prompts)
    assert ps.n_duplicates >= 0 and len(ps.hash) == 64
    json.dumps(ps.to_dict())
    sub = ps.subsample(1, seed=0)
    assert len(sub.prompts) == 1 and sub.n_duplicates == ps.n_duplicates


def check_outputs(outputs: tuple[LoggedOutput, ...] | None) -> None:
    if outputs is None:
        return
    assert outputs and all(_is_text(o.prompt) and _is_text(o.completion) and o.line >= 1 for o in outputs)
    check_pairs(pair_outputs(outputs, outputs, "same file"), len(outputs))


def check_pairs(pairs: LogPairs, given: int) -> None:
    assert len(pairs.logged) == len(pairs.fresh) >= 1
    assert all(a.prompt == b.prompt for a, b in zip(pairs.logged, pairs.fresh))
    assert len(set((o.prompt, o.completion) for o in pairs.logged)) == len(pairs.logged)  # one unit each
    assert len(pairs.logged) + pairs.unpaired_logged + pairs.logged_duplicates_dropped == given
    json.dumps(pairs.to_dict())


def check_transcript(adapter: TranscriptAdapter | None) -> None:
    if adapter is None:
        return
    prompts = adapter.logged_prompts
    assert prompts and len(set(prompts)) == len(prompts) == len(adapter.entries) - adapter.repeated_prompts
    assert all(p.strip() and _is_text(p) for p in prompts)
    json.dumps(adapter.runtime)
    assert len(adapter.fingerprint["model"]) > 0 and adapter.capabilities
    for budget in (0, 2, 64):
        for g in adapter.generate(prompts, GenerateParams(max_new_tokens=budget, top_k=2)):
            assert isinstance(g.text, str) and _is_text(g.text)
            assert len(g.token_ids) == len(g.token_logprobs) <= budget
            assert g.topk_ids.shape == g.topk_logprobs.shape
            assert not (g.token_logprobs > 1e-3).any()


def check_key(key: WatermarkKey | None) -> None:
    if key is None:
        return
    assert len(key.secret) == SECRET_BYTES and 0 < key.gamma < 1 and math.isfinite(key.delta) and key.delta > 0
    assert 1 <= key.context_width <= MAX_CONTEXT_WIDTH and 2 <= key.vocab_size <= MAX_VOCAB_SIZE
    assert len(key.tokenizer_sha256) == 64 and set(key.tokenizer_sha256) <= set(string.hexdigits.lower())


def _probes(path: Path) -> ProbeSet:
    return load_probe_set(str(path))


def _logs(path: Path) -> tuple[LoggedOutput, ...]:
    return load_outputs(path, "--teacher-logs")


# -- probe files ----------------------------------------------------------------------------------------------


@FUZZ
@given(data=any_bytes | text_file)
def test_probes_txt_from_any_bytes(workdir: Path, data: bytes) -> None:
    check_probe_set(attempt(_probes, workdir / "fuzz-probes.txt", data))


@FUZZ
@given(data=any_bytes | jsonl_files(clean_probe, dirty_probe))
def test_probes_jsonl_from_any_bytes_and_wrong_json(workdir: Path, data: bytes) -> None:
    check_probe_set(attempt(_probes, workdir / "fuzz-probes.jsonl", data))


# -- logged and fresh teacher outputs -------------------------------------------------------------------------


@FUZZ
@given(data=any_bytes | jsonl_files(clean_log, dirty_log))
def test_teacher_logs_from_any_bytes_and_wrong_json(workdir: Path, data: bytes) -> None:
    check_outputs(attempt(_logs, workdir / "fuzz-logs.jsonl", data))


@FUZZ
@given(logged=jsonl_files(clean_log, dirty_log), fresh=jsonl_files(clean_log, dirty_log))
def test_logs_paired_with_a_fresh_file(workdir: Path, logged: bytes, fresh: bytes) -> None:
    items = attempt(_logs, workdir / "fuzz-logged.jsonl", logged)
    fresh_path = workdir / "fuzz-fresh.jsonl"
    others = attempt(lambda p: load_outputs(p, "--teacher-fresh"), fresh_path, fresh)
    if items is None or others is None:
        return
    try:
        pairs = pair_outputs(items, others, str(fresh_path))
    except UsageError as exc:
        _one_line_naming(exc, fresh_path)
        return
    check_pairs(pairs, len(items))


# -- transcripts -----------------------------------------------------------------------------------------------


@FUZZ
@given(data=any_bytes | jsonl_files(clean_transcript(), dirty_transcript))
def test_transcripts_from_any_bytes_and_wrong_json(workdir: Path, data: bytes) -> None:
    check_transcript(attempt(TranscriptAdapter.load, workdir / "fuzz-transcript.jsonl", data))


# -- watermark key files ---------------------------------------------------------------------------------------


@FUZZ
@given(data=any_bytes | key_files())
def test_key_files_from_any_bytes_and_wrong_fields(workdir: Path, data: bytes) -> None:
    check_key(attempt(read_key, workdir / "fuzz-key.json", data))


# -- the same faults, named ------------------------------------------------------------------------------------

READERS: dict[str, tuple[str, Callable[[Path], Any]]] = {
    "probes-txt": ("p.txt", _probes),
    "probes-jsonl": ("p.jsonl", _probes),
    "logs": ("l.jsonl", _logs),
    "transcript": ("t.jsonl", TranscriptAdapter.load),
    "key": ("k.json", read_key),
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("fault", ["missing", "directory", "parent is a file", "name too long", "not UTF-8",
                                   "UTF-16", "empty", "deep nesting", "long number"])
def test_file_faults_are_one_line_naming_the_file(tmp_path: Path, reader: str, fault: str) -> None:
    name, read = READERS[reader]
    path = tmp_path / name
    if fault == "directory":
        path.mkdir()
    elif fault == "parent is a file":
        (tmp_path / "plain").write_text("x")
        path = tmp_path / "plain" / name
    elif fault == "name too long":
        path = tmp_path / ("x" * 300 + name)
    else:
        content = {"missing": None, "not UTF-8": b'{"prompt": "caf\xe9"}\n', "empty": b"",
                   "UTF-16": '{"prompt": "a"}\n'.encode("utf-16"), "deep nesting": b"[" * 100_000 + b"\n",
                   "long number": b'{"prompt": ' + b"7" * 5000 + b"}\n"}[fault]
        if content is not None:
            path.write_bytes(content)
    if reader == "probes-txt" and fault in ("deep nesting", "long number"):
        assert len(read(path).prompts) == 1  # JSON faults are plain text in a .txt file
        return
    with pytest.raises(UsageError) as info:
        read(path)
    _one_line_naming(info.value, path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_byte_order_mark_and_crlf_are_accepted_everywhere(tmp_path: Path, reader: str) -> None:
    name, read = READERS[reader]
    if reader == "key":
        body = json.dumps(_valid_key())
    elif reader == "probes-txt":
        body = "first prompt\r\nsecond prompt\r\n"
    else:
        body = "\r\n".join(json.dumps({"prompt": f"prompt {i}", "completion": f" answer {i}"}) for i in range(2)) + "\r\n"
    path = tmp_path / name
    path.write_bytes(("\ufeff" + body).encode("utf-8"))
    value = read(path)
    assert value is not None
    if reader.startswith("probes"):
        assert value.prompts == (("first prompt", "second prompt") if reader == "probes-txt" else ("prompt 0", "prompt 1"))


# -- at the command line ------------------------------------------------------------------------------------------


def _run_args(out: Path, probes: str, *extra: str) -> list[str]:
    """An audit whose models do not exist: every file is checked before any model would load."""
    missing = str(out.parent / "no-such-model")
    return ["run", "--teacher", missing, "--student", missing, "--reference", missing, "--reference", missing,
            "--probes", probes, "--out", str(out), "--no-cache", *extra]


def _assert_refused(out: Path, args: list[str], *needles: str) -> None:
    proc = cli(*args)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("distill-audit: error: "), proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    assert not out.exists() or not any(out.rglob("*"))


def test_cli_refuses_a_probes_file_with_a_lone_surrogate(tmp_path: Path) -> None:
    probes = tmp_path / "probes.jsonl"
    probes.write_text('{"prompt": "fine"}\n{"prompt": "broken \\ud800 text"}\n', encoding="utf-8")
    _assert_refused(tmp_path / "out", _run_args(tmp_path / "out", str(probes)), "probes.jsonl", "line 2",
                    "not valid Unicode")


def test_cli_refuses_a_deeply_nested_probes_line(tmp_path: Path) -> None:
    probes = tmp_path / "probes.jsonl"
    probes.write_text("[" * 100_000 + "\n", encoding="utf-8")
    _assert_refused(tmp_path / "out", _run_args(tmp_path / "out", str(probes)), "probes.jsonl", "nested too deeply")


def test_cli_refuses_teacher_logs_with_a_key_holding_a_newline(tmp_path: Path) -> None:
    probes = tmp_path / "probes.txt"
    probes.write_text("one prompt here\n", encoding="utf-8")
    logs = tmp_path / "logs.jsonl"
    logs.write_text(json.dumps({"prompt": "p", "answer\nforged line": "c"}) + "\n", encoding="utf-8")
    _assert_refused(tmp_path / "out", _run_args(tmp_path / "out", str(probes), "--teacher-logs", str(logs)),
                    "logs.jsonl:1", "answer\\nforged line")


# -- cache values ---------------------------------------------------------------------------------------------

_PLAIN = st.sampled_from(["<f4", "<f8", "<i8", "<i4", "|b1", "<U7", "|S5", "<u2"])


@FUZZ
@given(specs=st.lists(st.tuples(st.text(max_size=8), _PLAIN, st.lists(st.integers(0, 4), max_size=3)), max_size=4,
                      unique_by=lambda s: s[0]),
       seed=st.integers(0, 2**32 - 1))
def test_cache_values_read_back_exactly(specs: list[tuple[str, str, list[int]]], seed: int) -> None:
    from distill_audit.cache import pack_arrays, unpack_arrays

    rng = np.random.default_rng(seed)
    arrays = {}
    for name, dtype, shape in specs:
        raw = rng.integers(0, 100, size=shape)
        arrays[name] = raw.astype(str).astype(dtype) if dtype[1] in "US" else raw.astype(dtype)
    back = unpack_arrays(pack_arrays(arrays))
    assert list(back) == list(arrays)
    for name, arr in arrays.items():
        assert back[name].dtype == arr.dtype and back[name].shape == arr.shape
        np.testing.assert_array_equal(back[name], arr)
        back[name].flags.writeable = True  # a private copy, not a view of the stored bytes


@FUZZ
@given(data=st.binary(max_size=200) | st.builds(lambda h, tail: b"DAC4" + struct.pack("<I", len(h)) + h + tail,
                                                 st.text(max_size=80).map(str.encode), st.binary(max_size=40)))
def test_a_forged_cache_value_is_a_value_error_never_a_crash(data: bytes) -> None:
    from distill_audit.cache import unpack_arrays

    try:
        unpack_arrays(data)
    except ValueError:
        pass


@pytest.mark.parametrize("header", [
    '[["a","|O8",[1]]]',  # object arrays would unpickle
    '[["a","<f8",[1000000000000000000,1000]]]',  # more bytes than any value holds
    '[["a","<f8",[-1]]]',
    '[["a","<f8",[true]]]',
    '[["a","V8",[1]]]',
    '{"a": 1}',
])
def test_cache_value_headers_that_could_harm_are_refused(header: str) -> None:
    from distill_audit.cache import unpack_arrays

    h = header.encode()
    with pytest.raises(ValueError, match="unreadable cache value"):
        unpack_arrays(b"DAC4" + struct.pack("<I", len(h)) + h + b"\0" * 8)
