"""Every setting of `distill-audit run`, declared once as data (scikit-learn's parameter constraints, as a table).

One :class:`Option` per setting carries its flag, audit-file key, type, default, choices or range, help text and
whether the result records it. From this table come the click options (``cli``), the audit-file format and its
checks (``auditfile``), the spec (``specbuild``), the per-field checks of an :class:`~distill_audit.spec.AuditSpec`
however it was built (:func:`validate_spec`, also for specs built in code) and the recorded settings
(:func:`recorded_settings`).

The module imports neither torch nor the spec at import time: ``--help`` builds its options from this table and
must stay quick. The choices and defaults written here are checked against the modules that own them
(``aggregate.COMBINATIONS``, ``LoadOptions``, ``HTTPSettings``, ...) by a test, not imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from distill_audit.errors import UsageError

SECTIONS = ("models", "audit", "api", "load", "output")  # the tables of an audit file, in the order they are shown


@dataclass(frozen=True)
class Interval:
    """A numeric range; open ends exclude the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, x: float) -> bool:
        if math.isnan(x):
            return False
        if self.low is not None and (x < self.low or (self.low_open and x == self.low)):
            return False
        return not (self.high is not None and (x > self.high or (self.high_open and x == self.high)))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        if self.low is not None:
            return f"more than {self.low:g}" if self.low_open else f"{self.low:g} or more"
        return f"less than {self.high:g}" if self.high_open else f"{self.high:g} or less"


@dataclass(frozen=True)
class Option:
    """One setting. Its name (the command's keyword and the audit-file key) follows from the flag: underscores for
    dashes, repeatable flags in the plural, a ``--no-X`` switch as ``X`` (true by default)."""

    flag: str
    section: str  # the audit file's table
    type: type  # str, int, float, bool or Path
    help: str
    default: Any = None
    choices: tuple[str, ...] = ()
    interval: Interval | None = None
    multiple: bool = False
    metavar: str | None = None
    show_default: bool = False
    field: str | None = None  # the AuditSpec attribute it sets ("load.dtype"); None: read while building the spec
    recorded: bool = False  # in the result's settings (under the field's last name), because it decides the numbers
    # how a relative value in an audit file is read: "path" against the file's folder; "model" the same when it
    # exists there (else a hub id stays as written); "" as written
    relative: str = ""
    check: Callable[[Any, str], None] | None = None  # a rule beyond type, choices and range (raises UsageError)

    @property
    def name(self) -> str:
        base = self.flag[2:].replace("-", "_")
        if self.type is bool and self.default is True:
            base = base.removeprefix("no_")
        return base + ("s" if self.multiple else "")

    @property
    def key(self) -> str:
        return f"[{self.section}] {self.name}"


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, where: str = "--api-cache-ttl") -> float | None:
    """Seconds from '90', '30m', '12h', '7d'; None for 'forever' (no limit)."""
    text = value.strip().lower()
    if text in ("forever", "inf", "none"):
        return None
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise UsageError(f"{where} {value!r}: give a duration such as 3600, 30m, 12h, 7d, or 'forever'") from None
    if not seconds >= 0:
        raise UsageError(f"{where} {value!r}: must be 0 or more")
    return seconds


def _check_duration(value: Any, where: str) -> None:
    parse_duration(str(value), where)


def _check_directory(value: Any, where: str) -> None:
    if Path(value).exists() and not Path(value).is_dir():
        raise UsageError(f"{where} {value}: exists and is not a directory")


def _api_group(flag: str, what: str) -> list[Option]:
    """``{flag}-url``, ``{flag}-model`` (both repeatable, paired in order) and ``{flag}-api-key-env``."""
    return [
        Option(f"{flag}-url", "models", str, multiple=True, metavar="URL",
               help=f"{what} behind an OpenAI-compatible API (repeatable; pairs in order with {flag}-model)."),
        Option(f"{flag}-model", "models", str, multiple=True, metavar="NAME",
               help=f"Model name for each {flag}-url, in the same order."),
        Option(f"{flag}-api-key-env", "models", str, metavar="VAR",
               help=f"Environment variable with the key of the {flag}-url servers."),
    ]


