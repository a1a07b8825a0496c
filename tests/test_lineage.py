"""White-box lineage: the exact permutation test is valid (independent models are not flagged at alpha within
sampling error) and powerful (a layer-initialised student is caught, with the right block map); linear CKA
and word pooling behave; the detectors run in a real audit on real tiny checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from distill_audit import synthetic
from distill_audit.backends.base import pool_spans
from distill_audit.backends.hf import HFAdapter
from distill_audit.cache import InferenceCache
from distill_audit.detectors.base import DetectorContext, DetectorSkipped, ModelHandle
from distill_audit.detectors.lineage import RepresentationSimilarity, linear_cka, weight_lineage_test, word_spans
from distill_audit.engine import Engine
from tests.conftest import cli

# -- the permutation test on simulated weights -----------------------------------------------------------


def _blocks(rng: np.random.Generator, n: int = 2, units: int = 48, d: int = 24) -> list[np.ndarray]:
    return [rng.standard_normal((units, d)) for _ in range(n)]


def test_independent_weights_are_flagged_at_alpha_within_sampling_error() -> None:
    rng = np.random.default_rng(0)
    trials, alpha = 300, 0.05
    p = [weight_lineage_test(_blocks(rng), _blocks(rng), rng, permutations=99)["p_value"] for _ in range(trials)]
    rate = float(np.mean(np.array(p) <= alpha))
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
    assert min(p) >= 1 / 100  # a permutation p-value is never below 1 / (B + 1)


def test_a_teachers_units_in_another_order_are_not_lineage() -> None:
    # the same units, shuffled: what an independent initialisation of identical geometry would look like
    rng = np.random.default_rng(1)
    p = []
    for _ in range(200):
        teacher = _blocks(rng)
        student = [t[rng.permutation(t.shape[0])] + 0.1 * rng.standard_normal(t.shape) for t in teacher]
        p.append(weight_lineage_test(teacher, student, rng, permutations=99)["p_value"])
    assert float(np.mean(np.array(p) <= 0.05)) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 200)


def test_inherited_blocks_are_found_and_mapped() -> None:
    rng = np.random.default_rng(2)
    teacher = _blocks(rng, n=4)
    student = [teacher[1] + 1.5 * rng.standard_normal(teacher[1].shape),  # heavily trained after the copy
               teacher[3] + 1.5 * rng.standard_normal(teacher[3].shape)]
    res = weight_lineage_test(teacher, student, rng, permutations=199)
    assert res["p_value"] == pytest.approx(1 / 200)
    best = {i: max((j for a, j in res["pairs"] if a == i), key=lambda j: res["observed"][(i, j)]) for i in (0, 1)}
    assert best == {0: 1, 1: 3}
    assert res["adjusted"][(0, 1)] < 0.05 and res["adjusted"][(0, 0)] > 0.05


def test_blocks_of_other_shapes_are_not_compared() -> None:
    rng = np.random.default_rng(3)
    res = weight_lineage_test(_blocks(rng, d=24), _blocks(rng, d=16), rng, permutations=9)
    assert res["pairs"] == [] and np.isnan(res["p_value"])


# -- CKA and word pooling ----------------------------------------------------------------------------------


def test_linear_cka_is_invariant_to_rotation_and_scale_and_low_for_unrelated() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((200, 16))
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, rng.standard_normal((200, 16))) < 0.2
    wider = np.concatenate([x, rng.standard_normal((200, 8)) * 0.01], axis=1)  # another width
    assert linear_cka(x, wider) > 0.99


def test_word_vectors_give_every_tokenizer_the_same_rows(tmp_path: Path) -> None:
    text = "Kise peru suni roso ria. Vunu tea loa"
    spans = word_spans(text)
    rows = []
    for kind in ("bpe", "unigram"):
        synthetic.build_tokenizer(synthetic.Grammar(), tmp_path / kind, kind=kind)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tmp_path / kind)
        model = synthetic.new_model(tok, synthetic.TinyConfig(context=64), seed=0)
        model.save_pretrained(tmp_path / f"m-{kind}")
        tok.save_pretrained(tmp_path / f"m-{kind}")
        adapter = HFAdapter.load(str(tmp_path / f"m-{kind}"))
        (vecs,) = adapter.hidden_states([text], [0, 1], [spans])
        assert vecs.shape[:2] == (2, len(spans)) and np.isfinite(vecs).all()
        # pooled in the backend = the token states pooled here over the token offsets that scoring gives
        (hidden,) = adapter.hidden_states([text], [0, 1])
        (scored,) = adapter.score([text], 1)
        assert hidden.shape[1] == scored.n_tokens > len(spans) - 2
        np.testing.assert_allclose(vecs, pool_spans(hidden, scored.offsets, spans), rtol=1e-6, atol=1e-6)
        rows.append(vecs.shape[1])
    assert rows[0] == rows[1] == 8


# -- real checkpoints ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lineage_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 4-block teacher, a student initialised from its blocks 1 and 3 then trained on other text, and
    three independent 2-block models of the student's shape (references and a control)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("lineage")
    grammar = synthetic.Grammar()
    synthetic.build_tokenizer(grammar, root / "tok")
    tok = AutoTokenizer.from_pretrained(root / "tok")
    plan = synthetic.TrainPlan(steps=120, batch=16, width=48)
    paths: dict[str, Any] = {}

    def fit(name: str, model: Any, seed: int) -> Any:
        model = synthetic.train(model, synthetic.encode_corpus(tok, grammar.text(400, seed=seed)),
                                synthetic.TrainPlan(steps=plan.steps, batch=plan.batch, width=plan.width, seed=seed))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = root / name
        return model

    teacher = fit("teacher", synthetic.new_model(tok, synthetic.TinyConfig(layers=4, context=128), seed=1), 1)
    fit("student", synthetic.layer_initialised(teacher, tok, [1, 3], seed=2), 2)
    for i in range(3):
        fit(f"independent-{i}", synthetic.new_model(tok, synthetic.TinyConfig(layers=2, context=128), seed=10 + i),
            10 + i)
    probes = root / "probes.txt"
    probes.write_text("\n".join(grammar.prompts(40, seed=99)) + "\n")
    paths["probes"] = probes
    return paths


def _audit(models: dict[str, Any], student: str, out: Path, *extra: str) -> dict[str, Any]:
    proc = cli("-q", "run", "--teacher", str(models["teacher"]), "--student", str(models[student]),
               *[a for r in ("independent-1", "independent-2") for a in ("--reference", str(models[r]))],
               "--probes", str(models["probes"]), "--detector", "weight-lineage",
               "--detector", "representation-similarity", "--no-negative-controls", "--out", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "result.json").read_text())


def test_a_layer_initialised_student_is_caught_with_its_block_map(lineage_models: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    result = _audit(lineage_models, "student", tmp_path / "out")
    ev = {e["detector"]: e for e in result["evidence"]}
    weights = ev["weight-lineage"]
    assert weights["p_value"] <= 0.002
    blocks = {row["student_block"]: row["teacher_block"] for row in weights["details"]["lineage"]}
    assert blocks == {0: 1, 1: 3}
    assert all(row["inherited"] for row in weights["details"]["lineage"])
    assert weights["planted_p_value"] is None and not weights["rules_out"]  # one-sided evidence
    cka = ev["representation-similarity"]
    heat = cka["details"]["heatmaps"]["student"]
    assert len(heat["cka"]) == 2 and len(heat["cka"][0]) == 4  # student layers x teacher layers
    assert heat["best_cka"] > max(h["best_cka"] for name, h in cka["details"]["heatmaps"].items() if name != "student")
    html = (tmp_path / "out" / "report.html").read_text()
    assert "student block 0" in html and "<svg" in html


def test_an_independent_model_of_the_same_shape_is_not_flagged(lineage_models: dict[str, Any],
                                                               tmp_path: Path) -> None:
    result = _audit(lineage_models, "independent-0", tmp_path / "out")
    weights = next(e for e in result["evidence"] if e["detector"] == "weight-lineage")
    assert weights["p_value"] > 0.01
    assert not any(row["inherited"] for row in weights["details"]["lineage"])


def _cka_trial(rng: np.random.Generator, student_like_teacher: bool, n_refs: int = 4, texts: int = 20,
               words: int = 8, latent: int = 12, d: int = 16) -> float:
    """One simulated audit of representation-similarity: every model's word vectors are a random linear map of
    shared latent word features plus noise; under the null the student is drawn like any reference."""
    from distill_audit import stats
    from distill_audit.detectors.lineage import cka_profile

    z = [rng.standard_normal((words, latent)) for _ in range(texts)]

    def model(maps: list[np.ndarray], noise: float) -> list[np.ndarray]:
        return [np.stack([zk @ m + noise * rng.standard_normal((words, d)) for m in maps]) for zk in z]

    t_maps = [rng.standard_normal((latent, d)) for _ in range(2)]
    teacher = model(t_maps, 1.0)

    def independent() -> list[np.ndarray]:
        return model([rng.standard_normal((latent, d)) for _ in range(2)], float(rng.uniform(0.5, 1.5)))

    keep = list(range(texts))
    student = (model([m + 0.3 * rng.standard_normal(m.shape) for m in t_maps], 1.0) if student_like_teacher
               else independent())
    s_vals = cka_profile(student, teacher, keep)[2]
    refs = {f"r{i}": cka_profile(independent(), teacher, keep)[2] for i in range(n_refs)}
    return stats.compare_to_panel(s_vals, refs, rng, margin=0.05).p_value


def test_representation_similarity_keeps_its_level_and_has_power_in_simulation() -> None:
    rng = np.random.default_rng(5)
    trials, alpha = 200, 0.05
    null = np.array([_cka_trial(rng, False) for _ in range(trials)])
    assert float(np.mean(null <= alpha)) <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials)
    alt = np.array([_cka_trial(rng, True) for _ in range(40)])
    assert float(np.mean(alt <= alpha)) >= 0.8


# -- when the probes cannot support the test ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_panel(llama_dir: Path, gpt2_dir: Path) -> Callable[[tuple[str, ...]], DetectorContext]:
    """Real tiny checkpoints in every seat (a Llama and a GPT-2, each in two seats)."""
    models = {name: HFAdapter.load(str(path), name=name) for name, path in
              [("teacher", llama_dir), ("student", gpt2_dir), ("reference-1", llama_dir), ("reference-2", gpt2_dir)]}
    handles = {name: ModelHandle(name.split("-")[0], name, adapter) for name, adapter in models.items()}

    def context(prompts: tuple[str, ...]) -> DetectorContext:
        return DetectorContext(handles["teacher"], handles["student"], (handles["reference-1"], handles["reference-2"]),
                               prompts, 0, Engine(InferenceCache(None), progress=False))

    return context


@pytest.mark.parametrize(("prompts", "reason"), [
    (("the cat sat",), "only 0 of 1 probe texts have at least 4 words"),
    (("the cat sat", "a dog ran", "Kise peru"), "only 0 of 3 probe texts have at least 4 words"),
    (("Kise peru suni roso ria", "the cat sat"), "only 1 of 2 probe texts have at least 4 words"),
])
def test_probes_too_short_to_pool_into_words_skip_with_the_reason(tiny_panel: Any, prompts: tuple[str, ...],
                                                                   reason: str) -> None:
    with pytest.raises(DetectorSkipped) as info:
        RepresentationSimilarity().run(tiny_panel(prompts))
    assert reason in info.value.reason and "use longer probes" in info.value.reason


def test_two_texts_of_four_words_are_enough(tiny_panel: Any) -> None:
    prompts = ("Kise peru suni roso ria", "the cat sat", "Vunu tea loa lile dani")
    evidence = RepresentationSimilarity().run(tiny_panel(prompts))
    assert evidence.n == 2 and evidence.details["texts_used"] == 2 and 0 <= evidence.p_value <= 1
    per_prompt = evidence.details["per_prompt"]["student"]
    assert per_prompt[1] is None and per_prompt[0] is not None  # the short text has no per-text CKA


def test_words_that_do_not_vary_within_a_text_skip(tiny_panel: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every word of a text pooled to one vector: CKA across texts exists, per text it does not."""
    import distill_audit.detectors.lineage as lineage

    pooled_words = lineage.RepresentationSimilarity._vectors

    def same_vector_per_text(*args: Any) -> list[np.ndarray]:
        return [np.repeat(w.mean(axis=1, keepdims=True), w.shape[1], axis=1) for w in pooled_words(*args)]

    monkeypatch.setattr(lineage.RepresentationSimilarity, "_vectors", staticmethod(same_vector_per_text))
    with pytest.raises(DetectorSkipped, match="only 0 probe text.s. have a defined CKA to the teacher for every model"):
        RepresentationSimilarity().run(tiny_panel(("Kise peru suni roso ria", "Vunu tea loa lile dani")))


