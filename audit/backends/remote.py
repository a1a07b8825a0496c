"""What every model known only from the outside (an API, a transcript) shares.

Such a model has no weights to hash and usually no tokenizer we can see. Two things follow:

* its fingerprint names the endpoint (or the file's content), the model name and, for an API, what the
  server said about itself when connected; never a key, and it says plainly that the weights are unknown;
* token ids can be compared with another model's only through a local copy of its tokenizer that the
  user vouches for (``--teacher-tokenizer``). :class:`TokenMap` turns the token strings an API returns
  into that tokenizer's ids. Without one, the model's tokenizer fingerprint is unique to it, so detectors
  that compare token ids are skipped with the reason instead of comparing ids from different vocabularies.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from distill_audit import fingerprint as fp
from distill_audit.errors import ModelLoadError

log = logging.getLogger(__name__)

TOKEN_ID_PREFIX = "token_id:"  # vLLM's return_tokens_as_token_ids form
UNKNOWN_ID = -1  # a token string the local tokenizer cannot map; never equal to a real id


def remote_fingerprint(kind: str, location: str, model: str, tokenizer_fp: str | None,
                       discovery: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Identity of a remote model: backend kind, where it is, its name, its tokenizer when one is known, and
    what connecting to it found (``discovery``: the server's own description of the model, its routes and
    capabilities, recorded as the sha256 ``"discovery"``).

    The same endpoint, name and discovery give the same fingerprint on every run, so the inference cache
    answers a restarted audit; a server replaced behind the same URL that describes itself differently is
    another model to the cache. What the server runs behind an unchanged description can still change
    without notice; the request transcript is the evidence of what it answered."""
    seen = None
    if discovery is not None:
        canonical = json.dumps(discovery, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        seen = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    named = f"{kind}\0{location}\0{model}" + ("" if seen is None else f"\0{seen}")
    model_id = hashlib.sha256(named.encode()).hexdigest()
    out = {
        "model": hashlib.sha256(f"{model_id}\0{tokenizer_fp or ''}".encode()).hexdigest(),
        "weights": f"unknown ({kind}: weights not visible)",
        "tokenizer": tokenizer_fp or f"unknown:{model_id}",
        "format": kind,
    }
    if seen is not None:
        out["discovery"] = seen
    return out


class TokenMap:
    """Ids of a local tokenizer for the token strings an API returns (``"token_id:N"`` or the token's text)."""

    def __init__(self, tokenizer: Any, source: str = ""):
        self.tokenizer = tokenizer
        self.source = source
        self.fingerprint = fp.tokenizer_fingerprint(tokenizer)
        self._by_piece: dict[str, int] | None = None

    @classmethod
    def load(cls, path: str | Path, flag: str = "--tokenizer") -> "TokenMap":
        from transformers import AutoTokenizer

        where = Path(path)
        if not where.is_dir():
            raise ModelLoadError(f"{flag} {path}: not a directory with tokenizer files")
        try:
            tok = AutoTokenizer.from_pretrained(where, local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # the tokenizers library raises several unrelated types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelLoadError(f"{flag} {path}: cannot load a tokenizer: {first}") from exc
        return cls(tok, str(path))

    def _pieces(self) -> dict[str, int]:
        """Each id's text as it reads after other text (decoded after an anchor token, so SentencePiece's
        leading space survives). Pieces several ids share (byte fragments, duplicates) map to nothing."""
        if self._by_piece is None:
            tok = self.tokenizer
            anchor = (tok.encode("a", add_special_tokens=False) or [0])[0]
            head = tok.decode([anchor])
            special = set(getattr(tok, "all_special_ids", []) or [])
            seen: dict[str, int] = {}
            for i in range(len(tok)):
                if i in special:
                    continue
                text = tok.decode([anchor, i])
                piece = text[len(head):] if text.startswith(head) else tok.decode([i])
                seen[piece] = UNKNOWN_ID if piece in seen or "\ufffd" in piece else i
            self._by_piece = seen
        return self._by_piece

    def ids(self, tokens: Sequence[str]) -> np.ndarray:
        out = np.full(len(tokens), UNKNOWN_ID, dtype=np.int64)
        pieces: dict[str, int] | None = None
        for i, t in enumerate(tokens):
            sent = _sent_id(t)
            if sent is not None:
                out[i] = sent
                continue
            if pieces is None:
                pieces = self._pieces()
            out[i] = pieces.get(t, UNKNOWN_ID)
        return out

    def count(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])


def _sent_id(token: str) -> int | None:
    """The id in vLLM's ``token_id:N`` form, or None."""
    rest = token[len(TOKEN_ID_PREFIX):]
    # ASCII digits only (str.isdigit admits "²"), and few enough to fit an int64 id
    ok = token.startswith(TOKEN_ID_PREFIX) and rest.isascii() and rest.isdigit() and len(rest) <= 18
    return int(rest) if ok else None


def parse_token_ids(tokens: Sequence[str], token_map: TokenMap | None) -> np.ndarray:
    """Ids for API token strings: exact when the server sent ids, through the local tokenizer otherwise,
    and :data:`UNKNOWN_ID` where neither can tell."""
    if token_map is not None:
        return token_map.ids(tokens)
    sent = (_sent_id(t) for t in tokens)
    return np.array([UNKNOWN_ID if i is None else i for i in sent], dtype=np.int64)