# The order is the order of `run --help`.
OPTIONS: tuple[Option, ...] = (
    # -- models: who is audited, against whom
    Option("--teacher", "models", str, metavar="PATH|ID|GGUF", relative="model",
           help="Teacher model: checkpoint directory, cached hub id, or .gguf file (or see --teacher-url, "
                "--teacher-transcript)."),
    Option("--student", "models", str, metavar="PATH|ID|GGUF", relative="model",
           help="The suspect student model (or --student-url)."),
    Option("--reference", "models", str, multiple=True, metavar="PATH|ID|GGUF", relative="model",
           help="An independent reference model of a similar class; repeat for each (at least 2; 6+ give the panel "
                "test power). Include a model trained on the teacher's data if you have one."),
    Option("--alternative-teacher", "models", str, multiple=True, metavar="PATH|ID|GGUF", relative="model",
           help="Another model that could have been the teacher (repeatable): a sibling run, the same family's other "
                "sizes, another vendor's model. The verdict then asks whether the student leans to the teacher over "
                "each one, and the report names the candidate the evidence points to."),
    Option("--alternative-teacher-transcript", "models", Path, multiple=True, metavar="JSONL", relative="path",
           help="An alternative teacher known only from a transcript of its answers (repeatable; like "
                "--teacher-transcript, and its prompts must cover the probes)."),
    # -- what is asked, and how the verdict is reached
    Option("--probes", "audit", str, metavar="NAME|FILE", relative="model",
           help="A built-in probe set's name, or a .txt/.jsonl file [default: 'default', or the transcript's "
                "prompts with --teacher-transcript]."),
    Option("--n-probes", "audit", int, interval=Interval(low=1), field="n_probes", recorded=True,
           help="Use a seeded random subset of this many probes."),
    Option("--seed", "audit", int, default=0, show_default=True, field="seed", recorded=True,
           help="Seed for sub-sampling, sampling and bootstraps."),
    Option("--alpha", "audit", float, default=0.01, show_default=True, field="alpha", recorded=True,
           interval=Interval(0.0, 1.0, low_open=True, high_open=True), help="Significance level of the verdict."),
    Option("--detector", "audit", str, multiple=True, metavar="NAME", field="detectors", recorded=True,
           help="Run only these detectors (repeatable); see `distill-audit detectors`."),
    Option("--out", "output", Path, relative="path",
           help="Output directory; result.json is written there (required, here or in the audit file)."),
    Option("--teacher-logs", "audit", Path, metavar="JSONL", field="teacher_logs", relative="path",
           help="Logged teacher outputs that may have reached the student, one {\"prompt\", \"completion\"} object "
                "per line; enables the paired logged-vs-fresh membership test."),
    Option("--teacher-fresh", "audit", Path, metavar="JSONL", field="teacher_fresh", relative="path",
           help="Fresh teacher outputs for the same prompts, drawn the way the logged ones were [default: sampled "
                "from the teacher here, seeded, at the logged lengths]."),
    Option("--fresh-temperature", "audit", float, default=1.0, show_default=True, interval=Interval(low=0.0),
           field="fresh_temperature", recorded=True,
           help="Sampling temperature for fresh outputs made here; match the one the logs were made with."),
    Option("--membership-score", "audit", str, default="loss", show_default=True, choices=("loss", "min-k++", "zlib"),
           field="membership_score", recorded=True,
           help="Test statistic of logged-vs-fresh (the others are reported, not tested)."),
    Option("--teacher-name", "audit", str, multiple=True, metavar="NAME", field="teacher_names", recorded=True,
           help="A name of the teacher or its maker (repeatable); identity probes record student answers naming it."),
    Option("--teacher-access", "audit", str, default="white", show_default=True, choices=("white", "gray", "black"),
           field="teacher_access", recorded=True,
           help="Audit the teacher as if only this access existed: gray = top-k log-probs of its generated tokens, "
                "black = generated text only. Detectors needing more are skipped with the reason."),
    Option("--prompt-format", "audit", str, default="auto", show_default=True, choices=("auto", "chat", "plain"),
           field="prompt_format", recorded=True,
           help="How models are asked: chat = each probe as one user turn through the model's own chat template (an "
                "API: its chat route), plain = the probe text continued; auto = chat for a model with a chat template "
                "or behind a chat-only API, plain otherwise."),
    Option("--teacher-prompt-format", "audit", str, choices=("auto", "chat", "plain"), field="teacher_prompt_format",
           recorded=True, help="The teacher's (and alternative teachers') format, overriding --prompt-format."),
    Option("--student-prompt-format", "audit", str, choices=("auto", "chat", "plain"), field="student_prompt_format",
           recorded=True, help="The student's format, overriding --prompt-format (e.g. plain for a base-model student)."),
    Option("--reference-prompt-format", "audit", str, choices=("auto", "chat", "plain"),
           field="reference_prompt_format", recorded=True,
           help="The references' format, overriding --prompt-format."),
    Option("--system-prompt", "audit", str, default="default", show_default=True, metavar="TEXT|none|default",
           field="system_prompt", recorded=True,
           help="The system turn before each chat probe: default = the template's own (what a user who sends none "
                "gets), none = an empty system turn (stops templates that add a default one), else its text."),
    Option("--combine", "audit", str, default="bonferroni", show_default=True, choices=("bonferroni", "cauchy"),
           field="combination", recorded=True,
           help="How detector p-values combine: Bonferroni (valid under any dependence) or the Cauchy combination "
                "(less conservative; valid under dependence for small alpha)."),
    Option("--no-negative-controls", "audit", bool, default=True, field="negative_controls", recorded=True,
           help="Skip the negative controls (each reference audited in the student's seat)."),
    Option("--watermark-key", "audit", Path, metavar="FILE", field="watermark_key", relative="path",
           help="The teacher's private watermark key (`distill-audit watermark keygen`): enables "
                "watermark-radioactivity. Results record its fingerprint, never the secret."),
    Option("--watermark-texts", "audit", Path, metavar="JSONL", field="watermark_texts", relative="path",
           help="Watermarked teacher texts (`watermark generate` output): the student reads them (reading mode) when "
                "it scores text and shares the key's tokenizer."),
    Option("--fail-on", "output", str, choices=("distilled", "inconclusive"),
           help="CI gating: exit 1 (after writing the result) when the verdict is distilled, or with 'inconclusive' "
                "when it is anything but not-distilled."),
    Option("--plan", "output", bool, default=False,
           help="Print the work the audit would do and exit, loading no model and writing nothing: the models, the "
                "probes, the detectors that will run (and why others will not) and the requests each asks of each "
                "model."),
    # -- models behind an API, and transcripts
    Option("--teacher-url", "models", str, metavar="URL",
           help="Teacher behind an OpenAI-compatible API (vLLM, TGI, llama.cpp server, ...), e.g. "
                "http://127.0.0.1:8000/v1; needs --teacher-model."),
    Option("--teacher-model", "models", str, metavar="NAME", help="The teacher's model name at --teacher-url."),
    Option("--teacher-api-key-env", "models", str, metavar="VAR",
           help="Environment variable holding the teacher API's key (the key is never written anywhere)."),
    Option("--teacher-tokenizer", "models", str, metavar="DIR", relative="path",
           help="A local copy of the remote or transcript teacher's tokenizer: lets token-level detectors compare "
                "ids (checked against the server) and counts its tokens."),
    Option("--teacher-transcript", "models", Path, metavar="JSONL", relative="path",
           help="A closed teacher known only from its logged answers: OpenAI chat logs (messages + response, "
                "optional logprobs) or {\"prompt\", \"completion\"} lines. Its prompts become the probes."),
    Option("--student-url", "models", str, metavar="URL", help="Student behind an OpenAI-compatible API."),
    Option("--student-model", "models", str, metavar="NAME", help="The student's model name at --student-url."),
    Option("--student-api-key-env", "models", str, metavar="VAR", help="Environment variable with its key."),
    Option("--student-tokenizer", "models", str, metavar="DIR", relative="path",
           help="A local copy of the remote student's tokenizer."),
    *_api_group("--reference", "A reference"),
    *_api_group("--alternative-teacher", "An alternative teacher"),
    Option("--api", "api", str, default="auto", show_default=True, choices=("auto", "completions", "chat"),
           help="Which generation route of the APIs to use; auto: completions, else chat."),
    Option("--api-concurrency", "api", int, default=4, show_default=True, interval=Interval(low=1),
           field="http.concurrency", help="Requests in flight per API model."),
    Option("--api-timeout", "api", float, default=120.0, show_default=True, interval=Interval(low=0.1),
           field="http.timeout", help="Seconds for one API request before it is retried."),
    Option("--api-cache-ttl", "api", str, default="7d", show_default=True, metavar="DURATION", check=_check_duration,
           help="How long a cached answer from a model behind an API is trusted before it is asked again (e.g. 3600, "
                "30m, 12h, 7d, or 'forever'). Local models never go stale: their cache key is their content."),
    Option("--refresh", "api", bool, default=False,
           help="Ask every model behind an API again instead of using cached answers (--api-cache-ttl 0)."),
    Option("--api-retries", "api", int, default=6, show_default=True, interval=Interval(low=0),
           field="http.max_retries",
           help="Retries of a request after 429, 5xx, timeouts or cut-short answers (exponential backoff with "
                "jitter; Retry-After is honoured)."),
    # -- where and how local models run
    Option("--device", "load", str, default="auto", show_default=True, field="load.device", recorded=True,
           help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
    Option("--dtype", "load", str, default="auto", show_default=True, choices=("auto", "float32", "bfloat16", "float16"),
           field="load.dtype", recorded=True, help="auto: bfloat16 on a GPU, float32 on a CPU."),
    Option("--device-map", "load", str, choices=("auto",), field="load.device_map", recorded=True,
           help="Spread a model too large for one device over all devices (accelerate)."),
    Option("--allow-pickle", "load", bool, default=False, field="load.allow_pickle", recorded=True,
           help="Load pickle (.bin) checkpoints. They can run code when loaded: trusted sources only."),
    Option("--trust-remote-code", "load", bool, default=False, field="load.trust_remote_code", recorded=True,
           help="Run model code shipped with a checkpoint. Off by default; trusted sources only."),
    Option("--batch-tokens", "load", int, interval=Interval(low=1), field="token_budget", recorded=True,
           help="Token budget of one batch (rows x longest row) [default: 1024 on a CPU in float32, where cache-sized "
                "batches run fastest, 4096 in bfloat16/float16, and 8192 for generation, where a step reads the "
                "weights for one token a row; 16384 on a GPU]. Given, it caps both. Halved automatically on "
                "out-of-memory."),
    Option("--cache-dir", "load", Path, relative="path", check=_check_directory,
           help="Inference cache and demo models [default: the user cache directory]."),
    Option("--no-cache", "load", bool, default=True, help="Keep no inference cache on disk."),
)

BY_NAME: Mapping[str, Option] = {o.name: o for o in OPTIONS}
MODEL_OPTIONS = ("device", "dtype", "device_map", "allow_pickle", "trust_remote_code", "batch_tokens", "cache_dir",
                 "cache")  # the options `demo` shares with `run`


def defaults() -> dict[str, Any]:
    """Every option's value when nobody sets it (a repeatable option: empty)."""
    return {o.name: (() if o.multiple else o.default) for o in OPTIONS}


def check_value(option: Option, value: Any, where: str) -> None:
    """The one check of a value against its option's declared choices, range and rule; ``where`` names it in the
    message (``--alpha`` or ``audit.toml: [audit] alpha``)."""
    if value is None:
        return
    for item in (value if option.multiple else (value,)):
        if option.choices and item not in option.choices:
            raise UsageError(f"{where} must be one of {', '.join(option.choices)}, got {item!r}")
        if option.interval is not None and option.type in (int, float) and not option.interval.holds(item):
            raise UsageError(f"{where} must be {option.interval.describe()}, got {item}")
        if option.check is not None:
            option.check(item, where)


def check_values(values: Mapping[str, Any], label: Callable[[str], str] | None = None) -> None:
    """:func:`check_value` over option values by name, each named by ``label`` (default: its flag)."""
    for name, value in values.items():
        check_value(BY_NAME[name], value, label(name) if label is not None else BY_NAME[name].flag)


def _field(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def validate_spec(spec: Any) -> None:
    """Check an AuditSpec once, however it was built: each field against its option, then the rules that tie
    fields together. Messages name the flag; a value from an audit file was already checked under its key."""
    for option in OPTIONS:
        if option.field is not None:
            check_value(option, _field(spec, option.field), option.flag)
    from distill_audit.spec import TranscriptSource

    if spec.teacher_fresh is not None and spec.teacher_logs is None:
        raise UsageError("--teacher-fresh needs --teacher-logs: fresh outputs are compared with logged ones")
    if isinstance(spec.teacher, TranscriptSource) and spec.teacher_logs is not None and spec.teacher_fresh is None:
        raise UsageError("a transcript teacher cannot draw fresh answers: give them with --teacher-fresh")
    if spec.watermark_texts is not None and spec.watermark_key is None:
        raise UsageError("--watermark-texts needs --watermark-key: the texts are scored against the key's green lists")
    unused = sorted(set(spec.detector_params) - set(spec.detectors)) if spec.detectors else []
    if unused:
        raise UsageError(f"[detectors.{unused[0]}] sets parameters of a detector this audit does not run "
                         f"(it runs: {', '.join(spec.detectors)})")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def recorded_settings(spec: Any) -> dict[str, Any]:
    """The settings that decide the numbers, from the options marked ``recorded`` plus the spec's fields no flag
    sets. Paths and the cache location are recorded elsewhere (models, probe sets, logs)."""
    out = {o.field.rsplit(".", 1)[-1]: _jsonable(_field(spec, o.field)) for o in OPTIONS if o.recorded and o.field}
    out["score_top_k"] = spec.score_top_k
    out["detector_params"] = {name: dict(params) for name, params in sorted(spec.detector_params.items())}
    if spec.remote:
        out["http"] = spec.http.to_dict()
        out["api_cache_ttl"] = spec.api_cache_ttl
    return out