def test_cka_profile_refuses_nothing_to_compare() -> None:
    from distill_audit.detectors.lineage import cka_profile

    rng = np.random.default_rng(6)
    texts = [rng.standard_normal((2, 5, 4)) for _ in range(3)]
    with pytest.raises(DetectorSkipped, match="no probe text is long enough"):
        cka_profile(texts, texts, [])
    flat = [np.ones((2, 5, 4)) for _ in range(3)]
    with pytest.raises(DetectorSkipped, match="do not vary over the probe words"):
        cka_profile(flat, texts, [0, 1, 2])


def _weight_lineage_reference(teacher: list[np.ndarray], student: list[np.ndarray], rng: np.random.Generator,
                              permutations: int, max_units: int) -> tuple[float, np.ndarray, dict[Any, float]]:
    """The test as first written (one permutation at a time, every block pair's full cross-cosine matrix, float64):
    the batched float32 implementation must give the same null maxima and observed statistics (within float32
    rounding) and the same p-value from the same seed."""
    pairs = [(i, j) for i, s in enumerate(student) for j, t in enumerate(teacher) if s.shape == t.shape]
    units = student[pairs[0][0]].shape[0]
    idx = None
    if units > max_units:
        idx = np.sort(rng.choice(units, size=max_units, replace=False))
        units = max_units

    def rows(mats: list[np.ndarray]) -> list[np.ndarray]:
        picked = [m if idx is None else m[idx] for m in mats]
        return [(r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)).astype(np.float64) for r in picked]

    s_rows, t_rows = rows(student), rows(teacher)
    grams = {(i, j): s_rows[i] @ t_rows[j].T for i, j in pairs}
    observed = {(i, j): float(np.trace(g)) / units for (i, j), g in grams.items()}
    by_block = {i: np.stack([grams[(i, j)] for a, j in pairs if a == i]) for i in sorted({a for a, _ in pairs})}
    maxima = np.empty(permutations)
    arange = np.arange(units)
    for b in range(permutations):
        maxima[b] = max(float(g[:, rng.permutation(units), arange].sum(axis=1).max()) for g in by_block.values()) / units
    best = max(observed.values())
    return (1 + int(np.sum(maxima >= best))) / (1 + permutations), maxima, observed


