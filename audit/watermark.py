"""A green-list text watermark (the teacher's side) and its exact test, for auditing radioactivity.

Scheme (Kirchenbauer et al. 2023, "A Watermark for Large Language Models"): for every context (the
previous ``context_width`` token ids) a pseudo-random "green" subset of the vocabulary is fixed by a
secret key; generation adds ``delta`` to the green logits, so watermarked text holds more green tokens
than the fraction ``gamma`` chance gives. Sander et al. 2024 ("Watermarking Makes Language Models
Radioactive") showed that a student trained on such text inherits the bias: its own predictions lean
green. Their test, used here, is exact only if each (context, token) tuple is scored once (repeated
tuples are not independent draws: a repeated sentence would count its luck many times) and tuples that
occur in the input the model saw are dropped (a model that copies its prompt copies its green tokens).

Each vocabulary entry is green independently with probability ``gamma`` (a uniform draw below gamma),
not a fixed-size green list, so under "the model never saw text watermarked with this key" every distinct
scored tuple is green with probability exactly ``gamma``, independently of the others: the number of
green tuples is Binomial(n, gamma), and :func:`score_tokens` gives the exact one-sided binomial p-value.

Why not transformers' ``WatermarkingConfig`` / ``WatermarkDetector`` (read in transformers 5.24,
``generation/logits_process.py`` and ``generation/watermarking.py``)?

* The key is one integer (``hashing_key``, default 15485863, public). With the default "lefthash"
  scheme the generator seed is ``hashing_key * input_seq[-1]`` (only the last token, even when
  ``context_width`` > 1) and the green list is ``torch.randperm(vocab_size)[:int(vocab_size * ratio)]``
  from a torch generator on the generation device, so the list depends on the device's RNG, and a known
  green list for one context reveals the integer key by a search over that key space.
  Here the key is 32 random bytes, and contexts are hashed with sha256 into a numpy Philox generator,
  whose stream is the same on every platform.
* A fixed-size green list (``int(V * ratio)`` ids) makes membership of different tokens dependent, so
  counts are not binomial; ``WatermarkDetector`` scores with a z-test (normal approximation), not an
  exact test.
* ``WatermarkDetector`` scores the n-grams of the given ``input_ids`` only. It can count each n-gram once
  per passage (``ignore_repeated_ngrams``, off by default) but not once across passages, and it cannot
  drop tuples present in a prompt or input. Reading mode scores tuples that are not in any text (a
  context from the text, the student's own top-1 prediction as the token), which needs the green list as
  a function of (context, token); transformers has that only as the private
  ``WatermarkLogitsProcessor._get_greenlist_ids``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from distill_audit import fingerprint as fp
from distill_audit.backends.base import ModelAdapter
from distill_audit.errors import UsageError
from distill_audit.logs import BadJSON, LoggedOutput, outputs_hash, parse_json, shown

if TYPE_CHECKING:  # torch is imported only where text is generated
    from distill_audit.decoding import LogitsHook

log = logging.getLogger(__name__)

KEY_VERSION = 1
KEY_FORMAT = "distill-audit watermark key"
SCHEME = "green list, independent per token (Kirchenbauer et al. 2023); Philox seeded by sha256(secret || context ids)"
SECRET_BYTES = 32
MAX_CONTEXT_WIDTH = 16
MAX_KEY_FILE_BYTES = 65536

Pair = tuple[int, ...]  # (context id 1, ..., context id w, token id)


@dataclass(frozen=True)
class WatermarkKey:
    """A private watermark key. ``secret`` is never shown (not in repr, results, logs or errors)."""

    secret: bytes = field(repr=False)
    vocab_size: int
    tokenizer_sha256: str  # audit.fingerprint.tokenizer_fingerprint of the tokenizer the ids belong to
    gamma: float = 0.25  # the chance that a token is green in a given context
    delta: float = 2.0  # logit bias added to green tokens when generating
    context_width: int = 1  # previous tokens that seed the green list
    version: int = KEY_VERSION

    @property
    def fingerprint(self) -> str:
        """sha256 of the secret: a commitment to the key, safe to publish (the secret has 256 random bits)."""
        return hashlib.sha256(self.secret).hexdigest()

    def public(self) -> dict[str, Any]:
        """Everything about the key except the secret: what results record."""
        return {
            "fingerprint": self.fingerprint,
            "gamma": self.gamma,
            "delta": self.delta,
            "context_width": self.context_width,
            "vocab_size": self.vocab_size,
            "tokenizer_sha256": self.tokenizer_sha256,
            "version": self.version,
        }


def _check_settings(gamma: Any, delta: Any, context_width: Any, where: str, dashes: str = "") -> None:
    """``where``: what to name first (a key file); ``dashes``: "--" when the values came from command-line flags."""
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 < float(gamma) < 1.0:
        raise UsageError(f"{where}{dashes}gamma (the green fraction) must be a number between 0 and 1, got {gamma!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (math.isfinite(delta) and delta > 0):
        raise UsageError(f"{where}{dashes}delta (the green logit bias) must be a positive number, got {delta!r}")
    if isinstance(context_width, bool) or not isinstance(context_width, int) or not 1 <= context_width <= MAX_CONTEXT_WIDTH:
        name = "--context-width" if dashes else "context width"
        raise UsageError(f"{where}{name} must be a whole number from 1 to {MAX_CONTEXT_WIDTH}, got {context_width!r}")


def new_key(tokenizer: Any, gamma: float = 0.25, delta: float = 2.0, context_width: int = 1) -> WatermarkKey:
    """A fresh key for text in ``tokenizer``'s ids, with a secret from the operating system's CSPRNG."""
    _check_settings(gamma, delta, context_width, "", dashes="--")
    return WatermarkKey(secret=secrets.token_bytes(SECRET_BYTES), vocab_size=len(tokenizer),
                        tokenizer_sha256=fp.tokenizer_fingerprint(tokenizer), gamma=float(gamma),
                        delta=float(delta), context_width=int(context_width))


def write_key(key: WatermarkKey, path: Path | str) -> None:
    """Create the key file readable by its owner only (mode 0600); an existing file is never overwritten."""
    path = Path(path)
    data = {"format": KEY_FORMAT, "version": key.version, "scheme": SCHEME, "secret": key.secret.hex(),
            "gamma": key.gamma, "delta": key.delta, "context_width": key.context_width,
            "vocab_size": key.vocab_size, "tokenizer_sha256": key.tokenizer_sha256}
    if path.parent and not path.parent.exists():
        raise UsageError(f"--key-file {path}: the directory {path.parent} does not exist")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"--key-file {path}: already exists; refusing to overwrite a watermark key "
                         "(text watermarked with it could no longer be detected)") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=1) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


_FIELDS: dict[str, tuple[type, ...]] = {
    "version": (int,), "secret": (str,), "gamma": (int, float), "delta": (int, float),
    "context_width": (int,), "vocab_size": (int,), "tokenizer_sha256": (str,),
}
MAX_VOCAB_SIZE = 1 << 24  # far above any tokenizer (the largest have about 256K entries); a green list is this long


def read_key(path: Path | str, flag: str = "--key-file") -> WatermarkKey:
    """Read and check a key file; every problem is one line naming the file, never showing the secret."""
    path = Path(path)
    where = f"{flag} {shown(path)}"
    raw, mode = _key_bytes(path, where)
    data = _key_object(raw, where)
    _check_key_fields(data, where)
    if os.name == "posix" and mode & 0o077:
        log.warning("%s: the key file is readable by other users; make it private (chmod 600)", where)
    return WatermarkKey(secret=bytes.fromhex(data["secret"]), vocab_size=data["vocab_size"],
                        tokenizer_sha256=data["tokenizer_sha256"], gamma=float(data["gamma"]),
                        delta=float(data["delta"]), context_width=data["context_width"], version=data["version"])


def _key_bytes(path: Path, where: str) -> tuple[bytes, int]:
    """The file's bytes (at most one more than a key file may hold, whatever the file is) and its mode."""
    try:
        if path.is_dir():
            raise UsageError(f"{where}: is a directory, expected a watermark key file")
        with path.open("rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            raw = fh.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{where}: is a directory, expected a watermark key file") from None
    except OSError as exc:
        raise UsageError(f"{where}: cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_KEY_FILE_BYTES:  # a model or data file given by mistake: do not read it all
        raise UsageError(f"{where}: not a watermark key file (over {MAX_KEY_FILE_BYTES} bytes; a key file is under 1 KB)")
    return raw, mode


def _key_object(raw: bytes, where: str) -> dict[str, Any]:
    """The key file's JSON object (a leading byte-order mark allowed), or one error line."""
    try:
        data = parse_json(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, BadJSON):
        raise UsageError(f"{where}: not a watermark key file (not JSON); "
                         "make one with `distill-audit watermark keygen`") from None
    if not isinstance(data, dict):
        raise UsageError(f"{where}: not a watermark key file (expected a JSON object)")
    return data


def _as_float(value: int | float) -> float:
    """A JSON number as a float; an integer beyond float's range is infinite (and so refused by the checks)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _check_key_fields(data: dict[str, Any], where: str) -> None:
    missing = [name for name in _FIELDS if name not in data]
    if missing:
        raise UsageError(f"{where}: not a complete watermark key file (missing field {', '.join(repr(m) for m in missing)})")
    for name, types in _FIELDS.items():
        if isinstance(data[name], bool) or not isinstance(data[name], types):
            kind = "a string" if types == (str,) else "a whole number" if types == (int,) else "a number"
            raise UsageError(f"{where}: field {name!r} must be {kind}")
    if data["version"] != KEY_VERSION:
        shown_version = data["version"] if abs(data["version"]) < 10**6 else "(out of range)"
        raise UsageError(f"{where}: key file version {shown_version}; this distill-audit reads version {KEY_VERSION}")
    secret_hex = data["secret"]
    if len(secret_hex) != 2 * SECRET_BYTES or any(c not in "0123456789abcdefABCDEF" for c in secret_hex):
        raise UsageError(f"{where}: field 'secret' must be {2 * SECRET_BYTES} hexadecimal digits")
    _check_settings(_as_float(data["gamma"]), _as_float(data["delta"]), data["context_width"], f"{where}: ")
    if not 2 <= data["vocab_size"] <= MAX_VOCAB_SIZE:
        shown_size = data["vocab_size"] if abs(data["vocab_size"]) < 10**12 else "(out of range)"
        raise UsageError(f"{where}: field 'vocab_size' must be from 2 to {MAX_VOCAB_SIZE}, got {shown_size}")
    sha = data["tokenizer_sha256"]
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise UsageError(f"{where}: field 'tokenizer_sha256' must be a sha256 (64 lower-case hexadecimal digits)")


# -- the green list ------------------------------------------------------------------------------------


def green_mask(key: WatermarkKey, context_ids: Sequence[int]) -> np.ndarray:
    """The green tokens after ``context_ids`` (the last ``context_width`` ids): bool ``[vocab_size]``.

    A Philox stream keyed by sha256(secret || ids as little-endian int64) decides each token by one uniform
    draw below gamma, so tokens are green independently, identically on every platform."""
    context = [int(i) for i in context_ids][-key.context_width :]
    digest = hashlib.sha256(key.secret + np.asarray(context, dtype="<i8").tobytes()).digest()
    rng = np.random.Generator(np.random.Philox(key=int.from_bytes(digest[:16], "little")))
    return rng.random(key.vocab_size) < key.gamma


def is_green(key: WatermarkKey, context_ids: Sequence[int], token: int) -> bool:
    return 0 <= token < key.vocab_size and bool(green_mask(key, context_ids)[token])


class GreenLists:
    """:func:`green_mask` with a bounded memo, for generation and scoring that revisit contexts."""

    def __init__(self, key: WatermarkKey, cache_size: int = 4096):
        self.key = key
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self._size = cache_size

    def mask(self, context: Sequence[int]) -> np.ndarray:
        ctx = tuple(int(i) for i in context[-self.key.context_width :])
        hit = self._cache.get(ctx)
        if hit is None:
            hit = green_mask(self.key, ctx)
            self._cache[ctx] = hit
            if len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(ctx)
        return hit


# -- watermarked generation -------------------------------------------------------------------------------


def watermark_hook(key: WatermarkKey) -> LogitsHook:
    """A :data:`audit.decoding.LogitsHook` adding ``delta`` to each row's green logits."""
    import torch

    lists = GreenLists(key)

    def hook(ids: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        width = min(logits.shape[-1], key.vocab_size)  # a model may have more output rows than the tokenizer ids
        rows = ids[:, -key.context_width :].tolist()
        masks = np.stack([lists.mask(row)[:width] for row in rows])
        bias = torch.zeros_like(logits)
        bias[:, :width] = torch.from_numpy(masks).to(logits.device, logits.dtype) * key.delta
        return logits + bias

    return hook


def generate_watermarked(model: Any, tokenizer: Any, key: WatermarkKey, prompts: Sequence[str], max_new_tokens: int,
                         seed: int, temperature: float = 1.0, batch_size: int = 64,
                         on_batch: Callable[[int], Any] | None = None) -> list[str]:
    """Seeded sampled continuations of ``prompts`` carrying the watermark (the text after each prompt).

    The context of each step is the previous ``context_width`` ids, prompt tokens included. Decoding is
    :func:`audit.decoding.decode`'s with :func:`watermark_hook`, on whatever device ``model`` is on, one call
    per batch of ``batch_size`` prompts (``temperature`` 0: greedy). Row ``i`` of the batch starting at
    ``start`` is seeded by ``row_seed(batch_seed, prompt, index=i)`` with ``batch_seed`` the first 8 bytes of
    sha256 of ``f"{seed}\0{start}"``, so a continuation depends only on (model, key, prompt, its position,
    seed, batch size): kept as written before decoding was shared, so earlier watermarked text is reproduced.
    ``on_batch(n)`` is told after each batch (a progress bar)."""
    from distill_audit.decoding import decode, row_seed

    if fp.tokenizer_fingerprint(tokenizer) != key.tokenizer_sha256:
        raise UsageError("the model's tokenizer is not the one the watermark key was made for "
                         f"(tokenizer sha256 {key.tokenizer_sha256[:12]}...)")
    model.eval()
    hook = watermark_hook(key)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        encoded = [list(ids) for ids in tokenizer(chunk, add_special_tokens=True)["input_ids"]]
        batch_seed = int.from_bytes(hashlib.sha256(f"{seed}\0{start}".encode()).digest()[:8], "little")
        seeds = [row_seed(batch_seed, prompt, index=i) for i, prompt in enumerate(chunk)] if temperature > 0 else None
        generations = decode(model, tokenizer, encoded, max_new_tokens, row_seeds=seeds, temperature=temperature,
                             logits_hook=hook)
        out.extend(g.text for g in generations)
        if on_batch is not None:
            on_batch(len(chunk))
    return out


# -- scoring -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredTokens:
    """The exact test over distinct scored (context, token) tuples."""

    n_scored: int  # distinct tuples scored
    n_green: int
    green_fraction: float  # nan when nothing was scored
    p_value: float  # exact one-sided binomial: P(Binomial(n_scored, gamma) >= n_green)
    n_duplicates: int  # tuples dropped because an identical tuple was already scored
    n_in_prompt: int  # tuples dropped because they occur in the prompts / the input text
    gamma: float

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Clopper-Pearson interval of the green fraction (exact, two-sided)."""
        if self.n_scored == 0:
            return (math.nan, math.nan)
        from scipy.stats import binomtest

        interval = binomtest(self.n_green, self.n_scored, self.gamma).proportion_ci(level, method="exact")
        return (float(interval.low), float(interval.high))

    def to_dict(self) -> dict[str, Any]:
        return {"n_scored": self.n_scored, "n_green": self.n_green, "green_fraction": self.green_fraction,
                "p_value": self.p_value, "n_duplicates": self.n_duplicates, "n_in_prompt": self.n_in_prompt,
                "gamma": self.gamma}


def binomial_p(n_green: int, n: int, gamma: float) -> float:
    """P(Binomial(n, gamma) >= n_green): exact; 1.0 when nothing was scored."""
    if n == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(n_green, n, gamma, alternative="greater").pvalue)


def pairs_of(ids: Sequence[int], width: int, start: int = 0) -> list[Pair]:
    """(context, token) tuples of ``ids`` for the tokens at ``max(start, width)`` onwards."""
    seq = [int(i) for i in ids]
    return [tuple(seq[i - width : i + 1]) for i in range(max(start, width), len(seq))]


def tuples_in(sequences: Iterable[Sequence[int]], width: int) -> set[Pair]:
    """Every (context, token) tuple occurring in ``sequences``: an exclusion set."""
    out: set[Pair] = set()
    for seq in sequences:
        out.update(pairs_of(seq, width))
    return out


def score_pairs(key: WatermarkKey, pairs: Iterable[Pair], exclude: set[Pair] | frozenset[Pair] = frozenset(),
                deduplicate: bool = True) -> ScoredTokens:
    """Count green among ``pairs`` in order: a pair in ``exclude`` is dropped, a pair already scored is dropped
    (``deduplicate=False`` exists only to show why it is needed: the p-value is then not valid)."""
    lists = GreenLists(key)
    seen: set[Pair] = set()
    n = green = dup = excluded = 0
    for pair in pairs:
        if pair in exclude:
            excluded += 1
            continue
        if deduplicate:
            if pair in seen:
                dup += 1
                continue
            seen.add(pair)
        token = pair[-1]
        n += 1
        if 0 <= token < key.vocab_size and lists.mask(pair[:-1])[token]:
            green += 1
    return ScoredTokens(n, green, green / n if n else math.nan, binomial_p(green, n, key.gamma), dup, excluded,
                        key.gamma)


def score_tokens(key: WatermarkKey, sequences: Iterable[Sequence[int]],
                 exclude: set[Pair] | frozenset[Pair] = frozenset(), deduplicate: bool = True) -> ScoredTokens:
    """Score every token of ``sequences`` (each a list of ids; the first ``context_width`` only give context)."""
    w = key.context_width
    return score_pairs(key, (p for seq in sequences for p in pairs_of(seq, w)), exclude, deduplicate)


def encode(tokenizer: Any, text: str) -> list[int]:
    """Ids as generation saw them: with the tokenizer's special tokens (<s>), as the audit's backends encode."""
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]


def completion_pairs(tokenizer: Any, prompt: str, completion: str, width: int) -> tuple[list[Pair], list[int]]:
    """The (context, token) tuples of the completion's tokens in prompt + completion, and the prompt's ids.

    Completion tokens are those after the longest common prefix of the two encodings, so a token that merges
    across the boundary counts as completion; contexts may reach into the prompt, as in generation."""
    full, head = encode(tokenizer, prompt + completion), encode(tokenizer, prompt)
    common = 0
    while common < min(len(full), len(head)) and full[common] == head[common]:
        common += 1
    return pairs_of(full, width, start=common), head


def score_texts(key: WatermarkKey, tokenizer: Any, texts: Sequence[LoggedOutput]) -> ScoredTokens:
    """Does this teacher text carry the watermark? Scores the completions; tuples found in any prompt are dropped."""
    pairs: list[Pair] = []
    prompts: list[list[int]] = []
    for item in texts:
        scored, head = completion_pairs(tokenizer, item.prompt, item.completion, key.context_width)
        pairs.extend(scored)
        prompts.append(head)
    return score_pairs(key, pairs, tuples_in(prompts, key.context_width))


# -- what an audit is given ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatermarkInputs:
    """The watermark part of an audit: the key and, optionally, watermarked teacher texts (reading mode)."""

    key: WatermarkKey
    texts: tuple[LoggedOutput, ...] | None = None
    texts_source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key.public()}
        if self.texts is not None:
            out["texts"] = {"n": len(self.texts), "sha256": outputs_hash(self.texts), "source": self.texts_source}
        return out


def teacher_tokenizer(adapter: ModelAdapter) -> Any:
    """A tokenizer object for the teacher's ids: an HF model's own, or the local copy a remote or transcript
    teacher was given (``--teacher-tokenizer``); None when there is none."""
    return adapter.local_tokenizer()
