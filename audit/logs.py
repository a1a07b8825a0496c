"""Logged teacher outputs (``--teacher-logs``) and fresh ones for the same prompts (``--teacher-fresh``).

A log is JSONL, one ``{"prompt": ..., "completion": ...}`` object per line (other keys are ignored).
Logged and fresh outputs are paired by prompt: the k-th logged answer to a prompt with the k-th fresh
answer to the same prompt. Pairing is the point: the membership test compares the student's loss on
two answers to the *same* prompt, which are exchangeable unless the student trained on one of them.
Unpaired member/non-member sets would measure a shift between the two sets' prompts instead.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from audit.errors import UsageError


@dataclass(frozen=True)
class LoggedOutput:
    """One teacher answer: the prompt, the completion, and the file line it came from (0: made here)."""

    prompt: str
    completion: str
    line: int = 0


@dataclass(frozen=True)
class LogPairs:
    logged: tuple[LoggedOutput, ...]
    fresh: tuple[LoggedOutput, ...]  # fresh[i] answers the same prompt as logged[i]
    unpaired_logged: int
    unpaired_fresh: int
    fresh_source: str  # the file, or how the fresh answers were sampled

    def to_dict(self) -> dict[str, object]:
        return {
            "pairs": len(self.logged),
            "unpaired_logged": self.unpaired_logged,
            "unpaired_fresh": self.unpaired_fresh,
            "fresh_source": self.fresh_source,
            "logged_hash": outputs_hash(self.logged),
            "fresh_hash": outputs_hash(self.fresh),
        }


def outputs_hash(outputs: Sequence[LoggedOutput]) -> str:
    data = json.dumps([[o.prompt, o.completion] for o in outputs], ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


def read_jsonl(path: Path, flag: str) -> tuple[str, bytes]:
    """A user's JSONL file as text (a leading byte-order mark dropped) and as the bytes read, or one error
    line naming the flag and the file: missing, a directory, unreadable, not UTF-8."""
    if not path.exists():
        raise UsageError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory, expected a JSONL file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot read: {exc.strerror}") from None
    try:
        return data.decode("utf-8-sig"), data
    except UnicodeDecodeError as exc:
        raise UsageError(f"{flag} {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_outputs(path: Path, flag: str) -> tuple[LoggedOutput, ...]:
    """Read a JSONL file of prompt/completion objects; every problem is one error naming file and line."""
    text, _ = read_jsonl(path, flag)
    out = []
    for number, raw in enumerate(text.split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{path}:{number}: expected a JSON object with \"prompt\" and \"completion\"")
        missing = [k for k in ("prompt", "completion") if not isinstance(obj.get(k), str)]
        if missing:
            got = ", ".join(sorted(obj)) or "none"
            raise UsageError(
                f"{path}:{number}: needs string fields \"prompt\" and \"completion\" "
                f"({' and '.join(repr(m) for m in missing)} missing or not a string; keys: {got})"
            )
        out.append(LoggedOutput(obj["prompt"], obj["completion"], number))
    if not out:
        raise UsageError(f"{flag} {path}: no logged outputs (the file is empty)")
    return tuple(out)


def pair_outputs(logged: Sequence[LoggedOutput], fresh: Sequence[LoggedOutput], fresh_source: str) -> LogPairs:
    """Pair the k-th logged and the k-th fresh answer to each prompt; refuse when no prompt is shared."""
    by_prompt: dict[str, list[LoggedOutput]] = defaultdict(list)
    for f in fresh:
        by_prompt[f.prompt].append(f)
    seen: dict[str, int] = defaultdict(int)
    pairs_l, pairs_f = [], []
    for item in logged:
        k = seen[item.prompt]
        seen[item.prompt] += 1
        candidates = by_prompt.get(item.prompt, [])
        if k < len(candidates):
            pairs_l.append(item)
            pairs_f.append(candidates[k])
    if not pairs_l:
        raise UsageError(
            "the logged and the fresh teacher outputs share no prompt: the membership test compares two answers "
            "to the same prompt (unpaired member and non-member sets measure a difference between prompt sets, "
            "not membership); sample the fresh outputs for the logged prompts"
        )
    return LogPairs(tuple(pairs_l), tuple(pairs_f), len(logged) - len(pairs_l), len(fresh) - len(pairs_f), fresh_source)
