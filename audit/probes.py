"""Probe sets: named, versioned, hashed lists of prompts (built-in sets or the user's own files)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from audit.errors import ProbeSetError

BUILTIN = {"default": "default-v1.jsonl"}


def prompts_hash(prompts: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class ProbeSet:
    name: str
    version: str
    source: str  # "builtin" or the file path given
    prompts: tuple[str, ...]
    full_hash: str  # hash of the whole set as loaded
    n_total: int

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
                        self.full_hash, self.n_total)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "hash": self.hash,
            "full_set_hash": self.full_hash,
            "n": len(self.prompts),
            "n_total": self.n_total,
        }


def builtin_names() -> list[str]:
    return sorted(BUILTIN)


def load_probe_set(spec: str) -> ProbeSet:
    """A built-in set by name, or a user file: ``.txt`` (one prompt per line) or ``.jsonl`` (``prompt`` field)."""
    if spec in BUILTIN:
        filename = BUILTIN[spec]
        text = resources.files("audit").joinpath("probesets").joinpath(filename).read_text(encoding="utf-8")
        prompts = _parse_jsonl(text, f"built-in probe set {spec}")
        version = filename.rsplit("-", 1)[-1].split(".")[0]
        return ProbeSet(spec, version, "builtin", prompts, prompts_hash(prompts), len(prompts))
    path = Path(spec).expanduser()
    if not path.exists():
        raise ProbeSetError(f"--probes {spec}: not a built-in set ({', '.join(builtin_names())}) and no such file")
    if path.is_dir():
        raise ProbeSetError(f"--probes {spec}: is a directory; give a .txt or .jsonl file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ProbeSetError(f"{spec}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise ProbeSetError(f"{spec}: cannot read: {exc.strerror}") from exc
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = _parse_jsonl(text, spec)
    elif suffix == ".txt":
        prompts = tuple(line.strip() for line in text.splitlines() if line.strip())
    else:
        raise ProbeSetError(f"{spec}: unknown probe file type {suffix or '(none)'}; use .txt or .jsonl")
    if not prompts:
        raise ProbeSetError(f"{spec}: no prompts in the file")
    return ProbeSet(path.stem, "file", str(path), prompts, prompts_hash(prompts), len(prompts))


def _parse_jsonl(text: str, where: str) -> tuple[str, ...]:
    prompts = []
    for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeSetError(f"{where}: line {lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str):
            raise ProbeSetError(f"{where}: line {lineno}: expected an object with a string \"prompt\" field")
        if not obj["prompt"].strip():
            raise ProbeSetError(f"{where}: line {lineno}: empty prompt")
        prompts.append(obj["prompt"])
    if not prompts:
        raise ProbeSetError(f"{where}: no prompts in the file")
    return tuple(prompts)
