"""Batched, cached inference shared by every detector.

Requests are de-duplicated, looked up in the cache, sorted by length, packed into batches under a
token budget (padded tokens count), computed, committed to the cache batch by batch, and returned in
the caller's order. An out-of-memory error halves the batch and retries, and lowers the budget for
the rest of the run.

Remote backends (``streams_results``: an HTTP API) get every missing request at once, limit their own
concurrency, and hand each answer back as it arrives; the engine commits it to the cache there and then,
so an audit killed mid-way loses no answer already received and a restart re-sends none.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
from tqdm import tqdm

from distill_audit.backends.base import (
    SPAN_POOLING,
    AdapterWrapper,
    GenerateParams,
    Generation,
    ModelAdapter,
    ScoredText,
)
from distill_audit.cache import InferenceCache, pack_arrays, request_key, unpack_arrays
from distill_audit.errors import AuditError, CapabilityError, InvalidAnswerError, ProbeTooLongError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class EngineStats:
    """Counts for one run: how much was asked, how much the cache answered, how much was computed."""

    requested: int = 0
    cache_hits: int = 0
    computed: int = 0
    batches: int = 0
    oom_retries: int = 0
    cache_corrupt: int = 0  # cached values that failed their checksum or did not read back: recomputed
    cache_expired: int = 0  # cached API answers older than their lifetime: asked again

    def to_dict(self) -> dict[str, int]:
        return dict(vars(self))


UNLABELLED = "other"  # work asked for outside any labelled stage (the runner labels every stage it runs)


@dataclass
class Usage:
    """Inference for one model on behalf of one detector (or stage): what was asked, what the cache answered,
    what was computed and what computing it cost. ``forward_passes``: a local model's forward passes; a backend
    that does not count them (an API, a transcript) counts one per request it answered. ``tokens_scored``: tokens
    of the texts computed by score and hidden-state requests; ``tokens_generated``: new tokens of the computed
    generations; ``seconds``: wall time of the computing (cache look-ups excluded)."""

    requests: int = 0
    cache_hits: int = 0
    computed: int = 0
    forward_passes: int = 0
    tokens_scored: int = 0
    tokens_generated: int = 0
    seconds: float = 0.0

    def add(self, other: Usage) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int | float]:
        out: dict[str, int | float] = dict(vars(self))
        out["seconds"] = round(self.seconds, 3)
        return out


@dataclass
class InferenceAccount:
    """Inference per (model name, detector or stage): where the work of an audit went."""

    rows: dict[tuple[str, str], Usage] = field(default_factory=dict)

    def charge(self, model: str, detector: str) -> Usage:
        return self.rows.setdefault((model, detector), Usage())

    def _by(self, index: int) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        for key, usage in self.rows.items():
            out.setdefault(key[index], Usage()).add(usage)
        return out

    def by_model(self) -> dict[str, Usage]:
        return self._by(0)

    def by_detector(self) -> dict[str, Usage]:
        return self._by(1)

    def total(self) -> Usage:
        out = Usage()
        for usage in self.rows.values():
            out.add(usage)
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "by_model": {name: u.to_dict() for name, u in self.by_model().items()},
            "by_detector": {name: u.to_dict() for name, u in self.by_detector().items()},
            "by_model_and_detector": [dict(model=m, detector=d, **u.to_dict()) for (m, d), u in self.rows.items()],
        }


def counted_forward_passes(adapter: ModelAdapter) -> int | None:
    """The forward passes a local backend has counted so far (through any wrappers), or None where it counts none."""
    while isinstance(adapter, AdapterWrapper):
        adapter = adapter.inner
    count = getattr(adapter, "forward_passes", None)
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _tokens(value: object) -> tuple[int, int]:
    """(tokens scored, tokens generated) of one computed answer."""
    if isinstance(value, ScoredText):
        return value.n_tokens, 0
    if isinstance(value, Generation):
        return 0, int(len(value.token_ids))
    if isinstance(value, np.ndarray) and value.ndim == 3:  # hidden states: [layers, tokens (or words), d_model]
        return int(value.shape[1]), 0
    return 0, 0


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_types: tuple[type[BaseException], ...] = (torch.cuda.OutOfMemoryError, MemoryError)
    if isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def default_token_budget(devices: Sequence[str], dtypes: Sequence[str] = ()) -> int:
    """Padded tokens per batch. On a CPU in float32, batches whose activations stay in cache run fastest (measured
    with bench/throughput.py); in 16-bit (AMX, AVX512-BF16) larger matrices keep the matrix units busy: reading an
    audit's answers, 4096 ran 1.24x faster than 1024 in bfloat16 on 2 cores, and no faster in float32. A GPU wants
    large batches to fill its cores."""
    if any(d.startswith(("cuda", "auto")) for d in devices):
        return 16384
    return 4096 if dtypes and all(d in ("bfloat16", "float16") for d in dtypes) else 1024


def default_generate_budget(devices: Sequence[str]) -> int:
    """Tokens (prompt and new tokens, padded) per generation batch. A decode step reads every weight of the model for
    one token per row, so on a CPU more rows per step cost little more until the KV cache outgrows the caches
    (measured with bench/audit_cost.py); a GPU's scoring budget already fills it."""
    return 16384 if any(d.startswith(("cuda", "auto")) for d in devices) else 8192


