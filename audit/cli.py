"""The command line. The only module that prints; errors become one line on stderr and an exit code."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import click

from distill_audit import __version__
from distill_audit.errors import AuditError, UsageError
from distill_audit.result import dumps

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("distill_audit")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
GATES = {"distilled": ("distilled",), "inconclusive": ("distilled", "inconclusive")}  # --fail-on: labels that fail


def default_cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("distill-audit"))


def _fail(message: str, code: int) -> None:
    click.echo(f"distill-audit: error: {message}", err=True)
    sys.exit(code)


def user_errors(func: F) -> F:
    """Turn the errors a user can cause into one clear line and the right exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AuditError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            click.echo("distill-audit: error: interrupted; finished inference is cached, re-run the same command to "
                       "resume", err=True)
            # exit now: a request thread still blocked on a hung server would otherwise hold the interpreter's
            # exit (it joins worker threads) until its timeout. Every cache write is already committed.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        except OSError as exc:  # disk full, permissions on the output folder, ...
            where = f"{exc.filename}: " if exc.filename else ""
            _fail(f"{where}{exc.strerror or exc}", EXIT_ERROR)

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="distill-audit: %(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("transformers", "torch", "urllib3", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(max(level, logging.ERROR))
    import warnings

    if not verbose:
        warnings.filterwarnings("ignore")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="distill-audit")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars.")
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """distill-audit: was this student model distilled from that teacher model?

    Runs statistical detectors over batched, cached inference of a teacher, a suspect student and a
    panel of independent reference models, and writes a verdict with p-values and evidence to
    OUT/result.json. Exit codes: 0 done, 1 runtime error, 2 usage error (bad path, file or flag).
    """
    _setup_logging(verbose, quiet)
    ctx.obj = {"progress": False if quiet else None}


def _stack(func: F, options: list[Callable[[Any], Any]]) -> F:
    """Apply click options so they list in --help in the order written."""
    for option in reversed(options):
        func = option(func)
    return func


