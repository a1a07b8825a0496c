"""The one decode loop: batched, KV-cached, greedy or seeded sampling, with an optional logits hook.

Every continuation the tool writes comes from :func:`decode`: the HF backend's ``generate`` (and so the
engine), the demo and test models' sampled teacher text (:func:`audit.synthetic.sample_texts`) and
watermarked generation (:func:`audit.watermark.generate_watermarked`). One loop means one place where left
padding, position ids, the stop at ``</s>``, the seeded noise and the per-step log-probs are decided.

Seeded sampling draws Gumbel noise on the CPU from one ``torch.Generator`` per row, seeded by
:func:`row_seed`; the continuation of a row therefore depends on its own seed, never on the other rows
of its batch, on torch's global RNG or on the device the model runs on (beyond the model's own numerics).
"""

from __future__ import annotations

import hashlib
import inspect
from typing import Any, Callable, Sequence

import numpy as np
import torch

from distill_audit.backends.base import Generation

# ``(ids, logits) -> logits``: ``ids`` holds every row's ids so far (``[batch, t]``, the left-padded prompt
# included, padding where a row has stopped), ``logits`` the next-token logits (``[batch, vocab]``, float32)
# before temperature. The returned logits are the ones sampled (or argmax-ed) from.
LogitsHook = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Temperatures below this are treated as this: dividing by zero would turn sampling into NaNs.
_MIN_TEMPERATURE = 1e-6