@pytest.mark.parametrize("copied", [False, True])
def test_batched_weight_lineage_test_equals_the_one_at_a_time_test(copied: bool) -> None:
    rng = np.random.default_rng(11)
    teacher = [rng.standard_normal((40, 8)) for _ in range(3)] + [rng.standard_normal((40, 6))]
    student = [rng.standard_normal((40, 8)) for _ in range(2)] + [rng.standard_normal((40, 6))]
    if copied:
        student[1] = teacher[2] + 0.3 * rng.standard_normal((40, 8))
    got = weight_lineage_test(teacher, student, np.random.default_rng(5), permutations=150, max_units=32)
    p, maxima, observed = _weight_lineage_reference(teacher, student, np.random.default_rng(5), 150, 32)
    np.testing.assert_allclose(got["null_maxima"], maxima, rtol=0, atol=1e-5)  # float32 sums against float64
    assert got["p_value"] == p and (not copied or p == 1 / 151)  # a copied block: no permutation reaches it
    assert got["observed"].keys() == observed.keys()
    for key, value in observed.items():
        assert got["observed"][key] == pytest.approx(value, abs=1e-5)


def test_the_weight_test_is_kept_in_the_cache_and_read_back_the_same(lineage_models: dict[str, Any], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run from the cache reads the permutation test back (no permutation drawn) and gives the same evidence;
    a stored result that does not read back is computed again."""
    import distill_audit.detectors.lineage as lineage
    from distill_audit.detectors.lineage import WeightLineage

    adapters = {n: HFAdapter.load(str(lineage_models[n]), name=n) for n in ("teacher", "student", "independent-0")}
    handles = {n: ModelHandle(n.split("-")[0], n, a) for n, a in adapters.items()}

    def run() -> dict[str, Any]:
        engine = Engine(InferenceCache(tmp_path / "cache.sqlite"), progress=False)
        ctx = DetectorContext(handles["teacher"], handles["student"], (handles["independent-0"],), ("a b c",), 0, engine)
        evidence = WeightLineage(lineage.WeightParams(permutations=499)).run(ctx).to_dict()
        engine.cache.close()
        return evidence

    computed: list[int] = []
    original = lineage.weight_lineage_test

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        computed.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(lineage, "weight_lineage_test", counted)
    first = run()
    assert computed == [1] and first["p_value"] <= 0.002
    second = run()
    assert computed == [1]  # read back, not computed
    assert json.dumps(second, sort_keys=True, default=str) == json.dumps(first, sort_keys=True, default=str)

    def unreadable(arrays: Any) -> dict[str, Any]:
        raise ValueError("damaged")

    monkeypatch.setattr(lineage, "_lineage_from_arrays", unreadable)
    third = run()
    assert computed == [1, 1] and third["p_value"] == first["p_value"]


def test_the_cka_grid_equals_pair_by_pair_linear_cka() -> None:
    from distill_audit.detectors.lineage import cka_grid

    rng = np.random.default_rng(4)
    model = rng.standard_normal((3, 40, 6)) + rng.standard_normal((1, 40, 6))
    teacher = rng.standard_normal((4, 40, 9))
    teacher[2] = 1.0  # a layer that does not vary: no CKA
    grid = cka_grid(model, teacher)
    want = np.array([[linear_cka(model[a], teacher[b]) for b in range(4)] for a in range(3)])
    np.testing.assert_allclose(grid, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert np.isnan(grid[:, 2]).all() and np.isfinite(np.delete(grid, 2, axis=1)).all()


def test_cka_profiles_are_kept_in_the_cache_and_read_back_the_same(llama_dir: Path, gpt2_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import distill_audit.detectors.lineage as lineage

    models = {name: HFAdapter.load(str(path), name=name) for name, path in
              [("teacher", llama_dir), ("student", gpt2_dir), ("reference-1", llama_dir), ("reference-2", gpt2_dir)]}
    handles = {name: ModelHandle(name.split("-")[0], name, adapter) for name, adapter in models.items()}
    prompts = ("Kise peru suni roso ria", "Vunu tea loa lile dani", "Runo lee dau neni kilo zesa")

    def run() -> dict[str, Any]:
        engine = Engine(InferenceCache(tmp_path / "cache.sqlite"), progress=False)
        ctx = DetectorContext(handles["teacher"], handles["student"], (handles["reference-1"], handles["reference-2"]),
                              prompts, 0, engine)
        evidence = RepresentationSimilarity().run(ctx).to_dict()
        engine.cache.close()
        return evidence

    first = run()

    def not_again(*args: Any) -> Any:
        raise AssertionError("a stored CKA profile was computed again")

    monkeypatch.setattr(lineage, "cka_profile", not_again)
    second = run()
    assert json.dumps(second, sort_keys=True, default=str) == json.dumps(first, sort_keys=True, default=str)