def pack_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, so that rows x longest row <= token_budget."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        if current and (len(current) + 1) * width > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pack_shared_batches(texts: Sequence[str], lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into batches for a backend that shares beginnings (:attr:`ModelAdapter.shares_prefixes`):
    texts in sorted order, so those that begin alike (one probe read with several answers) are neighbours and land in
    one batch. A batch's cost is estimated as the tokens of the texts that begin a run of their own, plus its rows
    times the most tokens a row has beyond the beginning it shares with the text before it (from their common
    characters); batches stay within ``token_budget`` of that cost."""
    order = sorted(range(len(texts)), key=lambda i: (texts[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    starts = widest = 0
    previous = ""
    for i in order:
        text = texts[i]
        common = len(os.path.commonprefix([previous, text])) if previous else 0
        own = max(1, math.ceil(lengths[i] * (1 - common / max(len(text), 1))))
        begins_run = 2 * own > lengths[i]
        cost = (starts + (lengths[i] if begins_run else 0)) + (len(current) + 1) * max(widest, 1 if begins_run else own)
        if current and cost > token_budget:
            batches.append(current)
            current, starts, widest, begins_run = [], 0, 0, True
        current.append(i)
        if begins_run:
            starts += lengths[i]
        else:
            widest = max(widest, own)
        previous = text
    if current:
        batches.append(current)
    return batches


def _score_to_arrays(s: ScoredText) -> dict[str, np.ndarray]:
    return {
        "token_ids": s.token_ids,
        "offsets": s.offsets,
        "target_logprob": s.target_logprob,
        "topk_ids": s.topk_ids,
        "topk_logprobs": s.topk_logprobs,
        "entropy": s.entropy,
        "logprob_var": s.logprob_var,
    }


def _gen_to_arrays(g: Generation) -> dict[str, np.ndarray]:
    return {
        "text": np.asarray(g.text),
        "token_ids": g.token_ids,
        "token_logprobs": g.token_logprobs,
        "topk_ids": g.topk_ids,
        "topk_logprobs": g.topk_logprobs,
    }


def _gen_from_arrays(a: Mapping[str, np.ndarray]) -> Generation:
    return Generation(
        text=str(a["text"]),
        token_ids=a["token_ids"],
        token_logprobs=a["token_logprobs"],
        topk_ids=a["topk_ids"],
        topk_logprobs=a["topk_logprobs"],
    )


class Engine:
    """Batched, cached inference. ``score_top_k`` is how many alternatives every scoring pass keeps, so
    one forward pass serves every detector that scores the same (model, text)."""

    def __init__(
        self,
        cache: InferenceCache,
        token_budget: int = 8192,
        score_top_k: int = 10,
        progress: bool | None = None,
        remote_max_age: float | None = None,
        generate_budget: int | None = None,
    ):
        if token_budget < 1 or (generate_budget is not None and generate_budget < 1):
            raise AuditError("token budget must be at least 1")
        self.cache = cache
        self.token_budget = token_budget
        # tokens per generation batch (None: the scoring budget); lowered on its own when generation runs out of memory
        self.generate_budget = generate_budget or token_budget
        self.score_top_k = score_top_k
        self.progress = progress  # None: tqdm decides (off when stderr is not a terminal)
        # seconds a cached answer of a remote API is trusted (None: for ever); local models are content-
        # addressed, so their cached answers never go stale
        self.remote_max_age = remote_max_age
        self.stats = EngineStats()
        self.account = InferenceAccount()
        self._task: str | None = None  # the detector (or stage) the work is done for
        self._model_names: dict[int, str] = {}  # id(adapter) -> the audit's name for the model
        self._memo: dict[str, object] = {}
        self._derived: dict[tuple[object, ...], object] = {}

    @contextlib.contextmanager
    def working_for(self, label: str) -> Iterator[None]:
        """Charge the work asked for inside this block to ``label`` (a detector's name, or a stage such as
        "negative-controls"). Blocks nest; the outermost label is charged, so the detectors the negative controls run
        again count under "negative-controls"."""
        outer = self._task
        if outer is None:
            self._task = label
        try:
            yield
        finally:
            self._task = outer

    def name_model(self, adapter: ModelAdapter, name: str) -> None:
        """The name the account gives the work of ``adapter`` (teacher, student, reference-1, ...; default: the
        adapter's own name)."""
        self._model_names[id(adapter)] = name

    def _usage(self, adapter: ModelAdapter) -> Usage:
        model = self._model_names.get(id(adapter), adapter.name)
        return self.account.charge(model, self._task or UNLABELLED)

    def derived(self, key: tuple[object, ...], compute: Callable[[], T]) -> T:
        """A value computed from inference results, kept for the rest of this audit (e.g. per-answer membership
        scores that the negative controls ask for again). ``key`` must name everything the value depends on:
        the model's fingerprint and the inputs."""
        if key not in self._derived:
            self._derived[key] = compute()
        return self._derived[key]  # type: ignore[return-value]

    def stored(self, kind: str, key: Mapping[str, object], compute: Callable[[], T],
               to_arrays: Callable[[T], Mapping[str, np.ndarray]], from_arrays: Callable[[dict[str, np.ndarray]], T]) -> T:
        """A costly statistic computed from the models (not inference: e.g. a permutation test on their weights),
        kept in the inference cache under ``kind`` and ``key``, so a re-run from the cache does not compute it
        again. ``key`` must name everything the value depends on: the models' fingerprints, the parameters, the
        seed. A stored value that does not read back (``from_arrays`` raises ValueError, TypeError or KeyError) is
        computed again."""
        request = request_key("derived", kind, key, "")
        if request not in self._memo:
            blob = self.cache.get_many([request]).values.get(request)
            value: T | None = None
            if blob is not None:
                try:
                    value = from_arrays(unpack_arrays(blob))
                except (ValueError, TypeError, KeyError) as exc:
                    log.warning("cache: a stored %s did not read back (%s); computing it again", kind, exc)
                    self.stats.cache_corrupt += 1
            if value is None:
                value = compute()
                self.cache.put_many([(request, pack_arrays(to_arrays(value)))])
            self._memo[request] = value
        return self._memo[request]  # type: ignore[return-value]

    # -- public batch calls ------------------------------------------------------------------------
    def score(self, adapter: ModelAdapter, texts: Sequence[str]) -> list[ScoredText]:
        k = self.score_top_k
        return self._run(
            adapter,
            "score",
            {"top_k": k},
            texts,
            lengths=adapter.count_tokens,
            compute=lambda batch, **kw: adapter.score(batch, k, **kw),
            to_arrays=_score_to_arrays,
            from_arrays=lambda a: ScoredText(**a),
        )

    def generate(self, adapter: ModelAdapter, prompts: Sequence[str], params: GenerateParams) -> list[Generation]:
        extra = params.max_new_tokens
        return self._run(
            adapter,
            "generate",
            params.to_dict(),
            prompts,
            lengths=lambda batch: [n + extra for n in adapter.count_tokens(batch)],
            compute=lambda batch, **kw: adapter.generate(batch, params, **kw),
            to_arrays=_gen_to_arrays,
            from_arrays=_gen_from_arrays,
        )

    def hidden_states(self, adapter: ModelAdapter, texts: Sequence[str], layers: Sequence[int],
                      words: str | None = None) -> list[np.ndarray]:
        """Per text, ``[layers, tokens, d]``; with ``words`` (a regular expression whose matches are a text's words),
        ``[layers, words, d]``, pooled in the backend (:func:`pool_spans`) before anything is cached: a large model's
        per-token states of every probe would take gigabytes of cache that no detector reads."""
        layer_list = [int(x) for x in layers]
        params: dict[str, object] = {"layers": layer_list}
        if words is not None:
            pattern = re.compile(words)
            params.update(words=words, pooling=SPAN_POOLING)

            def compute(batch: Sequence[str]) -> list[np.ndarray]:
                spans = [[(m.start(), m.end()) for m in pattern.finditer(t)] for t in batch]
                return adapter.hidden_states(batch, layer_list, spans)
        else:
            def compute(batch: Sequence[str]) -> list[np.ndarray]:
                return adapter.hidden_states(batch, layer_list)
        return self._run(
            adapter,
            "hidden",
            params,
            texts,
            lengths=adapter.count_tokens,
            compute=lambda batch, **kw: compute(batch),
            to_arrays=lambda h: {"h": h},
            from_arrays=lambda a: a["h"],
        )

    # -- machinery ---------------------------------------------------------------------------------
    def _run(
        self,
        adapter: ModelAdapter,
        kind: str,
        params: Mapping[str, object],
        inputs: Sequence[str],
        lengths: Callable[[Sequence[str]], list[int]],
        compute: Callable[..., Sequence[T]],
        to_arrays: Callable[[T], Mapping[str, np.ndarray]],
        from_arrays: Callable[[dict[str, np.ndarray]], T],
    ) -> list[T]:
        fingerprint = adapter.fingerprint
        model_id = fingerprint["model"] + (f"@{fingerprint['numerics']}" if fingerprint.get("numerics") else "")
        keys = [request_key(model_id, kind, params, text) for text in inputs]
        usage = self._usage(adapter)
        self.stats.requested += len(keys)
        usage.requests += len(keys)
        todo: dict[str, str] = {}
        for key, text in zip(keys, inputs):
            if key not in self._memo:
                todo.setdefault(key, text)
        if todo:
            remote = adapter.streams_results
            found = self.cache.get_many(todo, max_age=self.remote_max_age if remote else None)
            self.stats.cache_corrupt += found.corrupt
            self.stats.cache_expired += found.expired
            for key, blob in found.values.items():
                try:
                    value = from_arrays(unpack_arrays(blob))
                    check_answer(adapter.name, kind, value, todo[key])
                except (ValueError, TypeError, KeyError, InvalidAnswerError) as exc:
                    # a value that passed its checksum but does not read back as a valid answer (written by
                    # a damaged run or another version): recompute it rather than use it
                    log.warning("cache: an entry for %s did not read back (%s); recomputing it", adapter.name, exc)
                    self.stats.cache_corrupt += 1
                    continue
                self._memo[key] = value
                del todo[key]
        self.stats.cache_hits += len(keys) - len(todo)
        usage.cache_hits += len(keys) - len(todo)
        if todo:
            passes = counted_forward_passes(adapter)
            computed = self.stats.computed
            t0 = time.perf_counter()
            try:
                self._compute(adapter, kind, todo, lengths, compute, to_arrays, usage)
            finally:
                usage.seconds += time.perf_counter() - t0
                usage.computed += self.stats.computed - computed
                after = counted_forward_passes(adapter)
                # a backend without a counter (an API, a transcript): one request per answer it gave
                usage.forward_passes += (after - passes if after is not None and passes is not None
                                         else self.stats.computed - computed)
        return [self._memo[key] for key in keys]  # type: ignore[misc]

    def _compute(
        self,
        adapter: ModelAdapter,
        kind: str,
        todo: Mapping[str, str],
        lengths: Callable[[Sequence[str]], list[int]],
        compute: Callable[..., Sequence[T]],
        to_arrays: Callable[[T], Mapping[str, np.ndarray]],
        usage: Usage,
    ) -> None:
        todo_keys = list(todo)
        texts = [todo[k] for k in todo_keys]
        limit = adapter.context_length
        if adapter.streams_results:
            # a remote server checks its own context and refuses what does not fit, with its own message
            self._stream(adapter, kind, todo_keys, texts, compute, to_arrays, usage)
            return
        try:
            sizes = lengths(texts)
        except CapabilityError:
            if limit is not None:
                raise
            # a backend that cannot count its tokens (a transcript without a tokenizer) and has no context
            # limit: rough sizes serve for packing batches
            sizes = [len(t) // 4 + 1 for t in texts]
        if limit is not None:
            self._check_context(adapter, texts, sizes, limit)
        self._batched(adapter, kind, todo, todo_keys, texts, sizes, compute, to_arrays, usage)

    @staticmethod
    def _check_context(adapter: ModelAdapter, texts: Sequence[str], sizes: Sequence[int], limit: int) -> None:
        for text, size in zip(texts, sizes):
            if size > limit:
                preview = text[:60].replace("\n", " ")
                raise ProbeTooLongError(
                    f"{adapter.name}: input of {size} tokens (with the tokens to generate) is longer "
                    f"than its context of {limit}: {preview!r}... ; shorten or drop that prompt in the probe file "
                    "(distill-audit refuses rather than silently truncating)"
                )

    def _stream(self, adapter: ModelAdapter, kind: str, keys: list[str], texts: list[str],
                compute: Callable[..., Sequence[T]], to_arrays: Callable[[T], Mapping[str, np.ndarray]],
                usage: Usage) -> None:
        bar = tqdm(total=len(texts), desc=f"{kind} {adapter.name}", unit="request",
                   disable=(not self.progress) if self.progress is not None else None, leave=False)

        def commit(i: int, result: T) -> None:
            check_answer(adapter.name, kind, result, texts[i])
            self.cache.put_many([(keys[i], pack_arrays(to_arrays(result)))])
            self._memo[keys[i]] = result
            self.stats.computed += 1
            self._count_tokens(usage, result)
            bar.update(1)

        try:
            compute(texts, on_result=commit)
            self.stats.batches += 1
        finally:
            bar.close()

    def _batched(self, adapter: ModelAdapter, kind: str, todo: Mapping[str, str], todo_keys: list[str],
                 texts: list[str], sizes: list[int], compute: Callable[..., Sequence[T]],
                 to_arrays: Callable[[T], Mapping[str, np.ndarray]], usage: Usage) -> None:
        bar = tqdm(
            total=len(texts),
            desc=f"{kind} {adapter.name}",
            unit="text",
            disable=(not self.progress) if self.progress is not None else None,
            leave=False,
        )
        try:
            shared = kind == "score" and adapter.shares_prefixes
            budget = self.generate_budget if kind == "generate" else self.token_budget
            packed = pack_shared_batches(texts, sizes, budget) if shared else pack_batches(sizes, budget)
            queue = [[todo_keys[i] for i in batch] for batch in packed]
            size_of = dict(zip(todo_keys, sizes))
            while queue:
                batch = queue.pop(0)
                try:
                    results = compute([todo[k] for k in batch])
                except Exception as exc:
                    if not is_out_of_memory(exc) or len(batch) == 1:
                        raise
                    self.stats.oom_retries += 1
                    half = len(batch) // 2
                    lowered = max(1, min(budget, size_of[batch[0]] * half))
                    if kind == "generate":
                        self.generate_budget = budget = lowered
                    else:
                        self.token_budget = budget = lowered
                    log.warning("out of memory on %d rows; retrying in halves (%s budget now %d tokens)",
                                len(batch), "generation" if kind == "generate" else "batch", lowered)
                    _free_accelerator_memory()
                    queue[:0] = [batch[:half], batch[half:]]
                    continue
                for k, r in zip(batch, results):
                    check_answer(adapter.name, kind, r, todo[k])
                self.stats.batches += 1
                self.stats.computed += len(batch)
                self.cache.put_many((k, pack_arrays(to_arrays(r))) for k, r in zip(batch, results))
                for k, r in zip(batch, results):
                    self._memo[k] = r
                    if kind == "generate":
                        self._count_tokens(usage, r)
                    else:  # the tokens read, as the backend counted them to pack the batch
                        usage.tokens_scored += size_of[k]
                bar.update(len(batch))
        finally:
            bar.close()

    @staticmethod
    def _count_tokens(usage: Usage, value: object) -> None:
        scored, generated = _tokens(value)
        usage.tokens_scored += scored
        usage.tokens_generated += generated


def _count_bad(values: np.ndarray, allow_neg_inf: bool = False) -> int:
    bad = np.isnan(values) | (values == np.inf)
    if not allow_neg_inf:
        bad |= values == -np.inf
    return int(bad.sum())


def check_answer(model: str, kind: str, value: object, text: str) -> None:
    """Refuse an answer that cannot be evidence: non-finite or impossible log-probs, inconsistent lengths.

    Every answer passes here before it is cached or used, whichever backend produced it (an fp16 overflow in
    a local model, NaN from a server) and whether it was computed now or read back from the cache. By
    design the first token of a scored text has no prediction (NaN there), an API gives no entropy (all
    NaN), a transcript without log-probs gives none for its tokens (all NaN), and a row of top-k
    alternatives may end in -inf where a server returned fewer than k."""
    problems: list[str] = []
    if isinstance(value, ScoredText):
        n = value.n_tokens
        if not (len(value.offsets) == len(value.target_logprob) == len(value.topk_ids) == len(value.topk_logprobs)
                == len(value.entropy) == n) or len(value.logprob_var) not in (0, n):
            problems.append("arrays of different lengths")
        else:
            lp = value.target_logprob[1:]
            if _count_bad(lp):
                problems.append(f"{_count_bad(lp)} non-finite log-probs of {len(lp)}")
            elif len(lp) and float(np.max(lp)) > 1e-3:
                problems.append(f"a log-prob above 0 ({float(np.max(lp)):.3g})")
            if _count_bad(value.topk_logprobs[1:], allow_neg_inf=True):
                problems.append("non-finite top-k log-probs")
            for name, arr in (("entropy", value.entropy), ("log-prob variance", value.logprob_var)):
                rest = arr[1:]
                if len(rest) and not np.isnan(rest).all() and _count_bad(rest):
                    problems.append(f"non-finite {name}")
    elif isinstance(value, Generation):
        if len(value.token_logprobs) != len(value.token_ids) or len(value.topk_ids) != len(value.topk_logprobs):
            problems.append("arrays of different lengths")
        elif not np.isnan(value.token_logprobs).all() and _count_bad(value.token_logprobs):
            problems.append(f"{_count_bad(value.token_logprobs)} non-finite log-probs of {len(value.token_logprobs)}")
        elif len(value.token_logprobs) and float(np.nanmax(np.append(value.token_logprobs, -1.0))) > 1e-3:
            problems.append("a log-prob above 0")
        elif value.topk_logprobs.size and _count_bad(value.topk_logprobs, allow_neg_inf=True):
            problems.append("non-finite top-k log-probs")
    elif isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and _count_bad(value):
            problems.append(f"{_count_bad(value)} non-finite hidden-state values")
    if problems:
        preview = " ".join(text[:50].split())
        raise InvalidAnswerError(
            f"{model}: its {kind} answer for {preview!r} holds {'; '.join(problems)}; refusing to use it as "
            "evidence (a half-precision overflow? try --dtype float32; a server fault? check its transcript)")


def _free_accelerator_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