def _load_options(func: F) -> F:
    """How a local model is loaded (:class:`LoadOptions`): every command that runs one takes the same flags."""
    options = [
        click.option("--device", default="auto", show_default=True,
                     help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     show_default=True, help="auto: bfloat16 on a GPU, float32 on a CPU."),
        click.option("--device-map", type=click.Choice(["auto"]), default=None,
                     help="Spread a model too large for one device over all devices (accelerate)."),
        click.option("--allow-pickle", is_flag=True,
                     help="Load pickle (.bin) checkpoints. They can run code when loaded: trusted sources only."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Run model code shipped with a checkpoint. Off by default; trusted sources only."),
    ]
    return _stack(func, options)


def _model_options(func: F) -> F:
    options = [
        _load_options,
        click.option("--batch-tokens", default=None, type=click.IntRange(min=1),
                     help="Token budget of one batch (rows x longest row) [default: 1024 on a CPU, where "
                          "cache-sized batches run fastest; 16384 on a GPU]. Halved automatically on out-of-memory."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Inference cache and demo models [default: the user cache directory]."),
        click.option("--no-cache", is_flag=True, help="Keep no inference cache on disk."),
    ]
    return _stack(func, options)


def _audit_options(func: F) -> F:
    options = [
        click.option("--teacher-logs", type=click.Path(path_type=Path), default=None, metavar="JSONL",
                     help="Logged teacher outputs that may have reached the student, one {\"prompt\", \"completion\"} "
                          "object per line; enables the paired logged-vs-fresh membership test."),
        click.option("--teacher-fresh", type=click.Path(path_type=Path), default=None, metavar="JSONL",
                     help="Fresh teacher outputs for the same prompts, drawn the way the logged ones were "
                          "[default: sampled from the teacher here, seeded, at the logged lengths]."),
        click.option("--fresh-temperature", type=float, default=1.0, show_default=True,
                     help="Sampling temperature for fresh outputs made here; match the one the logs were made with."),
        click.option("--membership-score", type=click.Choice(["loss", "min-k++", "zlib"]), default="loss",
                     show_default=True, help="Test statistic of logged-vs-fresh (the others are reported, not tested)."),
        click.option("--teacher-name", "teacher_names", multiple=True, metavar="NAME",
                     help="A name of the teacher or its maker (repeatable); identity probes record student answers naming it."),
        click.option("--teacher-access", type=click.Choice(["white", "gray", "black"]), default="white",
                     show_default=True,
                     help="Audit the teacher as if only this access existed: gray = top-k log-probs of its generated "
                          "tokens, black = generated text only. Detectors needing more are skipped with the reason."),
        click.option("--combine", "combination", type=click.Choice(["bonferroni", "cauchy"]), default="bonferroni",
                     show_default=True,
                     help="How detector p-values combine: Bonferroni (valid under any dependence) or the Cauchy "
                          "combination (less conservative; valid under dependence for small alpha)."),
        click.option("--no-negative-controls", is_flag=True,
                     help="Skip the negative controls (each reference audited in the student's seat)."),
        click.option("--watermark-key", type=click.Path(path_type=Path), default=None, metavar="FILE",
                     help="The teacher's private watermark key (`distill-audit watermark keygen`): enables "
                          "watermark-radioactivity. Results record its fingerprint, never the secret."),
        click.option("--watermark-texts", type=click.Path(path_type=Path), default=None, metavar="JSONL",
                     help="Watermarked teacher texts (`watermark generate` output): the student reads them "
                          "(reading mode) when it scores text and shares the key's tokenizer."),
    ]
    return _stack(func, options)


def _out_dir(out: Path) -> Path:
    from distill_audit.outputs import check_output_dir

    return check_output_dir(out)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: str) -> float | None:
    """Seconds from '90', '30m', '12h', '7d'; 'forever' for no limit."""
    text = value.strip().lower()
    if text in ("forever", "inf", "none"):
        return None
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit is not None else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise UsageError(f"--api-cache-ttl {value!r}: give a duration such as 3600, 30m, 12h, 7d, or 'forever'") from None
    if not seconds >= 0:
        raise UsageError(f"--api-cache-ttl {value!r}: must be 0 or more")
    return seconds


def _api_group_options(flag: str, dest: str, what: str) -> list[Callable[[Any], Any]]:
    """``{flag}-url``, ``{flag}-model`` (both repeatable, paired in order) and ``{flag}-api-key-env``: models of one
    role behind OpenAI-compatible APIs."""
    return [
        click.option(f"{flag}-url", f"{dest}_urls", multiple=True, metavar="URL",
                     help=f"{what} behind an OpenAI-compatible API (repeatable; pairs in order with {flag}-model)."),
        click.option(f"{flag}-model", f"{dest}_models", multiple=True, metavar="NAME",
                     help=f"Model name for each {flag}-url, in the same order."),
        click.option(f"{flag}-api-key-env", default=None, metavar="VAR",
                     help=f"Environment variable with the key of the {flag}-url servers."),
    ]


def _remote_options(func: F) -> F:
    options = [
        click.option("--teacher-url", default=None, metavar="URL",
                     help="Teacher behind an OpenAI-compatible API (vLLM, TGI, llama.cpp server, ...), e.g. "
                          "http://127.0.0.1:8000/v1; needs --teacher-model."),
        click.option("--teacher-model", default=None, metavar="NAME", help="The teacher's model name at --teacher-url."),
        click.option("--teacher-api-key-env", default=None, metavar="VAR",
                     help="Environment variable holding the teacher API's key (the key is never written anywhere)."),
        click.option("--teacher-tokenizer", default=None, metavar="DIR",
                     help="A local copy of the remote or transcript teacher's tokenizer: lets token-level detectors "
                          "compare ids (checked against the server) and counts its tokens."),
        click.option("--teacher-transcript", type=click.Path(path_type=Path), default=None, metavar="JSONL",
                     help="A closed teacher known only from its logged answers: OpenAI chat logs (messages + response, "
                          "optional logprobs) or {\"prompt\", \"completion\"} lines. Its prompts become the probes."),
        click.option("--student-url", default=None, metavar="URL", help="Student behind an OpenAI-compatible API."),
        click.option("--student-model", default=None, metavar="NAME", help="The student's model name at --student-url."),
        click.option("--student-api-key-env", default=None, metavar="VAR", help="Environment variable with its key."),
        click.option("--student-tokenizer", default=None, metavar="DIR",
                     help="A local copy of the remote student's tokenizer."),
        *_api_group_options("--reference", "reference", "A reference"),
        *_api_group_options("--alternative-teacher", "alternative", "An alternative teacher"),
        click.option("--api", type=click.Choice(["auto", "completions", "chat"]), default="auto", show_default=True,
                     help="Which generation route of the APIs to use; auto: completions, else chat."),
        click.option("--api-concurrency", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Requests in flight per API model."),
        click.option("--api-timeout", type=click.FloatRange(min=0.1), default=120.0, show_default=True,
                     help="Seconds for one API request before it is retried."),
        click.option("--api-cache-ttl", default="7d", show_default=True, metavar="DURATION",
                     help="How long a cached answer from a model behind an API is trusted before it is asked again "
                          "(e.g. 3600, 30m, 12h, 7d, or 'forever'). Local models never go stale: their cache key is "
                          "their content."),
        click.option("--refresh", is_flag=True,
                     help="Ask every model behind an API again instead of using cached answers (--api-cache-ttl 0)."),
        click.option("--api-retries", type=click.IntRange(min=0), default=6, show_default=True,
                     help="Retries of a request after 429, 5xx, timeouts or cut-short answers (exponential backoff "
                          "with jitter; Retry-After is honoured)."),
    ]
    return _stack(func, options)


@main.command()
@click.option("--teacher", default=None, metavar="PATH|ID|GGUF",
              help="Teacher model: checkpoint directory, cached hub id, or .gguf file (or see --teacher-url, "
                   "--teacher-transcript).")
@click.option("--student", default=None, metavar="PATH|ID|GGUF", help="The suspect student model (or --student-url).")
@click.option("--reference", "references", multiple=True, metavar="PATH|ID|GGUF",
              help="An independent reference model of a similar class; repeat for each (at least 2; 6+ give the "
                   "panel test power). Include a model trained on the teacher's data if you have one.")
@click.option("--alternative-teacher", "alternatives", multiple=True, metavar="PATH|ID|GGUF",
              help="Another model that could have been the teacher (repeatable): a sibling run, the same family's "
                   "other sizes, another vendor's model. The verdict then asks whether the student leans to the "
                   "teacher over each one, and the report names the candidate the evidence points to.")
@click.option("--alternative-teacher-transcript", "alternative_transcripts", multiple=True, metavar="JSONL",
              type=click.Path(path_type=Path),
              help="An alternative teacher known only from a transcript of its answers (repeatable; like "
                   "--teacher-transcript, and its prompts must cover the probes).")
@click.option("--probes", default=None,
              help="A built-in probe set's name, or a .txt/.jsonl file [default: 'default', or the transcript's "
                   "prompts with --teacher-transcript].")
@click.option("--n-probes", type=click.IntRange(min=1), default=None, help="Use a seeded random subset of this many probes.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for sub-sampling, sampling and bootstraps.")
@click.option("--alpha", default=0.01, show_default=True, type=float, help="Significance level of the verdict.")
@click.option("--detector", "detectors", multiple=True, metavar="NAME",
              help="Run only these detectors (repeatable); see `distill-audit detectors`.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory; result.json is written there.")
@_audit_options
@click.option("--fail-on", type=click.Choice(["distilled", "inconclusive"]), default=None,
              help="CI gating: exit 1 (after writing the result) when the verdict is distilled, or with "
                   "'inconclusive' when it is anything but not-distilled.")
@_remote_options
@_model_options
@click.pass_context
@user_errors
def run(ctx: click.Context, out: Path, fail_on: str | None, **kw: Any) -> None:
    """Audit one student against one teacher and a reference panel.

    Exit codes: 0 done; 1 runtime error, or the verdict matched --fail-on (the result is written);
    2 usage error.
    """
    from distill_audit.runner import run_audit

    out = _out_dir(out)
    spec = _spec(kw, transcript_dir=out / "transcripts")
    result = run_audit(spec, progress=ctx.obj["progress"], command=sys.argv)
    _write_outputs(out, result)
    _print_verdict("audit", result, out / "result.json")
    click.echo(f"  report: {out / 'report.html'}")
    label = result["verdict"]["label"]
    if fail_on is not None and label in GATES[fail_on]:
        click.echo(f"distill-audit: verdict {label} matches --fail-on {fail_on}", err=True)
        sys.exit(EXIT_ERROR)


def _write_outputs(out: Path, result: dict[str, Any]) -> None:
    """result.json and report.html, both written whole or neither. The report is rendered (before anything
    is written) from the serialised result, exactly what `render` reads back later."""
    from distill_audit.outputs import write_together
    from distill_audit.reports import render_html

    text = dumps(result)
    html = render_html(json.loads(text))
    write_together({out / "result.json": text, out / "report.html": html})


def _source(kw: dict[str, Any], role: str) -> Any:
    """The one model source given for a role: a local path, an API endpoint, or (teacher) a transcript."""
    from distill_audit.backends.openai_compat import RemoteModel
    from distill_audit.spec import TranscriptSource

    local, url, name = kw.get(role), kw.get(f"{role}_url"), kw.get(f"{role}_model")
    transcript = kw.get(f"{role}_transcript")
    tokenizer = kw.get(f"{role}_tokenizer")
    flags = [f"--{role}", f"--{role}-url"] + (["--teacher-transcript"] if role == "teacher" else [])
    given = [x for x in (local, url, transcript) if x]
    if len(given) != 1:
        raise UsageError(f"give exactly one of {', '.join(flags)} ({'several' if given else 'none'} given)")
    if name and not url:
        raise UsageError(f"--{role}-model names the model at --{role}-url; give the URL too")
    if kw.get(f"{role}_api_key_env") and not url:
        raise UsageError(f"--{role}-api-key-env is for a model behind an API (--{role}-url)")
    if url:
        if not name:
            raise UsageError(f"--{role}-url needs --{role}-model NAME (the name the server knows the model by)")
        return RemoteModel(url, name, kw.get(f"{role}_api_key_env"), tokenizer, kw.get("api") or "auto")
    if tokenizer and not transcript:
        raise UsageError(f"--{role}-tokenizer is for a model behind an API or a transcript; a local model has its own")
    if transcript:
        return TranscriptSource(Path(transcript), tokenizer)
    return local


def _load_options_from(kw: dict[str, Any]) -> Any:
    """The :class:`LoadOptions` the :func:`_load_options` flags ask for."""
    from distill_audit.backends.hf import LoadOptions

    return LoadOptions(device=kw["device"], dtype=kw["dtype"], device_map=kw["device_map"],
                       allow_pickle=kw["allow_pickle"], trust_remote_code=kw["trust_remote_code"])


def _spec(kw: dict[str, Any], transcript_dir: Path | None = None) -> Any:
    from distill_audit.backends.http import HTTPSettings
    from distill_audit.backends.openai_compat import RemoteModel
    from distill_audit.spec import AuditSpec, TranscriptSource

    urls, names = kw.get("reference_urls", ()), kw.get("reference_models", ())
    if len(urls) != len(names):
        raise UsageError(f"each --reference-url needs its --reference-model, in the same order "
                         f"({len(urls)} URL(s), {len(names)} name(s))")
    remote_refs = tuple(RemoteModel(u, n, kw.get("reference_api_key_env"), None, kw.get("api") or "auto")
                        for u, n in zip(urls, names))
    alt_urls, alt_names = kw.get("alternative_urls", ()), kw.get("alternative_models", ())
    if len(alt_urls) != len(alt_names):
        raise UsageError(f"each --alternative-teacher-url needs its --alternative-teacher-model, in the same order "
                         f"({len(alt_urls)} URL(s), {len(alt_names)} name(s))")
    if kw.get("alternative_teacher_api_key_env") and not alt_urls:
        raise UsageError("--alternative-teacher-api-key-env is for alternative teachers behind an API "
                         "(--alternative-teacher-url)")
    alternatives = (
        tuple(kw.get("alternatives", ()))
        + tuple(RemoteModel(u, n, kw.get("alternative_teacher_api_key_env"), None, kw.get("api") or "auto")
                for u, n in zip(alt_urls, alt_names))
        + tuple(TranscriptSource(Path(t)) for t in kw.get("alternative_transcripts", ()))
    )
    http = HTTPSettings(concurrency=kw.get("api_concurrency", 4), timeout=kw.get("api_timeout", 120.0),
                        max_retries=kw.get("api_retries", 6))
    return AuditSpec(
        teacher=_source(kw, "teacher"),
        student=_source(kw, "student"),
        references=tuple(kw["references"]) + remote_refs,
        alternative_teachers=alternatives,
        http=http,
        transcript_dir=transcript_dir,
        probes=kw["probes"],
        n_probes=kw["n_probes"],
        seed=kw["seed"],
        alpha=kw["alpha"],
        detectors=tuple(kw["detectors"]),
        load=_load_options_from(kw),
        token_budget=kw["batch_tokens"],
        cache_dir=None if kw["no_cache"] else (kw["cache_dir"] or default_cache_dir()),
        api_cache_ttl=0.0 if kw.get("refresh") else _duration(kw.get("api_cache_ttl") or "7d"),
        teacher_logs=kw.get("teacher_logs"),
        teacher_fresh=kw.get("teacher_fresh"),
        fresh_temperature=kw.get("fresh_temperature", 1.0),
        membership_score=kw.get("membership_score", "loss"),
        teacher_names=tuple(kw.get("teacher_names", ())),
        teacher_access=kw.get("teacher_access", "white"),
        combination=kw.get("combination", "bonferroni"),
        negative_controls=not kw.get("no_negative_controls", False),
        watermark_key=kw.get("watermark_key"),
        watermark_texts=kw.get("watermark_texts"),
    )


def _print_verdict(title: str, result: dict[str, Any], path: Path) -> None:
    from distill_audit.reports import render_summary

    click.echo(render_summary(result, str(path), title), nl=False)


@main.command()
@click.option("--out", default=Path("demo-audit"), show_default=True, type=click.Path(path_type=Path),
              help="Where the two demo results go.")
@click.option("--seed", default=0, show_default=True, type=int)
@_model_options
@click.pass_context
@user_errors
def demo(ctx: click.Context, out: Path, seed: int, **kw: Any) -> None:
    """Build tiny demo models (offline, about a minute on a CPU) and audit a distilled student and a control.

    The student was distilled on the teacher's logged API answers (teacher-logs.jsonl beside the models);
    both audits get those logs. The models are saved with save_pretrained under the cache directory and
    reused next time.
    """
    from distill_audit.demo import FRESH_FILE, LOGS_FILE, build_demo_models, demo_prompts
    from distill_audit.result import write_atomic
    from distill_audit.runner import run_audit

    started = time.perf_counter()
    out = _out_dir(out)
    cache_dir = kw["cache_dir"] or default_cache_dir()
    quiet = ctx.obj["progress"] is False
    say: Callable[[str], None] = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    paths = build_demo_models(cache_dir, report=say, progress=ctx.obj["progress"])
    probes = out / "demo-probes.txt"
    write_atomic(probes, "\n".join(demo_prompts()) + "\n")
    refs = tuple(str(p) for name, p in sorted(paths.items()) if name.startswith("reference-"))
    kw.update(teacher=str(paths["teacher"]), references=refs, probes=str(probes), n_probes=None, seed=seed,
              alpha=0.01, detectors=(), teacher_logs=paths["teacher"].parent / LOGS_FILE,
              teacher_fresh=paths["teacher"].parent / FRESH_FILE)
    for case, suspect in (("distilled", "student"), ("control", "control")):
        kw["student"] = str(paths[suspect])
        result = run_audit(_spec(kw), progress=ctx.obj["progress"], command=sys.argv)
        _write_outputs(out / case, result)
        _print_verdict(f"{case:>9} student", result, out / case / "result.json")
    click.echo(f"demo models: {next(iter(paths.values())).parent}   ({time.perf_counter() - started:.0f}s)")


FORMATS = {"html": "report.html", "md": "summary.md", "json": "result.json", "intoto": "attestation.intoto.json"}


@main.command()
@click.argument("result_file", metavar="RESULT.json", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="html", show_default=True,
              help="html: the self-contained evidence report; md: a summary for tickets and pull requests; "
                   "json: the result, re-validated and canonically formatted; intoto: an in-toto Statement of the "
                   "verdict binding result.json and report.html by sha256 (sign it with cosign).")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Where to write ('-' for standard output) [default: beside RESULT.json: report.html, summary.md].")
@user_errors
def render(result_file: Path, fmt: str, output: Path | None) -> None:
    """Rebuild a report from a result file alone, without re-running anything. Rendering the same file twice
    gives identical bytes."""
    from distill_audit.reports import render_html, render_markdown
    from distill_audit.reports.attestation import render_statement
    from distill_audit.result import read_result_bytes, write_atomic

    if not result_file.exists():
        raise UsageError(f"{result_file}: no such file")
    result, raw = read_result_bytes(result_file)  # checked against the schema; the bytes an attestation hashes
    if fmt == "intoto":
        text = render_statement(result, raw, render_html(result))
    else:
        text = {"html": render_html, "md": render_markdown, "json": dumps}[fmt](result)
    if output is not None and str(output) == "-":
        click.echo(text, nl=False)
        return
    target = output or result_file.with_name(FORMATS[fmt])
    if target.resolve() == result_file.resolve():
        raise UsageError(f"{target}: refusing to overwrite the result file being rendered; choose -o")
    write_atomic(target, text)
    click.echo(str(target))


@main.command("schema")
def print_schema() -> None:
    """Print the JSON Schema (draft 2020-12) of result.json, the file `run` writes and `render` reads."""
    from distill_audit.result import schema_text

    click.echo(schema_text(), nl=False)


@main.command("detectors")
def list_detectors() -> None:
    """List the detectors and the access each needs."""
    from distill_audit.detectors import REGISTRY

    for name in sorted(REGISTRY):
        cls = REGISTRY[name]
        click.echo(f"{name}")
        click.echo(f"  {cls.summary}")
        for role, caps in cls.requires.items():
            click.echo(f"  {role:<9} needs: {', '.join(sorted(c.value for c in caps))}")
        extra = cls.requirements()
        if cls.needs_watermark_key:
            extra[-1] += "; the student generates, or scores --watermark-texts with the key's tokenizer"
        if extra:
            click.echo(f"  also:     {'; '.join(extra)}")


@main.command("probes")
def list_probes() -> None:
    """List the built-in probe sets."""
    from distill_audit.probes import builtin_names, load_probe_set

    for name in builtin_names():
        ps = load_probe_set(name)
        click.echo(f"{name}  version {ps.version}  {ps.n_total} prompts  sha256 {ps.full_hash[:16]}")


# -- watermark ----------------------------------------------------------------------------------------------

_KEY_PRIVATE = ("The key file holds the secret: keep it private (it is created with mode 0600), never share it "
                "or commit it; anyone holding it can detect, forge or strip the watermark.")


@main.group()
def watermark() -> None:
    """A secret-key text watermark for your teacher's outputs, to audit students for radioactivity.

    keygen makes a key, generate writes watermarked teacher text, detect checks that a text carries the
    watermark; `distill-audit run --watermark-key FILE` then tests whether a student trained on such text.
    The key file must stay private: results and output show only its fingerprint (sha256 of the secret).
    """


def _load_tokenizer(path: str, flag: str) -> Any:
    from distill_audit.backends.remote import TokenMap

    return TokenMap.load(path, flag).tokenizer


@watermark.command("keygen")
@click.option("--tokenizer", "tokenizer_dir", required=True, metavar="DIR",
              help="The teacher's tokenizer (or model) directory; the key is bound to its token ids.")
@click.option("--key-file", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="Where to create the key; an existing file is never overwritten. " + _KEY_PRIVATE)
@click.option("--gamma", default=0.25, show_default=True, type=float, help="Share of tokens green in each context.")
@click.option("--delta", default=2.0, show_default=True, type=float, help="Logit bias added to green tokens.")
@click.option("--context-width", default=1, show_default=True, type=int,
              help="Previous tokens that seed each green list.")
@user_errors
def watermark_keygen(tokenizer_dir: str, key_file: Path, gamma: float, delta: float, context_width: int) -> None:
    """Create a new secret watermark key for a teacher's tokenizer (prints its fingerprint, never the secret)."""
    from distill_audit.watermark import new_key, write_key

    tokenizer = _load_tokenizer(tokenizer_dir, "--tokenizer")
    key = new_key(tokenizer, gamma=gamma, delta=delta, context_width=context_width)
    write_key(key, key_file)
    click.echo(f"watermark key written to {key_file} (private: keep it secret)")
    click.echo(f"  fingerprint: {key.fingerprint}")
    click.echo(f"  gamma {key.gamma:g}, delta {key.delta:g}, context width {key.context_width}, "
               f"vocabulary {key.vocab_size}, tokenizer sha256 {key.tokenizer_sha256}")


@watermark.command("generate")
@click.option("--model", required=True, metavar="DIR", help="The teacher: a local checkpoint directory.")
@click.option("--key-file", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The watermark key (`watermark keygen`). " + _KEY_PRIVATE)
@click.option("--prompts", required=True, metavar="FILE", help="Prompts: .txt (one per line) or .jsonl (\"prompt\" field).")
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="OUT.jsonl",
              help="Where the {\"prompt\", \"completion\"} lines go (written whole or not at all).")
@click.option("--max-new-tokens", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Sampling temperature (0: greedy, still watermarked).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the sampling.")
@_load_options
@click.pass_context
@user_errors
def watermark_generate(ctx: click.Context, model: str, key_file: Path, prompts: str, out: Path, max_new_tokens: int,
                       temperature: float, seed: int, **load: Any) -> None:
    """Continue each prompt with the teacher, watermarked with the key (seeded sampling)."""
    from tqdm import tqdm

    from distill_audit import fingerprint as fp
    from distill_audit.backends.hf import HFAdapter
    from distill_audit.probes import load_probe_set
    from distill_audit.result import write_atomic
    from distill_audit.watermark import generate_watermarked, read_key

    key = read_key(key_file, "--key-file")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; give a .jsonl file path")
    prompt_list = list(load_probe_set(prompts).prompts)
    adapter = HFAdapter.load(model, _load_options_from(load))
    if fp.tokenizer_fingerprint(adapter.tokenizer) != key.tokenizer_sha256:
        raise UsageError(f"--model {model}: its tokenizer is not the one the key was made for "
                         f"(key: tokenizer sha256 {key.tokenizer_sha256[:12]}..., model: "
                         f"{fp.tokenizer_fingerprint(adapter.tokenizer)[:12]}...)")
    progress = ctx.obj["progress"]
    bar = tqdm(total=len(prompt_list), desc="watermarked generation", unit="prompt", leave=False,
               disable=(not progress) if progress is not None else None)
    completions = generate_watermarked(adapter.model, adapter.tokenizer, key, prompt_list, max_new_tokens,
                                       seed=seed, temperature=temperature, on_batch=bar.update)
    bar.close()
    lines = [json.dumps({"prompt": p, "completion": c}, ensure_ascii=False) for p, c in zip(prompt_list, completions)]
    write_atomic(out, "\n".join(lines) + "\n")
    click.echo(f"{len(lines)} watermarked completions written to {out} (key fingerprint {key.fingerprint[:16]}...)")


@watermark.command("detect")
@click.option("--key-file", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The watermark key. " + _KEY_PRIVATE)
@click.option("--texts", required=True, type=click.Path(path_type=Path), metavar="FILE.jsonl",
              help="{\"prompt\", \"completion\"} lines; the completions are tested, tuples found in prompts dropped.")
@click.option("--tokenizer", "tokenizer_dir", required=True, metavar="DIR", help="The tokenizer the key was made for.")
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
              help="Significance level of the one-line conclusion.")
@user_errors
def watermark_detect(key_file: Path, texts: Path, tokenizer_dir: str, alpha: float) -> None:
    """Does this text carry the watermark? Exact binomial test over distinct (context, token) tuples."""
    from distill_audit import fingerprint as fp
    from distill_audit.logs import load_outputs
    from distill_audit.watermark import read_key, score_texts

    key = read_key(key_file, "--key-file")
    items = load_outputs(texts, "--texts")
    tokenizer = _load_tokenizer(tokenizer_dir, "--tokenizer")
    if fp.tokenizer_fingerprint(tokenizer) != key.tokenizer_sha256:
        raise UsageError(f"--tokenizer {tokenizer_dir}: not the tokenizer the key was made for "
                         f"(key: tokenizer sha256 {key.tokenizer_sha256[:12]}...)")
    s = score_texts(key, tokenizer, items)
    fraction = f"{s.green_fraction:.4f}" if s.n_scored else "n/a"
    click.echo(f"texts: {len(items)}   scored: {s.n_scored} distinct (context, token) tuples "
               f"(dropped: {s.n_duplicates} repeats, {s.n_in_prompt} found in prompts)")
    click.echo(f"green: {s.n_green}   green fraction: {fraction} (gamma {key.gamma:g})   "
               f"p = {s.p_value:.3g} (exact one-sided binomial)")
    verdict = "carries the watermark" if s.p_value < alpha else "no evidence of the watermark"
    click.echo(f"{verdict} at alpha {alpha:g} (key fingerprint {key.fingerprint[:16]}...)")
