"""The command line. The only module that prints; errors become one line on stderr and an exit code."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import click
from click.core import ParameterSource

from distill_audit import __version__
from distill_audit.auditfile import AuditFile
from distill_audit.errors import AuditError, UsageError
from distill_audit.options import BY_NAME, MODEL_OPTIONS, OPTIONS, Option, check_values, defaults
from distill_audit.result import dumps
from distill_audit.specbuild import build_spec

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


def _click_option(option: Option) -> Callable[[Any], Any]:
    """The click option of one declared setting. Ranges and choices are not enforced by click: the table's one
    check (``options.check_value``) does that for flags and audit files alike, as one line and exit 2."""
    text = option.help
    if option.interval is not None:
        text += f" [{option.interval.describe()}]"
    if option.type is bool:
        if option.default:  # a --no-X switch: X is true unless the flag is given
            return click.option(option.flag, option.name, is_flag=True, flag_value=False, default=True, help=text)
        return click.option(option.flag, option.name, is_flag=True, help=text)
    kind: Any = (click.Choice(option.choices) if option.choices else
                 click.Path(path_type=Path) if option.type is Path else option.type)
    return click.option(option.flag, option.name, type=kind, multiple=option.multiple,
                        default=None if option.multiple else option.default, metavar=option.metavar,
                        show_default=option.show_default, help=text)


def _declared_options(names: Sequence[str] | None = None) -> Callable[[F], F]:
    """Click options for the declared settings (all of them, or those named), in the table's order."""
    chosen = [o for o in OPTIONS if names is None or o.name in names]

    def apply(func: F) -> F:
        return _stack(func, [_click_option(o) for o in chosen])

    return apply


# how a local model is loaded (LoadOptions): every command that runs one takes the same declared flags
LOAD_OPTIONS = ("device", "dtype", "device_map", "allow_pickle", "trust_remote_code")
_load_options = _declared_options(LOAD_OPTIONS)


def _out_dir(out: Path) -> Path:
    from distill_audit.outputs import check_output_dir

    return check_output_dir(out)


@main.command()
@click.option("--config", type=click.Path(path_type=Path), default=None, metavar="AUDIT.toml",
              help="Read the audit from this file (`distill-audit init` writes an example): models, probes, logs, "
                   "detectors and their parameters, outputs; a flag given here overrides the same key in the file. "
                   "The result records the file's sha256 and text. A file may list several students (a sweep).")
@_declared_options()
@click.pass_context
@user_errors
def run(ctx: click.Context, config: Path | None, **kw: Any) -> None:
    """Audit one student (or, from an audit file, several) against one teacher and a reference panel.

    Exit codes: 0 done; 1 runtime error, or the verdict matched --fail-on (the result is written);
    2 usage error.
    """
    from distill_audit.auditfile import read_audit_file

    audit_file = read_audit_file(config) if config is not None else None
    values, label = _merge(ctx, kw, audit_file)
    if values["plan"]:
        _print_plans(values, label, audit_file)
        return
    if values["out"] is None:
        raise UsageError("give --out DIR (or out in [output] of the audit file)")
    out = _out_dir(values["out"])
    given_student = any(values[k] for k in ("student", "student_url"))
    if audit_file is not None and audit_file.students and not given_student:
        verdicts = _run_sweep(ctx, values, label, audit_file, out)
    else:
        result = _audit_one(ctx, values, label, audit_file, out)
        _print_verdict("audit", result, out / "result.json")
        click.echo(f"  report: {out / 'report.html'}")
        verdicts = [result["verdict"]["label"]]
    fail_on = values["fail_on"]
    matched = [v for v in verdicts if fail_on is not None and v in GATES[fail_on]]
    if matched:
        click.echo(f"distill-audit: verdict {matched[0]} matches --fail-on {fail_on}", err=True)
        sys.exit(EXIT_ERROR)


def _merge(ctx: click.Context, kw: dict[str, Any], audit_file: AuditFile | None
           ) -> tuple[dict[str, Any], Callable[[str], str]]:
    """Each option's value: a flag given on the command line, else the audit file's key, else the default; and a
    function naming each option the way the user gave it (for messages)."""
    values = dict(kw)
    from_file: set[str] = set()
    if audit_file is not None:
        for name, value in audit_file.values.items():
            if ctx.get_parameter_source(name) in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
                values[name] = value
                from_file.add(name)

    def label(name: str) -> str:
        return audit_file.where(name) if audit_file is not None and name in from_file else BY_NAME[name].flag

    return values, label


def _audit_one(ctx: click.Context, values: dict[str, Any], label: Callable[[str], str], audit_file: AuditFile | None,
               out: Path) -> dict[str, Any]:
    """One audit, written to OUT/result.json and OUT/report.html (with the audit file recorded, if any)."""
    from distill_audit.runner import run_audit

    detector_params = audit_file.detector_params if audit_file is not None else None
    spec = build_spec(values, default_cache_dir(), out / "transcripts", detector_params, label)
    result = run_audit(spec, progress=ctx.obj["progress"], command=sys.argv)
    if audit_file is not None:
        result["audit_file"] = audit_file.record()
    _write_outputs(out, result)
    return result


