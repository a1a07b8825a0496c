"""Prompt formats (--prompt-format, --system-prompt): chat models asked through their own chat template, the
answer scored in the context the model reads it in, and the format recorded per model. Real tiny checkpoints
with a chat template saved beside them, the real loopback OpenAI server, real log files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill_audit import synthetic
from distill_audit.backends.base import GenerateParams
from distill_audit.backends.hf import HFAdapter
from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel
from distill_audit.backends.transcript import TranscriptAdapter
from distill_audit.cache import InferenceCache
from distill_audit.detectors import REGISTRY, Available, DetectorContext, ModelHandle
from distill_audit.engine import Engine
from distill_audit.errors import UsageError
from distill_audit.formats import PLAIN, resolve_format
from distill_audit.logs import load_outputs, outputs_hash
from distill_audit.runner import run_audit, sample_fresh
from distill_audit.spec import AuditSpec, TranscriptSource
from tests.conftest import cli, one_line_error

# a ChatML-like template that, like SmolLM2's and Qwen's, writes a default system turn when given none
TEMPLATE = ("{% if messages[0]['role'] != 'system' %}<|system|>You are Tiny.\n{% endif %}"
            "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROBES = ["The cat sat on the", "Once upon a time", "Numbers: 1 2 3", "A B C"]
GREEDY = GenerateParams(max_new_tokens=6, top_k=3)


def tiny(tokenizer_dir: Path, out: Path, arch: str, seed: int, template: str | None = None) -> Path:
    """A tiny untrained model with room for a rendered conversation (256 positions), saved as a user's would be;
    with ``template``, its tokenizer carries that chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    synthetic.new_model(tok, synthetic.TinyConfig(arch=arch, context=256), seed=seed).save_pretrained(out)
    tok.save_pretrained(out)
    if template is not None:
        (out / "chat_template.jinja").write_text(template)
    return out


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny(tokenizer_dir, tmp_path_factory.mktemp("chat"), "llama", 0, TEMPLATE)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny(tokenizer_dir, tmp_path_factory.mktemp("base"), "llama", 1)


@pytest.fixture(scope="module")
def base2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny(tokenizer_dir, tmp_path_factory.mktemp("base2"), "gpt2", 2)


@pytest.fixture(scope="module")
def chat2_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return tiny(tokenizer_dir, tmp_path_factory.mktemp("chat2"), "gpt2", 3, TEMPLATE)


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("probes") / "probes.txt"
    path.write_text("\n".join(PROBES + ["the dog ran to the", "we saw a big", "one two three", "red green"]) + "\n")
    return path


@pytest.fixture(scope="module")
def chat(chat_dir: Path) -> HFAdapter:
    return HFAdapter.load(str(chat_dir))


@pytest.fixture(scope="module")
def base(base_dir: Path) -> HFAdapter:
    return HFAdapter.load(str(base_dir))


def context(engine: Engine, teacher: ModelHandle, *others: ModelHandle) -> DetectorContext:
    student = others[0] if others else teacher
    return DetectorContext(teacher, student, tuple(others[1:]), tuple(PROBES), 0, engine)


def test_auto_asks_a_model_with_a_template_in_chat_and_one_without_in_plain(chat: HFAdapter, base: HFAdapter) -> None:
    fmt = resolve_format(chat, "auto", "default", "--prompt-format", PROBES[0])
    assert (fmt.kind, fmt.where) == ("chat", "template")
    assert fmt.example == "<|system|>You are Tiny.\n<|user|>The cat sat on the\n<|assistant|>"
    assert fmt.render("hi") == "<|system|>You are Tiny.\n<|user|>hi\n<|assistant|>"
    assert resolve_format(base, "auto", "default", "--prompt-format", PROBES[0]).key == "plain"
    plain = resolve_format(chat, "plain", "default", "--student-prompt-format", PROBES[0])
    assert plain.kind == "plain" and plain.render("hi") == "hi" and plain.example == PROBES[0]
    with pytest.raises(UsageError, match="--student-prompt-format chat: .* has no chat template.*plain"):
        resolve_format(base, "chat", "default", "--student-prompt-format", PROBES[0])


