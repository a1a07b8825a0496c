"""Probe sets: named, versioned, hashed lists of prompts (built-in sets or the user's own files).

Each distinct prompt is one probe: a prompt repeated in a set is kept once (its first occurrence, in file
order) and the repeats are counted (``n_duplicates``), because a detector's units of evidence are its
prompts and a repeated prompt is the same observation again, not a new one. Sub-sampling
(``--n-probes``) draws from the distinct prompts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from distill_audit.errors import ProbeSetError
from distill_audit.logs import BadJSON, jsonl_lines, lone_surrogate, parse_json, read_user_file, shown

log = logging.getLogger(__name__)

BUILTIN = {"default": "default-v1.jsonl"}
SUFFIXES = (".txt", ".jsonl")
_TEXT_LINE = re.compile(r"\r\n|\r|\n")  # a .txt line ends at a newline (LF, CRLF or CR), nowhere else


def prompts_hash(prompts: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ProbeSet:
    name: str
    version: str
    source: str  # "builtin" or the file path given
    prompts: tuple[str, ...]  # distinct
    full_hash: str  # hash of the whole set as loaded (its distinct prompts)
    n_total: int  # distinct prompts in the whole set
    n_duplicates: int = 0  # prompts dropped because they repeat an earlier one

    @classmethod
    def from_prompts(cls, name: str, version: str, source: str, prompts: Sequence[str]) -> "ProbeSet":
        """A set of the distinct ``prompts`` (first occurrences, in order), counting the repeats dropped."""
        distinct = tuple(dict.fromkeys(prompts))
        return cls(name, version, source, distinct, prompts_hash(distinct), len(distinct), len(prompts) - len(distinct))

    @property
    def hash(self) -> str:
        """Hash of the prompts actually used (after any sub-sampling)."""
        return prompts_hash(self.prompts)

    def subsample(self, n: int | None, seed: int) -> "ProbeSet":
        if n is None or n >= len(self.prompts):
            return self
        if n < 1:
            raise ProbeSetError(f"--n-probes must be at least 1, got {n}")
        rng = np.random.default_rng(seed)
        chosen = sorted(rng.choice(len(self.prompts), size=n, replace=False).tolist())
        return ProbeSet(self.name, self.version, self.source, tuple(self.prompts[i] for i in chosen),
                        self.full_hash, self.n_total, self.n_duplicates)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "hash": self.hash,
            "full_set_hash": self.full_hash,
            "n": len(self.prompts),
            "n_total": self.n_total,
            "n_duplicates": self.n_duplicates,
        }


def builtin_names() -> list[str]:
    return sorted(BUILTIN)


def load_probe_set(spec: str) -> ProbeSet:
    """A built-in set by name, or a user file: ``.txt`` (one prompt per line) or ``.jsonl`` (``prompt`` field).

    Repeated prompts are kept once; how many were dropped is logged and recorded as ``n_duplicates``."""
    probe_set = _builtin(spec) if spec in BUILTIN else _from_file(spec)
    if probe_set.n_duplicates:
        log.warning("--probes %s: %d repeated prompt(s) dropped; each distinct prompt is one probe (%d left)",
                    shown(spec), probe_set.n_duplicates, probe_set.n_total)
    return probe_set


def _builtin(name: str) -> ProbeSet:
    filename = BUILTIN[name]
    text = resources.files("distill_audit").joinpath("probesets").joinpath(filename).read_text(encoding="utf-8")
    version = filename.rsplit("-", 1)[-1].split(".")[0]
    return ProbeSet.from_prompts(name, version, "builtin", _parse_jsonl(text, f"built-in probe set {name}"))


def _from_file(spec: str) -> ProbeSet:
    """A .txt or .jsonl file, read through the one reader of user files (BOM, encoding, missing, directory)."""
    path = _user_path(spec)
    where = f"--probes {shown(spec)}"
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES and not os.path.isdir(path):
        if not os.path.exists(path):
            raise ProbeSetError(f"{where}: not a built-in set ({', '.join(builtin_names())}) and no such file")
        raise ProbeSetError(f"{where}: unknown probe file type {shown(suffix) or '(none)'}; use .txt or .jsonl")
    text, _ = read_user_file(path, "--probes", expected="a .txt or .jsonl file", error=ProbeSetError)
    prompts = _parse_jsonl(text, where) if suffix == ".jsonl" else _parse_txt(text, where)
    return ProbeSet.from_prompts(path.stem, "file", str(path), prompts)


def _user_path(spec: str) -> Path:
    try:
        return Path(spec).expanduser()
    except RuntimeError:  # "~user" with no such user: the path as written
        return Path(spec)


def _parse_txt(text: str, where: str) -> tuple[str, ...]:
    prompts = tuple(line.strip() for line in _TEXT_LINE.split(text) if line.strip())
    if not prompts:
        raise ProbeSetError(f"{where}: no prompts in the file")
    return prompts


def _prompt(obj: object, where: str) -> str:
    """The prompt of one parsed line, or one error naming the file and line."""
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
        raise ProbeSetError(f"{where}: expected an object with a string \"prompt\" field")
    prompt: str = obj["prompt"]
    if not prompt.strip():
        raise ProbeSetError(f"{where}: empty prompt")
    problem = lone_surrogate(prompt)
    if problem:
        raise ProbeSetError(f"{where}: the prompt is not valid Unicode ({problem})")
    return prompt


def _parse_jsonl(text: str, where: str) -> tuple[str, ...]:
    prompts = []
    for lineno, line in jsonl_lines(text):
        try:
            obj = parse_json(line)
        except BadJSON as exc:
            raise ProbeSetError(f"{where}: line {lineno}: not valid JSON ({exc})") from None
        prompts.append(_prompt(obj, f"{where}: line {lineno}"))
    if not prompts:
        raise ProbeSetError(f"{where}: no prompts in the file")
    return tuple(prompts)
