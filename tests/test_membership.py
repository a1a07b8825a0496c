"""Membership scores on a real tiny model, and the access-mode wrapper."""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from distill_audit.backends.base import Capability, GenerateParams
from distill_audit.backends.hf import HFAdapter
from distill_audit.backends.restrict import RestrictedAdapter, restrict
from distill_audit.detectors.membership import membership_scores
from distill_audit.errors import CapabilityError


@pytest.fixture(scope="module")
def model(llama_dir: Path) -> HFAdapter:
    return HFAdapter.load(str(llama_dir))


def test_scores_follow_their_definitions(model: HFAdapter) -> None:
    prompt, completion = "Babo kire", " lumo sapa tine. Kise nuri"
    (scored,) = model.score([prompt + completion], top_k=3)
    pos = np.nonzero(scored.offsets[:, 1] > len(prompt))[0]
    lp = scored.target_logprob[pos].astype(float)
    out = membership_scores(scored, prompt, completion, min_k_fraction=0.2)
    assert out["loss"] == pytest.approx(lp.mean(), rel=1e-6)
    z = (lp + scored.entropy[pos]) / np.sqrt(scored.logprob_var[pos])  # Min-K%++: (log p - mu) / sigma
    k = math.ceil(0.2 * len(z))
    assert out["min-k++"] == pytest.approx(np.sort(z)[:k].mean(), rel=1e-5)
    zbits = 8 * len(zlib.compress(completion.encode(), 9))
    assert out["zlib"] == pytest.approx(lp.sum() / math.log(2) / zbits, rel=1e-5)
    first_two = membership_scores(scored, prompt, completion, 0.2, n_tokens=2)
    assert first_two["loss"] == pytest.approx(lp[:2].mean(), rel=1e-6)


def test_an_empty_completion_scores_nan(model: HFAdapter) -> None:
    (scored,) = model.score(["Babo kire"], top_k=3)
    assert all(math.isnan(v) for v in membership_scores(scored, "Babo kire", "", 0.2).values())


def test_access_modes_declare_less_and_refuse_the_rest(model: HFAdapter) -> None:
    assert restrict(model, "white") is model
    gray, black = RestrictedAdapter(model, "gray"), RestrictedAdapter(model, "black")
    assert gray.capabilities == {Capability.GENERATE, Capability.GENERATE_TOPK}
    assert black.capabilities == {Capability.GENERATE} and black.runtime["access"] == "black-box"
    assert black.fingerprint == model.fingerprint  # the same model: the cache is shared
    (g,) = black.generate(["Babo"], GenerateParams(max_new_tokens=3))
    assert g.text == model.generate(["Babo"], GenerateParams(max_new_tokens=3))[0].text
    with pytest.raises(CapabilityError, match="black-box access, which gives no score"):
        black.score(["Babo kire"], top_k=1)
    with pytest.raises(CapabilityError, match="unknown access mode"):
        RestrictedAdapter(model, "grey")