@pytest.mark.parametrize("adds_bos", [True, False])
def test_the_model_reads_exactly_its_templates_tokens_whether_or_not_encoding_adds_bos(
        tmp_path: Path, tokenizer_dir: Path, adds_bos: bool) -> None:
    # a template that writes the BOS token itself, as Llama's and SmolLM2's do; SmolLM2's encoding does not add
    # one (its BOS is <|im_start|>), the synthetic tokenizer's does: either way the model must read it once
    path = tiny(tokenizer_dir, tmp_path / "m", "llama", 0, "{{ bos_token }}" + TEMPLATE)
    if not adds_bos:
        spec = json.loads((path / "tokenizer.json").read_text())
        spec["post_processor"] = None
        (path / "tokenizer.json").write_text(json.dumps(spec))
    adapter = HFAdapter.load(str(path))
    tok = adapter.local_tokenizer()
    assert (tok("x", add_special_tokens=True)["input_ids"][0] == tok.bos_token_id) == adds_bos
    turn = [{"role": "user", "content": "The cat sat on the"}]
    rendered = resolve_format(adapter, "chat", "default", "-", "x").render("The cat sat on the")
    expected = tok.apply_chat_template(turn, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert tok(rendered, add_special_tokens=True)["input_ids"] == list(expected)


def test_system_prompt_default_none_and_text_are_rendered_and_hashed_apart(chat: HFAdapter) -> None:
    got = {s: resolve_format(chat, "chat", s, "--prompt-format", "hi") for s in ("default", "none", "Be brief.")}
    assert got["default"].example.startswith("<|system|>You are Tiny.\n<|user|>hi")
    assert got["none"].example.startswith("<|system|>\n<|user|>hi")  # an empty system turn: no default one
    assert got["Be brief."].example.startswith("<|system|>Be brief.\n<|user|>hi")
    assert len({f.template_sha256 for f in got.values()}) == 3 and len({f.key for f in got.values()}) == 3
    # the hash is of the template, not of the probe
    assert resolve_format(chat, "chat", "none", "--prompt-format", "other").key == got["none"].key
    assert got["none"].to_dict()["system_prompt"] == "none"


def test_a_chat_model_answers_the_rendered_user_turn_and_the_cache_keeps_formats_apart(
        tmp_path: Path, chat: HFAdapter) -> None:
    as_chat = ModelHandle("teacher", "teacher", chat, resolve_format(chat, "auto", "default", "-", PROBES[0]))
    as_plain = ModelHandle("teacher", "teacher", chat, PLAIN)
    engine = Engine(InferenceCache(tmp_path / "c.sqlite"))
    got_chat = context(engine, as_chat).generate(as_chat, PROBES, GREEDY)
    got_plain = context(engine, as_plain).generate(as_plain, PROBES, GREEDY)
    direct = chat.generate([as_chat.format.render(p) for p in PROBES], GREEDY)
    assert [g.text for g in got_chat] == [g.text for g in direct]
    assert [g.text for g in got_plain] == [g.text for g in chat.generate(PROBES, GREEDY)]
    assert [g.text for g in got_chat] != [g.text for g in got_plain]
    # a second audit on the same cache: every answer from disk, each format its own
    again = Engine(InferenceCache(tmp_path / "c.sqlite"))
    assert [g.text for g in context(again, as_chat).generate(as_chat, PROBES, GREEDY)] == [g.text for g in got_chat]
    assert [g.text for g in context(again, as_plain).generate(as_plain, PROBES, GREEDY)] == [g.text for g in got_plain]
    assert again.stats.cache_hits == 2 * len(PROBES) and again.stats.computed == 0


def test_an_answer_is_scored_after_the_rendered_turn_in_each_models_own_format(chat: HFAdapter, base: HFAdapter) -> None:
    engine = Engine(InferenceCache(None))
    c = ModelHandle("student", "student", chat, resolve_format(chat, "auto", "default", "-", PROBES[0]))
    b = ModelHandle("reference", "reference-1", base, PLAIN)
    answers = [" a dog", " there was", " 4 5", " D E"]
    for handle, head in ((c, c.format.render), (b, lambda p: p)):
        scored = context(engine, c, handle).score_answers(handle, PROBES, answers)
        for a, prompt, answer in zip(scored, PROBES, answers):
            assert a.text == head(prompt) + answer and a.start == len(head(prompt)) and a.context == head(prompt)
            (direct,) = handle.adapter.score([a.text], engine.score_top_k)
            np.testing.assert_array_equal(a.scored.token_ids, direct.token_ids)
            np.testing.assert_allclose(a.scored.target_logprob, direct.target_logprob, atol=1e-5, equal_nan=True)


def test_token_level_detectors_need_one_format_for_all_models(chat: HFAdapter, chat_dir: Path) -> None:
    same = resolve_format(chat, "chat", "default", "-", "x")
    models = {"teacher": [chat], "student": [chat], "reference": [chat, chat]}
    det = REGISTRY["top-k-overlap"]()
    assert det.same_tokenizer
    assert det.unmet(Available.of_models(models, formats={"teacher": [same], "student": [same],
                                                          "reference": [same, same]})) is None
    reason = det.unmet(Available.of_models(models, formats={"teacher": [same], "student": [PLAIN],
                                                            "reference": [same, same]}))
    assert reason is not None and "prompt format" in reason and "plain text continued" in reason


def test_an_audit_records_each_models_format_and_says_what_was_compared(
        chat_dir: Path, base_dir: Path, base2_dir: Path, probes: Path) -> None:
    spec = AuditSpec(teacher=str(chat_dir), student=str(base_dir), references=(str(base2_dir), str(chat_dir)),
                     probes=str(probes), detectors=("text-word-agreement", "top-k-overlap"), negative_controls=False,
                     system_prompt="Be brief.")
    result = run_audit(spec, progress=False)
    formats = {m["name"]: m["prompt_format"] for m in result["models"]}
    assert formats["teacher"]["format"] == "chat" and formats["teacher"]["rendered"] == "template"
    assert formats["teacher"]["example"].startswith("<|system|>Be brief.\n<|user|>")
    assert formats["teacher"]["example"].endswith("<|assistant|>")
    assert formats["student"] == {"format": "plain", "rendered": "plain", "system_prompt": None,
                                  "template_sha256": None, "example": formats["student"]["example"]}
    assert formats["teacher"]["template_sha256"] == formats["reference-2"]["template_sha256"]
    assert result["settings"]["prompt_format"] == "auto" and result["settings"]["system_prompt"] == "Be brief."
    notes = " ".join(result["verdict"]["warnings"])
    assert "The teacher was asked chat, through its own chat template and student plain text continued" in notes
    assert "reference-1 plain text continued" in notes and "reference-2" not in notes
    skipped = {s["detector"]: s["reason"] for s in result["skipped"]}
    assert "prompt format" in skipped["top-k-overlap"]
    assert [e["detector"] for e in result["evidence"] if e["detector"] == "text-word-agreement"]
    # the report shows what each model was asked, escaped (model-side text: a template is the checkpoint's)
    from distill_audit.reports import render_html
    from distill_audit.result import schema_problem

    assert schema_problem(result) is None
    html = render_html(result)
    assert "What each model was asked" in html
    assert "&lt;|system|&gt;Be brief." in html and "<|system|>" not in html
    # the same audit with every model asked in plain text: no note, and the token-level detector runs
    plain = run_audit(AuditSpec(**{**spec.__dict__, "prompt_format": "plain"}), progress=False)
    assert {m["prompt_format"]["format"] for m in plain["models"]} == {"plain"}
    assert "was asked" not in " ".join(plain["verdict"]["warnings"])
    assert "top-k-overlap" not in {s["detector"] for s in plain["skipped"]}


def test_asking_a_model_without_a_template_in_chat_is_one_line(tmp_path: Path, chat_dir: Path, base_dir: Path,
                                                                probes: Path) -> None:
    proc = cli("run", "--teacher", str(chat_dir), "--student", str(base_dir), "--reference", str(base_dir),
               "--reference", str(chat_dir), "--student-prompt-format", "chat", "--probes", str(probes),
               "--out", str(tmp_path / "out"), "--no-cache")
    one_line_error(proc, 2, "--student-prompt-format chat", "no chat template", "plain")
    assert not (tmp_path / "out").exists()


def test_a_chat_api_is_asked_through_its_chat_route_with_the_system_turn(chat_dir: Path, chat: HFAdapter) -> None:
    from tests.test_backend_http import FAST, serve

    with serve(chat_dir) as s:  # serves completions and chat; the chat route applies the model's template
        config = RemoteModel(s.url, "tiny", tokenizer=str(chat_dir), api="chat", system_prompt="Be brief.")
        remote = OpenAIAdapter.connect(config, "teacher", FAST)
        try:
            fmt = resolve_format(remote, "chat", "Be brief.", "--teacher-prompt-format", PROBES[0])
            assert (remote.fixed_format, fmt.where, fmt.example) == ("chat", "server", PROBES[0])
            assert remote.discovery["system_prompt_sha256"]
            got = remote.generate(PROBES[:2], GREEDY)
            local = chat.generate([chat.chat_prompt([{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": p}]) or "" for p in PROBES[:2]], GREEDY)
            assert [g.text for g in got] == [g.text for g in local]  # the server rendered what we render locally
            sent = [e for e in s.log() if e.get("path") == "/v1/chat/completions"][-1]
            assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
            with pytest.raises(UsageError, match="can only be asked in chat format"):
                resolve_format(remote, "plain", "default", "--teacher-prompt-format", PROBES[0])
        finally:
            remote.close()
        plain = OpenAIAdapter.connect(RemoteModel(s.url, "tiny", tokenizer=str(chat_dir), api="completions"),
                                      "teacher", FAST)
        try:
            assert plain.fixed_format == "plain"
            assert resolve_format(plain, "auto", "default", "--prompt-format", PROBES[0]).key == "plain"
            assert plain.fingerprint["model"] != remote.fingerprint["model"]  # other route: other cache entries
        finally:
            plain.close()


def test_a_chat_api_teacher_against_chat_suspects_compares_answers_without_a_note(
        chat_dir: Path, chat2_dir: Path, probes: Path) -> None:
    from tests.test_backend_http import FAST, serve

    with serve(chat_dir) as s:
        spec = AuditSpec(teacher=RemoteModel(s.url, "tiny", tokenizer=str(chat_dir)), student=str(chat_dir),
                         references=(str(chat2_dir), str(chat2_dir)), probes=str(probes), http=FAST,
                         teacher_prompt_format="chat", detectors=("text-word-agreement",), negative_controls=False)
        result = run_audit(spec, progress=False)
    formats = {m["name"]: m["prompt_format"] for m in result["models"]}
    assert formats["teacher"]["rendered"] == "server" and formats["teacher"]["example"] == PROBES[0]
    assert {formats[n]["rendered"] for n in ("student", "reference-1", "reference-2")} == {"template"}
    assert not [w for w in result["verdict"]["warnings"] if "was asked" in w or "chat API" in w]
    (teacher,) = [m for m in result["models"] if m["role"] == "teacher"]
    assert teacher["runtime"]["generate_api"] == "chat"
    assert "text-word-agreement" in {e["detector"] for e in result["evidence"]}


def test_fresh_answers_from_a_chat_api_to_longer_logged_conversations_are_flagged(
        tmp_path: Path, chat_dir: Path, chat2_dir: Path, probes: Path) -> None:
    from tests.test_backend_http import FAST, serve

    earlier = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    rows = [([*earlier, {"role": "user", "content": p}], " the end") for p in PROBES[:2]]
    rows += [([{"role": "user", "content": p}], " one more") for p in PROBES[2:]]
    logs = chat_log(tmp_path / "logs.jsonl", rows)
    with serve(chat_dir) as s:
        spec = AuditSpec(teacher=RemoteModel(s.url, "tiny", tokenizer=str(chat_dir)), student=str(chat_dir),
                         references=(str(chat2_dir), str(chat2_dir)), probes=str(probes), http=FAST,
                         teacher_prompt_format="chat", teacher_logs=logs, detectors=("logged-vs-fresh",),
                         negative_controls=False)
        result = run_audit(spec, progress=False)
    (note,) = [w for w in result["verdict"]["warnings"] if "logged conversation(s)" in w]
    assert note.startswith("2 logged conversation(s) hold earlier turns")
    assert result["teacher_logs"]["pairs"] == len(PROBES)


def test_plain_format_with_the_chat_route_forced_is_one_line(tmp_path: Path, llama_dir: Path) -> None:
    proc = cli("run", "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m", "--api", "chat",
               "--teacher-prompt-format", "plain", "--student", str(llama_dir), "--reference", str(llama_dir),
               "--reference", str(llama_dir), "--out", str(tmp_path / "out"), "--no-cache")
    one_line_error(proc, 2, "--teacher-prompt-format plain needs the completions route", "--api chat")


def chat_log(path: Path, rows: list[tuple[list[dict[str, str]], str]]) -> Path:
    path.write_text("".join(json.dumps({"messages": m, "response": r}) + "\n" for m, r in rows))
    return path


def test_a_chat_log_keeps_its_conversation_and_fresh_answers_reply_to_it(tmp_path: Path, chat: HFAdapter) -> None:
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "The cat sat on the"}]
    log = chat_log(tmp_path / "log.jsonl", [(conversation, " mat"), ([{"role": "user", "content": "A B C"}], " D")])
    outputs = load_outputs(log, "--teacher-logs")
    assert outputs[0].prompt == "The cat sat on the" and outputs[0].completion == " mat"
    assert outputs[0].messages == conversation and outputs[1].context == (("user", "A B C"),)
    flat = tmp_path / "flat.jsonl"
    flat.write_text("".join(json.dumps({"prompt": o.prompt, "completion": o.completion}) + "\n" for o in outputs))
    assert outputs_hash(outputs) != outputs_hash(load_outputs(flat, "--teacher-logs"))
    teacher = ModelHandle("teacher", "teacher", chat, resolve_format(chat, "auto", "default", "-", "x"))
    fresh = sample_fresh(teacher, outputs, Engine(InferenceCache(None)), seed=0, temperature=0.0)
    asked = chat.chat_prompt(conversation)
    assert asked is not None and "<|assistant|>Hello\n" in asked
    n = len(chat.local_tokenizer()(asked + " mat", add_special_tokens=True)["input_ids"]) - len(
        chat.local_tokenizer()(asked, add_special_tokens=True)["input_ids"])
    (direct,) = chat.generate([asked], GenerateParams(max_new_tokens=max(1, n), top_k=1))
    assert fresh[0].completion == direct.text and fresh[0].context == outputs[0].context


def test_a_chat_transcript_is_asked_as_it_was_logged(tmp_path: Path) -> None:
    log = chat_log(tmp_path / "t.jsonl", [([{"role": "user", "content": "Hi"}], "Hello")])
    adapter = TranscriptAdapter.load(TranscriptSource(log).path, name="teacher")
    fmt = resolve_format(adapter, "auto", "Be brief.", "--teacher-prompt-format", "Hi")
    assert (adapter.fixed_format, fmt.kind, fmt.where, fmt.system) == ("chat", "chat", "logged", "default")
    with pytest.raises(UsageError, match="was logged as chat conversations"):
        resolve_format(adapter, "plain", "default", "--teacher-prompt-format", "Hi")
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"prompt": "Hi", "completion": "Hello"}) + "\n")
    assert TranscriptAdapter.load(flat, name="teacher").fixed_format == "plain"


def test_each_conversation_is_rendered_through_the_template_once(chat: HFAdapter, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """An audit renders every probe many times per model; the template runs once per distinct conversation and
    the kept rendering is the one the template gives."""
    calls: list[int] = []
    original = chat.tokenizer.apply_chat_template

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(chat.tokenizer, "apply_chat_template", counting)
    chat._rendered.clear()
    first = [{"role": "user", "content": "Kise peru dani"}]
    second = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Kise peru dani"}]
    renderings = [chat.chat_prompt(m) for m in (first, second, first, [dict(m) for m in second], first)]
    assert len(calls) == 2
    assert renderings[0] == renderings[2] == renderings[4] != renderings[1] == renderings[3]
    assert renderings[1] == chat._render_chat(second)
