"""White-box lineage: evidence in the weights and the representations, when both models are open.

weight-lineage (teacher and student weights; no references): a student initialised from the teacher's
layers (DistilBERT/DistilGPT2 style: every other block copied, then trained) keeps a trace of them. A
freshly initialised network's hidden units are exchangeable: initialisation draws them i.i.d. and training
treats them alike, so under independence the *order* of a block's MLP units says nothing about the
teacher's. The statistic is the mean cosine between student unit k and teacher unit k (their rows of MLP
input weights, read in the shared residual basis), maximised over all block pairs of matching shape. The
p-value is exact: the student's units are permuted at random within each block, independently, the
maximum recomputed, and p = (1 + #{permuted max >= observed}) / (1 + B) (Zhu et al. 2025, "Independence
Tests for Language Models", permutation test). The same permutations give, for each block pair, a p-value
adjusted for all pairs (max-T), so the report can say which student block came from which teacher block.

representation-similarity (hidden states of every model; references): linear CKA between the teacher's
and a model's hidden states on the probe texts, every layer against every layer (the heat map in the
report). Tokenizers may differ, so the rows are *words*: a word's vector is the mean of the hidden states
of the tokens that overlap it. Each model (student and references alike) is compared at its own most
similar layer pair, then per probe text (CKA over that text's words) against the panel with the panel
test (a Wilcoxon signed-rank test, i.e. a permutation test over sign flips of per-text differences, with
the panel prediction test). Students trained with hidden-state losses (TinyBERT/MiniLM style) show it.

Both detectors can only add evidence *for* distillation: a student distilled from scratch by logits
inherits no weights, so neither detector's silence supports "not distilled" (their power check is left
empty, so the verdict never counts them as ruling distillation out).
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from distill_audit.backends.base import Capability, ModelAdapter
from distill_audit.detectors.base import (
    Available,
    Detector,
    DetectorContext,
    DetectorSkipped,
    Evidence,
    PlanInputs,
    PlannedRequest,
)
from distill_audit.detectors.panel import panel_evidence, suspects
from distill_audit.errors import AuditError
from distill_audit.probes import prompts_hash

# -- weight lineage --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightParams:
    permutations: int = 9999  # p-values down to 1e-4: small enough to survive Bonferroni over the detectors
    max_units: int = 512  # units compared per block (a seeded subset, the same indices in both models)
    margin: float = 0.05  # mean cosine of corresponding units counted as inherited


_PERMUTATION_BATCH = 1024  # permutations scored together (per block) by weight_lineage_test


def _unit_rows(mats: Sequence[np.ndarray], idx: np.ndarray | None) -> list[np.ndarray]:
    out = []
    for m in mats:
        rows = m if idx is None else m[idx]
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        out.append((rows / np.maximum(norms, 1e-12)).astype(np.float32))
    return out


def weight_lineage_test(teacher: Sequence[np.ndarray], student: Sequence[np.ndarray], rng: np.random.Generator,
                        permutations: int = 9999, max_units: int = 512) -> dict[str, Any]:
    """The exact permutation test on per-block MLP input weights ([units, d] each; pairs of equal shape).

    Returns the observed statistic per block pair, the global p-value, max-T adjusted p-values per pair, and
    the null maxima (for the power check)."""
    pairs = [(i, j) for i, s in enumerate(student) for j, t in enumerate(teacher) if s.shape == t.shape]
    if not pairs:
        return {"pairs": [], "p_value": math.nan}
    units = student[pairs[0][0]].shape[0]
    idx = None
    if units > max_units:
        idx = np.sort(rng.choice(units, size=max_units, replace=False))
        units = max_units
    s_rows = _unit_rows(student, idx)
    t_rows = _unit_rows(teacher, idx)
    # Cross-cosines G[i, j][a, b] = cos(student i unit a, teacher j unit b): a permutation of the student's units
    # only reorders rows, so every permuted statistic is a diagonal sum of these. Per student block they are laid
    # out as rows (a, b) of teacher blocks, so a permuted diagonal is one gather-and-sum of rows (an embedding bag).
    # float32 (the gather runs at memory speed, and float64 has no fast kernel): the observed statistic is the
    # identity permutation's sum through the same kernel, so observed and permuted values are computed alike.
    import torch

    arange = np.arange(units)
    blocks = sorted({a for a, _ in pairs})
    # drawn in the order of one permutation per block, permutation after permutation (the seeded sequence the test
    # has always used), all before scoring, so that each block's layout is then read for every permutation in turn
    # while it sits in the CPU's cache
    index_type = np.int16 if units <= np.iinfo(np.int16).max else np.int64
    perms = np.empty((permutations, len(blocks), units), dtype=index_type)
    for b in range(permutations):
        for k in range(len(blocks)):
            perms[b, k] = rng.permutation(units)
    observed: dict[tuple[int, int], float] = {}
    maxima = np.full(permutations, -np.inf)
    with torch.inference_mode():
        for k, i in enumerate(blocks):
            js = [j for a, j in pairs if a == i]
            teachers = torch.from_numpy(np.concatenate([t_rows[j] for j in js]))  # [teacher blocks x units, d]
            cos = (torch.from_numpy(s_rows[i]) @ teachers.T).view(units, len(js), units)  # [a, j, b]
            layout = cos.permute(0, 2, 1).reshape(units * units, len(js))  # row a * units + b: G[i, j][a, b] by j
            del cos
            identity = torch.nn.functional.embedding_bag(torch.from_numpy(arange * units + arange)[None], layout,
                                                         mode="sum")[0]
            for j, diagonal in zip(js, identity.tolist()):
                observed[(i, j)] = diagonal / units
            for start in range(0, permutations, _PERMUTATION_BATCH):
                chunk = perms[start : start + _PERMUTATION_BATCH, k].astype(np.int64) * units + arange
                sums = torch.nn.functional.embedding_bag(torch.from_numpy(chunk), layout, mode="sum").amax(dim=1)
                np.maximum(maxima[start : start + len(chunk)], sums.double().numpy() / units,
                           out=maxima[start : start + len(chunk)])
    best = max(observed.values())
    p = (1 + int(np.sum(maxima >= best))) / (1 + permutations)
    adjusted = {key: (1 + int(np.sum(maxima >= value))) / (1 + permutations) for key, value in observed.items()}
    return {"pairs": pairs, "observed": observed, "adjusted": adjusted, "p_value": p, "statistic": best,
            "null_maxima": maxima, "units": units, "unit_index": idx}


class WeightLineage(Detector):
    name = "weight-lineage"
    summary = "The student's MLP units line up, in order, with the teacher's: its weights were initialised from the teacher's"
    requires = {"teacher": frozenset({Capability.WEIGHTS}), "student": frozenset({Capability.WEIGHTS})}
    Params = WeightParams
    null = (
        "The student was not initialised from the teacher's weights: its MLP hidden units are exchangeable "
        "(random initialisation, training that treats units alike), so their order carries no information "
        "about the teacher's."
    )

    def unmet_by_models(self, models: Mapping[str, Sequence[ModelAdapter]], available: Available) -> str | None:
        teacher = [s.shape for a in models.get("teacher", ()) for s in _weights(a)]
        student = [s.shape for a in models.get("student", ()) for s in _weights(a)]
        if not teacher or not student:
            return "no MLP weights were recognised in the teacher or the student"
        if not set(teacher) & set(student):
            return ("no student block has MLP weights of the same shape as a teacher block (different width or "
                    "architecture); representation-similarity still applies")
        return None

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        return ()  # it reads the weights themselves, no inference

    def run(self, ctx: DetectorContext) -> Evidence:
        p: WeightParams = self.params
        teacher = _weights(ctx.teacher.adapter)
        student = _weights(ctx.student.adapter)
        t_fp, s_fp = ctx.teacher.adapter.fingerprint, ctx.student.adapter.fingerprint
        key = {"teacher": t_fp["model"], "student": s_fp["model"], "teacher_numerics": t_fp.get("numerics"),
               "student_numerics": s_fp.get("numerics"), "permutations": p.permutations, "max_units": p.max_units,
               "seed": ctx.seed, "rule": "weight-lineage-v2"}
        # the test takes a while on a real model (its cross-cosines and thousands of permutations), so its result
        # is kept in the cache: a re-run from the cache, and the negative controls of a later run, read it back
        res = ctx.engine.stored("weight-lineage", key,
                                lambda: weight_lineage_test(teacher, student, ctx.rng(self.name), p.permutations,
                                                            p.max_units),
                                _lineage_to_arrays, _lineage_from_arrays)
        rng = ctx.rng(f"{self.name}:bootstrap")
        observed, adjusted = res["observed"], res["adjusted"]
        best_pair = max(observed, key=observed.get)
        # 95% CI of the best pair's mean cosine: bootstrap over units
        i, j = best_pair
        s_rows = _unit_rows([student[i]], res["unit_index"])[0]
        t_rows = _unit_rows([teacher[j]], res["unit_index"])[0]
        per_unit = np.einsum("ad,ad->a", s_rows, t_rows).astype(np.float64)
        boots = [float(per_unit[rng.integers(0, per_unit.size, per_unit.size)].mean()) for _ in range(1000)]
        ci_low, ci_high = (float(x) for x in np.quantile(boots, [0.025, 0.975]))
        maxima = res["null_maxima"]
        lineage = []
        for si in sorted({a for a, _ in res["pairs"]}):
            cands = [(b, observed[(a, b)]) for a, b in res["pairs"] if a == si]
            tj, value = max(cands, key=lambda c: c[1])
            lineage.append({"student_block": si, "teacher_block": tj, "mean_cosine": round(value, 4),
                            "adjusted_p_value": adjusted[(si, tj)],
                            "inherited": adjusted[(si, tj)] < 0.05})
        return Evidence(
            detector=self.name,
            test=f"exact permutation test ({len(maxima)} random permutations of the student's units within each "
                 "block; statistic: the largest mean cosine of corresponding units over all block pairs)",
            null=self.null,
            statistic=float(res["statistic"]),
            statistic_name="max over block pairs of the mean cosine of unit k with unit k",
            p_value=float(res["p_value"]),
            effect_size=float(res["statistic"]),
            effect_size_name=f"mean cosine of corresponding MLP units, student block {i} vs teacher block {j}",
            ci_low=ci_low,
            ci_high=ci_high,
            ci_level=0.95,
            n=int(res["units"]),
            rules_out=False,  # no inherited weights does not mean not distilled
            margin=p.margin,
            planted_p_value=math.nan,
            details={
                "lineage": lineage,
                "block_pairs": len(res["pairs"]),
                "units_compared": int(res["units"]),
                "null_max_mean": float(maxima.mean()),
                "null_max_q99": float(np.quantile(maxima, 0.99)),
                "one_sided": "evidence for inherited weights only; silence does not support not-distilled",
            },
        )


def _lineage_to_arrays(res: Mapping[str, Any]) -> dict[str, np.ndarray]:
    pairs = list(res["observed"])
    return {
        "pairs": np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        "observed": np.asarray([res["observed"][k] for k in pairs], dtype=np.float64),
        "adjusted": np.asarray([res["adjusted"][k] for k in pairs], dtype=np.float64),
        "p_value": np.asarray(res["p_value"], dtype=np.float64),
        "statistic": np.asarray(res["statistic"], dtype=np.float64),
        "null_maxima": np.asarray(res["null_maxima"], dtype=np.float64),
        "units": np.asarray(res["units"], dtype=np.int64),
        "unit_index": np.asarray(res["unit_index"] if res["unit_index"] is not None else [], dtype=np.int64),
    }


def _lineage_from_arrays(a: Mapping[str, np.ndarray]) -> dict[str, Any]:
    pairs = [(int(i), int(j)) for i, j in a["pairs"]]
    observed, adjusted, maxima = a["observed"], a["adjusted"], a["null_maxima"]
    units, index = int(a["units"]), a["unit_index"]
    p_value, statistic = float(a["p_value"]), float(a["statistic"])
    if not pairs or len(observed) != len(pairs) or len(adjusted) != len(pairs) or maxima.ndim != 1 or not maxima.size:
        raise ValueError("a stored weight-lineage result with inconsistent lengths")
    if not (np.isfinite(observed).all() and np.isfinite(maxima).all() and 0 < p_value <= 1 and units > 0
            and index.size in (0, units) and statistic == float(observed.max())):
        raise ValueError("a stored weight-lineage result that is not a valid test result")
    return {"pairs": pairs, "observed": dict(zip(pairs, (float(x) for x in observed))),
            "adjusted": dict(zip(pairs, (float(x) for x in adjusted))), "p_value": p_value, "statistic": statistic,
            "null_maxima": maxima, "units": units, "unit_index": index if index.size else None}


def _weights(adapter: ModelAdapter) -> list[np.ndarray]:
    return list(adapter.mlp_weights()) if Capability.WEIGHTS in adapter.capabilities else []



# -- representation similarity ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CKAParams:
    max_layers: int = 8  # layers per model (evenly spaced, embeddings excluded)
    min_words: int = 4  # texts with fewer words give no per-text CKA
    min_texts: int = 2  # fewer usable texts than this: no spread across texts to test against, so no test
    margin: float = 0.05  # CKA excess over the closest reference counted as distillation


_WORD = re.compile(r"\S+")


def word_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in _WORD.finditer(text)]


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between [n, d1] and [n, d2], columns centred."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    xy = np.linalg.norm(y.T @ x) ** 2
    xx = np.linalg.norm(x.T @ x)
    yy = np.linalg.norm(y.T @ y)
    return float(xy / (xx * yy)) if xx > 0 and yy > 0 else math.nan


def cka_grid(model: np.ndarray, teacher: np.ndarray) -> np.ndarray:
    """:func:`linear_cka` of every model layer against every teacher layer ([layers, n, d] each): [model layers,
    teacher layers]. Each layer is centred and its own Gram norm computed once, and the cross terms come from one
    product of all layers side by side."""
    xs = model - model.mean(axis=1, keepdims=True)
    ys = teacher - teacher.mean(axis=1, keepdims=True)
    x_norms = np.array([np.linalg.norm(x.T @ x) for x in xs])
    y_norms = np.array([np.linalg.norm(y.T @ y) for y in ys])
    n_x, n, d_x = xs.shape
    n_y, _, d_y = ys.shape
    cross = np.concatenate(list(ys), axis=1).T @ np.concatenate(list(xs), axis=1)  # [n_y * d_y, n_x * d_x]
    squared = np.square(cross).reshape(n_y, d_y, n_x, d_x).sum(axis=(1, 3)).T  # [model layer, teacher layer]
    with np.errstate(divide="ignore", invalid="ignore"):
        grid = squared / np.outer(x_norms, y_norms)
    return np.where((x_norms[:, None] > 0) & (y_norms[None, :] > 0), grid, math.nan)


def cka_profile(model: Sequence[np.ndarray], teacher: Sequence[np.ndarray],
                keep: Sequence[int]) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
    """One model against the teacher, from per-text word vectors ([layers, words, d] each).

    Returns the layer-by-layer CKA grid over all kept texts' words, the model's most similar layer pair
    (chosen by the same rule for every model, so the student stays exchangeable with the references), and
    per-text CKA at that pair (NaN for texts not kept).

    Raises :class:`DetectorSkipped` when no layer pair has a CKA at all (no texts kept, or hidden states that
    do not vary over the words): there is nothing to compare."""
    if not keep:
        raise DetectorSkipped("no probe text is long enough to compare hidden states over its words")
    grid = cka_grid(np.concatenate([model[k] for k in keep], axis=1), np.concatenate([teacher[k] for k in keep], axis=1))
    if not np.isfinite(grid).any():
        raise DetectorSkipped("the hidden states do not vary over the probe words, so their CKA is undefined")
    a, b = (int(i) for i in np.unravel_index(np.nanargmax(np.where(np.isfinite(grid), grid, np.nan)), grid.shape))
    per_text = np.full(len(model), np.nan)
    for k in keep:
        per_text[k] = linear_cka(model[k][a], teacher[k][b])
    return grid, (a, b), per_text


def _layers(adapter: ModelAdapter, max_layers: int) -> list[int]:
    n = adapter.n_layers
    if n <= 0:
        return [-1]
    picks = np.unique(np.round(np.linspace(1, n, min(n, max_layers))).astype(int))
    return [int(x) for x in picks]


class RepresentationSimilarity(Detector):
    name = "representation-similarity"
    summary = "The student's hidden states are more like the teacher's (linear CKA over words) than the references' are"
    requires = {
        "teacher": frozenset({Capability.HIDDEN_STATES, Capability.SCORE}),
        "student": frozenset({Capability.HIDDEN_STATES, Capability.SCORE}),
        "reference": frozenset({Capability.HIDDEN_STATES, Capability.SCORE}),
    }
    min_references = 2
    Params = CKAParams
    null = (
        "The student is no more teacher-like in its hidden representations than an independent reference: "
        "per probe text, its CKA to the teacher is exchangeable with the references'."
    )

    def planned_requests(self, inputs: PlanInputs) -> tuple[PlannedRequest, ...]:
        n, chars = inputs.n_probes, inputs.probe_chars
        return tuple(
            request
            for role in ("teacher", "student", "reference")
            for request in (
                PlannedRequest(role, "hidden", n, f"hidden states of the probes (up to {self.params.max_layers} layers), "
                               "pooled to words", f"hidden:{self.params.max_layers}", chars=chars),
            )
        )

    def run(self, ctx: DetectorContext) -> Evidence:
        p: CKAParams = self.params
        texts = list(ctx.prompts)
        spans = [word_spans(t) for t in texts]
        keep = [k for k, s in enumerate(spans) if len(s) >= p.min_words]
        if len(keep) < p.min_texts:
            raise DetectorSkipped(
                f"only {len(keep)} of {len(texts)} probe texts have at least {p.min_words} words (whitespace-separated); "
                f"per-text CKA needs at least {p.min_texts} such texts: use longer probes"
            )
        t_layers = _layers(ctx.teacher.adapter, p.max_layers)
        teacher = self._vectors(ctx, ctx.teacher, texts, spans, t_layers)
        values: dict[str, np.ndarray] = {}
        heatmaps: dict[str, Any] = {}
        for m in suspects(ctx):
            m_layers = _layers(m.adapter, p.max_layers)
            # a model's profile depends on the teacher and that model only: computed once per audit (the negative
            # controls seat the same models again) and kept in the cache (a re-run reads it back)
            grid, (a, b), values[m.name] = ctx.memo(
                (self.name, p), m, functools.partial(self._profile, ctx, m, texts, spans, m_layers, t_layers, teacher,
                                                     keep))
            heatmaps[m.name] = {"layers": m_layers, "teacher_layers": t_layers,
                                "cka": [[round(float(v), 4) for v in row] for row in grid],
                                "best": [m_layers[a], t_layers[b]], "best_cka": round(float(grid[a, b]), 4)}

        usable = int(np.logical_and.reduce([np.isfinite(v) for v in values.values()]).sum())
        if usable < p.min_texts:
            raise DetectorSkipped(
                f"only {usable} probe text(s) have a defined CKA to the teacher for every model (hidden states that "
                f"vary over the text's words); the panel test needs at least {p.min_texts}"
            )

        def examples(student: np.ndarray, closest: np.ndarray, closest_name: str) -> list[dict[str, Any]]:
            gap = np.where(np.isfinite(student - closest), student - closest, -np.inf)
            order = [int(k) for k in np.argsort(-gap, kind="stable")[:3] if np.isfinite(gap[k])]
            return [{"prompt": texts[k], "student_cka": round(float(student[k]), 4), "reference": closest_name,
                     "reference_cka": round(float(closest[k]), 4)} for k in order]

        evidence = panel_evidence(
            self.name, ctx, values, null=self.null, statistic="per-text CKA to the teacher (each model at its "
            "most similar layer pair)", margin=p.margin, details={"heatmaps": heatmaps, "texts_used": usable},
            examples=examples,
        )
        return _one_sided(evidence)

    def _profile(self, ctx: DetectorContext, model: Any, texts: list[str], spans: list[list[tuple[int, int]]],
                 layers: list[int], teacher_layers: list[int], teacher: list[np.ndarray],
                 keep: list[int]) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
        t_fp, m_fp = ctx.teacher.adapter.fingerprint, model.adapter.fingerprint
        key = {"teacher": t_fp["model"], "model": m_fp["model"], "teacher_numerics": t_fp.get("numerics"),
               "model_numerics": m_fp.get("numerics"), "texts": prompts_hash(tuple(texts)), "keep": keep,
               "layers": layers, "teacher_layers": teacher_layers, "words": _WORD.pattern, "rule": "cka-profile-v1"}

        def to_arrays(profile: tuple[np.ndarray, tuple[int, int], np.ndarray]) -> dict[str, np.ndarray]:
            return {"grid": profile[0], "best": np.asarray(profile[1], dtype=np.int64), "per_text": profile[2]}

        def from_arrays(a: Mapping[str, np.ndarray]) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
            grid, best, per_text = a["grid"], a["best"], a["per_text"]
            if grid.shape != (len(layers), len(teacher_layers)) or best.shape != (2,) or per_text.shape != (len(texts),):
                raise ValueError("a stored CKA profile of other shapes")
            if not (0 <= best[0] < grid.shape[0] and 0 <= best[1] < grid.shape[1]):
                raise ValueError("a stored CKA profile whose best layer pair is outside its grid")
            return grid, (int(best[0]), int(best[1])), per_text

        return ctx.engine.stored(
            "cka-profile", key,
            lambda: cka_profile(self._vectors(ctx, model, texts, spans, layers), teacher, keep), to_arrays, from_arrays)

    @staticmethod
    def _vectors(ctx: DetectorContext, model: Any, texts: list[str], spans: list[list[tuple[int, int]]],
                 layers: list[int]) -> list[np.ndarray]:
        """Per text, [layers, words, d]: each word's vector is the mean of the hidden states of the tokens overlapping
        it (the tokenizer-free rows every model shares), pooled in the backend before caching."""
        words = ctx.engine.hidden_states(model.adapter, texts, layers, words=_WORD.pattern)
        for w, sp, text in zip(words, spans, texts):
            if w.shape[1] != len(sp):
                raise AuditError(f"{model.name}: its hidden states of {text[:40]!r} hold {w.shape[1]} words, the text "
                                 f"has {len(sp)}; refusing to compare them")
        return [w.astype(np.float64) for w in words]


def _one_sided(e: Evidence) -> Evidence:
    """Evidence that can only speak for distillation: never counted as ruling it out."""
    import dataclasses

    details = dict(e.details, one_sided="evidence for representation similarity only; silence does not support "
                   "not-distilled")
    return dataclasses.replace(e, rules_out=False, planted_p_value=math.nan, details=details)