def _print_plans(values: dict[str, Any], label: Callable[[str], str], audit_file: AuditFile | None) -> None:
    """``run --plan``: each audit's planned work (a sweep: each student's), from its inputs alone. No model loads,
    no cache opens, nothing is written (not even --out)."""
    from distill_audit.runner import plan_audit
    from distill_audit.workplan import render_plan, work_plan

    given_student = any(values[k] for k in ("student", "student_url"))
    students = audit_file.students if audit_file is not None and audit_file.students and not given_student else ()
    detector_params = audit_file.detector_params if audit_file is not None else None
    for student in students or (None,):
        run_values = dict(values, student=student) if student is not None else values
        plan = plan_audit(build_spec(run_values, default_cache_dir(), None, detector_params, label))
        try:
            click.echo(render_plan(work_plan(plan), f"student {student}" if student is not None else "audit"))
        finally:
            if plan.transcript_teacher is not None:
                plan.transcript_teacher.close()


def _student_dirs(students: Sequence[str]) -> list[str]:
    """A folder name per student: the model's own name, made safe and unique."""
    names: list[str] = []
    for i, student in enumerate(students, 1):
        base = Path(student.rstrip("/")).name
        base = Path(base).stem if base.lower().endswith(".gguf") else base
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in base).strip(".") or f"student-{i}"
        name, n = safe, 2
        while name in names:
            name, n = f"{safe}-{n}", n + 1
        names.append(name)
    return names


def _run_sweep(ctx: click.Context, values: dict[str, Any], label: Callable[[str], str], audit_file: AuditFile,
               out: Path) -> list[str]:
    """Each listed student in turn against the same teacher and panel. One cache serves them all, so the
    teacher's and the references' answers are computed for the first student and read back for the others."""
    from distill_audit.outputs import write_together
    from distill_audit.reports.index import render_index_html, render_index_markdown

    if not values["cache"]:
        log.warning("a sweep without a cache computes the teacher's and the references' answers again for each "
                    "student")
    rows, verdicts = [], []
    for student, folder in zip(audit_file.students, _student_dirs(audit_file.students)):
        result = _audit_one(ctx, dict(values, student=student), label, audit_file, out / folder)
        _print_verdict(folder, result, out / folder / "result.json")
        verdict = result["verdict"]
        rows.append({"student": folder, "source": student, "verdict": verdict["label"], "p_value": verdict["p_value"],
                     "report": f"{folder}/report.html", "result": f"{folder}/result.json"})
        verdicts.append(verdict["label"])
    record = audit_file.record()
    write_together({out / "index.html": render_index_html(rows, record),
                    out / "index.md": render_index_markdown(rows, record)})
    click.echo(f"  index: {out / 'index.html'}")
    return verdicts


def _write_outputs(out: Path, result: dict[str, Any]) -> None:
    """result.json and report.html, both written whole or neither. The report is rendered (before anything
    is written) from the serialised result, exactly what `render` reads back later."""
    from distill_audit.outputs import write_together
    from distill_audit.reports import render_html

    text = dumps(result)
    html = render_html(json.loads(text))
    write_together({out / "result.json": text, out / "report.html": html})


def _load_options_from(kw: dict[str, Any]) -> Any:
    """The :class:`LoadOptions` the :data:`LOAD_OPTIONS` flags ask for (commands outside ``run``)."""
    from distill_audit.backends.hf import LoadOptions

    return LoadOptions(device=kw["device"], dtype=kw["dtype"], device_map=kw["device_map"],
                       allow_pickle=kw["allow_pickle"], trust_remote_code=kw["trust_remote_code"])


def _print_verdict(title: str, result: dict[str, Any], path: Path) -> None:
    from distill_audit.reports import render_summary

    click.echo(render_summary(result, str(path), title), nl=False)


@main.command()
@click.option("--out", default=Path("demo-audit"), show_default=True, type=click.Path(path_type=Path),
              help="Where the two demo results go.")
@click.option("--seed", default=0, show_default=True, type=int)
@_declared_options(MODEL_OPTIONS)
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
    check_values(kw)  # before the models are built
    out = _out_dir(out)
    cache_dir = kw["cache_dir"] or default_cache_dir()
    quiet = ctx.obj["progress"] is False
    say: Callable[[str], None] = (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))
    paths = build_demo_models(cache_dir, report=say, progress=ctx.obj["progress"])
    probes = out / "demo-probes.txt"
    write_atomic(probes, "\n".join(demo_prompts()) + "\n")
    refs = tuple(str(p) for name, p in sorted(paths.items()) if name.startswith("reference-"))
    kw = dict(defaults(), **kw)
    kw.update(teacher=str(paths["teacher"]), references=refs, probes=str(probes), n_probes=None, seed=seed,
              alpha=0.01, detectors=(), teacher_logs=paths["teacher"].parent / LOGS_FILE,
              teacher_fresh=paths["teacher"].parent / FRESH_FILE)
    for case, suspect in (("distilled", "student"), ("control", "control")):
        kw["student"] = str(paths[suspect])
        result = run_audit(build_spec(kw, cache_dir), progress=ctx.obj["progress"], command=sys.argv)
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


@main.command("init")
@click.argument("path", metavar="[PATH]", type=click.Path(path_type=Path), default=Path("audit.toml"))
@user_errors
def init(path: Path) -> None:
    """Write a commented example audit file (default: audit.toml) for `run --config`; never overwrites a file."""
    from distill_audit.auditfile import example_text

    if path.exists() or path.is_symlink():
        raise UsageError(f"{path}: already exists; refusing to overwrite it (give another path)")
    try:
        with open(path, "x", encoding="utf-8") as handle:  # "x": a file made meanwhile is not overwritten either
            handle.write(example_text())
    except FileExistsError:
        raise UsageError(f"{path}: already exists; refusing to overwrite it (give another path)") from None
    click.echo(f"example audit file written to {path}; edit it, then: distill-audit run --config {path}")


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