def row_seed(seed: int, prompt: str, index: int | None = None) -> int:
    """The seed of one row's sampling noise: the first 8 bytes (little-endian) of a sha256 of its inputs.

    Without ``index`` it hashes ``f"{seed}\\0{prompt}"``: a prompt's continuation is a function of (seed,
    prompt) alone, which a content-addressed cache needs (the engine and the HF backend use this). With
    ``index`` it hashes ``f"{seed}\\0{index}\\0{prompt}"``: the same prompt at two positions of a list gets
    two independent samples, as the synthetic teacher's answers and watermarked text need.
    """
    text = f"{seed}\0{prompt}" if index is None else f"{seed}\0{index}\0{prompt}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def cache_kwarg(model: Any) -> str:
    """The name of the KV-cache argument of ``model.forward``: transformers 5 renamed past_key_values to cache."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def keeps_last_logits(model: Any) -> bool:
    """Whether ``model.forward`` takes ``logits_to_keep``: then a step computes the output head at the last position
    only (the prompt's other positions predict nothing the loop reads: on a prompt of 100 tokens and a vocabulary of
    50k, the head over every position is most of the prefill's cost)."""
    return "logits_to_keep" in inspect.signature(type(model).forward).parameters


def context_limit(model: Any) -> int | None:
    """The most positions the model takes, from its config; None where the config does not say."""
    config = model.config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def continuation_text(tokenizer: Any, prompt_ids: Sequence[int], new_ids: Sequence[int]) -> str:
    """The continuation as it reads after the prompt (decoding jointly keeps word boundaries right)."""
    prompt_text = tokenizer.decode(list(prompt_ids), skip_special_tokens=True)
    full_text = tokenizer.decode(list(prompt_ids) + list(new_ids), skip_special_tokens=True)
    if full_text.startswith(prompt_text):
        return str(full_text[len(prompt_text) :])
    return str(tokenizer.decode(list(new_ids), skip_special_tokens=True))


def _gumbel(generators: Sequence[torch.Generator], vocab: int) -> torch.Tensor:
    """One row of Gumbel noise per generator, drawn on the CPU so the noise is the same on every device."""
    return torch.stack(
        [-torch.log(-torch.log(torch.rand(vocab, generator=g).clamp_min(1e-20))) for g in generators]
    )


def decode(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    row_seeds: Sequence[int] | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    logits_hook: LogitsHook | None = None,
    on_forward: Callable[[], None] | None = None,
) -> list[Generation]:
    """Continue one batch of encoded prompts; one :class:`Generation` per prompt, in order.

    Prompts are left-padded with ``tokenizer.pad_token_id`` and given explicit position ids, so a padded
    row computes what it would alone; one KV cache serves the batch. ``row_seeds`` None decodes greedily;
    otherwise row ``i`` samples at ``temperature`` with noise from a generator seeded by ``row_seeds[i]``
    (see :func:`row_seed`). A row stops at ``tokenizer.eos_token_id`` (not included), after
    ``max_new_tokens`` tokens, or where the model's context is full.

    ``token_logprobs`` and the ``top_k`` best log-probs per step (none when ``top_k`` is 0) are the model's
    own distribution at temperature 1, before ``logits_hook``: they describe the model, which is what an
    audit compares, not the bias a hook adds to steer the sampling. ``on_forward`` is told of each forward
    pass (the HF backend counts them).
    """
    if not prompt_ids:
        return []
    encoded = [list(ids) for ids in prompt_ids]
    if row_seeds is not None and len(row_seeds) != len(encoded):
        raise ValueError(f"{len(row_seeds)} row seeds for {len(encoded)} prompts")
    batch = len(encoded)
    width = max(len(ids) for ids in encoded)
    dev = model.get_input_embeddings().weight.device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    input_ids = torch.full((batch, width), pad, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[row, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(dev), mask.to(dev)
    step_pos = (mask.cumsum(-1) - 1).clamp(min=0)
    generators = None
    if row_seeds is not None:
        generators = [torch.Generator().manual_seed(s) for s in row_seeds]
    context = context_limit(model)
    steps = max_new_tokens if context is None else max(0, min(max_new_tokens, context - width))
    k = max(0, min(top_k, model.config.vocab_size))
    kwarg = cache_kwarg(model)
    last_only = {"logits_to_keep": 1} if keeps_last_logits(model) else {}
    new_ids: list[list[int]] = [[] for _ in range(batch)]
    new_lp: list[list[float]] = [[] for _ in range(batch)]
    new_top_ids: list[list[np.ndarray]] = [[] for _ in range(batch)]
    new_top_lp: list[list[np.ndarray]] = [[] for _ in range(batch)]
    done = [False] * batch
    past = None
    step_ids = input_ids
    history = input_ids if logits_hook is not None else None
    with torch.inference_mode():
        for _ in range(steps):
            if on_forward is not None:
                on_forward()
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                        **{kwarg: past}, **last_only)
            past = getattr(out, kwarg)
            logits = out.logits[:, -1, :].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            steered = logits if logits_hook is None or history is None else logits_hook(history, logits)
            if generators is not None:
                scaled = torch.log_softmax(steered / max(temperature, _MIN_TEMPERATURE), dim=-1).cpu()
                chosen = (scaled + _gumbel(generators, scaled.shape[-1])).argmax(-1).to(dev)
            else:
                chosen = steered.argmax(-1)
            chosen_lp = logprobs.gather(1, chosen[:, None])[:, 0]
            chosen_cpu, chosen_lp_cpu = chosen.cpu().tolist(), chosen_lp.cpu().tolist()
            if k:
                top_vals, top_idx = logprobs.topk(k, dim=-1)
                top_vals_np, top_idx_np = top_vals.cpu().numpy(), top_idx.cpu().numpy()
            for row in range(batch):
                if done[row]:
                    continue
                token = chosen_cpu[row]
                if eos is not None and token == eos:
                    done[row] = True
                    continue
                new_ids[row].append(token)
                new_lp[row].append(chosen_lp_cpu[row])
                if k:
                    new_top_ids[row].append(top_idx_np[row])
                    new_top_lp[row].append(top_vals_np[row])
            if all(done):
                break
            step_ids = torch.tensor([[pad if done[r] else chosen_cpu[r]] for r in range(batch)], device=dev)
            if history is not None:
                history = torch.cat([history, step_ids], dim=1)
            step_pos = step_pos[:, -1:] + 1
            mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=dev)], dim=1)
    return [
        Generation(
            text=continuation_text(tokenizer, encoded[row], new_ids[row]),
            token_ids=np.asarray(new_ids[row], dtype=np.int64),
            token_logprobs=np.asarray(new_lp[row], dtype=np.float32),
            topk_ids=np.asarray(new_top_ids[row], dtype=np.int64).reshape(len(new_ids[row]), k),
            topk_logprobs=np.asarray(new_top_lp[row], dtype=np.float32).reshape(len(new_ids[row]), k),
        )
        for row in range(batch)
    ]
