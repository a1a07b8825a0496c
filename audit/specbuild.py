"""An AuditSpec from option values (flags, an audit file, or both merged): the rules that tie options together
(one model source per role, URLs paired with model names) live here; each value's own checks live in the
option table (``options``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from distill_audit.errors import UsageError
from distill_audit.options import BY_NAME, check_values, parse_duration

Label = Callable[[str], str]


def _flag(name: str) -> str:
    return BY_NAME[name].flag


def _source(values: Mapping[str, Any], role: str, label: Label) -> Any:
    """The one model source given for a role: a local path, an API endpoint, or (teacher) a transcript."""
    from distill_audit.backends.openai_compat import RemoteModel
    from distill_audit.spec import TranscriptSource

    local, url, name = values.get(role), values.get(f"{role}_url"), values.get(f"{role}_model")
    transcript = values.get(f"{role}_transcript")
    tokenizer = values.get(f"{role}_tokenizer")
    names = [role, f"{role}_url"] + (["teacher_transcript"] if role == "teacher" else [])
    given = [x for x in (local, url, transcript) if x]
    if len(given) != 1:
        raise UsageError(f"give exactly one of {', '.join(label(n) for n in names)} ({'several' if given else 'none'} given)")
    if name and not url:
        raise UsageError(f"{label(role + '_model')} names the model at {label(role + '_url')}; give the URL too")
    if values.get(f"{role}_api_key_env") and not url:
        raise UsageError(f"{label(role + '_api_key_env')} is for a model behind an API ({label(role + '_url')})")
    if url:
        if not name:
            raise UsageError(f"{label(role + '_url')} needs {label(role + '_model')} NAME (the name the server knows "
                             "the model by)")
        return RemoteModel(url, name, values.get(f"{role}_api_key_env"), tokenizer, values["api"])
    if tokenizer and not transcript:
        raise UsageError(f"{label(role + '_tokenizer')} is for a model behind an API or a transcript; a local model "
                         "has its own")
    if transcript:
        return TranscriptSource(Path(transcript), tokenizer)
    return local


def _remote_group(values: Mapping[str, Any], prefix: str, label: Label) -> tuple[Any, ...]:
    from distill_audit.backends.openai_compat import RemoteModel

    urls, names = values[f"{prefix}_urls"], values[f"{prefix}_models"]
    if len(urls) != len(names):
        raise UsageError(f"each {label(prefix + '_urls')} needs its {label(prefix + '_models')}, in the same order "
                         f"({len(urls)} URL(s), {len(names)} name(s))")
    key_env = values[f"{prefix}_api_key_env"]
    if key_env and not urls:
        raise UsageError(f"{label(prefix + '_api_key_env')} is for {prefix.replace('_', ' ')}s behind an API "
                         f"({label(prefix + '_urls')})")
    return tuple(RemoteModel(u, n, key_env, None, values["api"]) for u, n in zip(urls, names))


def build_spec(values: Mapping[str, Any], cache_dir: Path | None, transcript_dir: Path | None = None,
               detector_params: Mapping[str, Mapping[str, Any]] | None = None, label: Label = _flag) -> Any:
    """The AuditSpec of a complete set of option values (see :func:`defaults`). ``cache_dir`` is where the
    cache goes when one is kept (the CLI's default directory when --cache-dir is not given); ``label`` names an
    option in messages, as the user gave it (its flag, or its key in the audit file)."""
    from distill_audit.backends.hf import LoadOptions
    from distill_audit.backends.http import HTTPSettings
    from distill_audit.spec import AuditSpec, TranscriptSource

    check_values(values, label)
    references = tuple(values["references"]) + _remote_group(values, "reference", label)
    alternatives = (
        tuple(values["alternative_teachers"])
        + _remote_group(values, "alternative_teacher", label)
        + tuple(TranscriptSource(Path(t)) for t in values["alternative_teacher_transcripts"])
    )
    return AuditSpec(
        teacher=_source(values, "teacher", label),
        student=_source(values, "student", label),
        references=references,
        alternative_teachers=alternatives,
        http=HTTPSettings(concurrency=values["api_concurrency"], timeout=values["api_timeout"],
                          max_retries=values["api_retries"]),
        transcript_dir=transcript_dir,
        probes=values["probes"],
        n_probes=values["n_probes"],
        seed=values["seed"],
        alpha=values["alpha"],
        detectors=tuple(values["detectors"]),
        detector_params={k: dict(v) for k, v in (detector_params or {}).items()},
        load=LoadOptions(device=values["device"], dtype=values["dtype"], device_map=values["device_map"],
                         allow_pickle=values["allow_pickle"], trust_remote_code=values["trust_remote_code"]),
        token_budget=values["batch_tokens"],
        cache_dir=(values["cache_dir"] or cache_dir) if values["cache"] else None,
        api_cache_ttl=0.0 if values["refresh"] else parse_duration(values["api_cache_ttl"], label("api_cache_ttl")),
        teacher_logs=values["teacher_logs"],
        teacher_fresh=values["teacher_fresh"],
        fresh_temperature=values["fresh_temperature"],
        membership_score=values["membership_score"],
        teacher_names=tuple(values["teacher_names"]),
        teacher_access=values["teacher_access"],
        combination=values["combine"],
        negative_controls=values["negative_controls"],
        watermark_key=values["watermark_key"],
        watermark_texts=values["watermark_texts"],
        prompt_format=values["prompt_format"],
        teacher_prompt_format=values["teacher_prompt_format"],
        student_prompt_format=values["student_prompt_format"],
        reference_prompt_format=values["reference_prompt_format"],
        system_prompt=values["system_prompt"],
    )
