"""A synthetic language and tiny causal LMs trained on it, built with no network in seconds on a CPU.

The language: each sentence opens with a topic word; every next word is drawn uniformly from five
successors fixed by (topic, previous word), and a sentence ends with probability 0.15 after each
word. Because successors are equally likely, what a trained model prefers among them is decided by
the sample it saw and its own training run: idiosyncrasies that an independently trained model does
not share and a student distilled from it inherits. Used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from distill_audit.decoding import LogitsHook, decode, row_seed

log = logging.getLogger(__name__)

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "n", "r", "l", "s"]


@dataclass(frozen=True)
class Grammar:
    """Topic-conditioned successor lists over a made-up vocabulary, fixed by ``seed``."""

    seed: int = 0
    n_words: int = 96
    n_topics: int = 8
    n_successors: int = 5
    p_end: float = 0.15

    def _tables(self) -> tuple[list[str], list[str], np.ndarray]:
        rng = np.random.default_rng(self.seed)
        pool = sorted({o + v + c + v2 for o in _ONSETS for v in _VOWELS for c in _CODAS for v2 in _VOWELS})
        picked = rng.choice(len(pool), size=self.n_words + self.n_topics, replace=False)
        words = [pool[i] for i in picked[: self.n_words]]
        topics = [pool[i].capitalize() for i in picked[self.n_words :]]
        successors = np.stack(
            [
                np.stack([rng.choice(self.n_words, self.n_successors, replace=False) for _ in range(self.n_words + 1)])
                for _ in range(self.n_topics)
            ]
        )  # [topic, previous word (last row: the topic word itself), successor]
        return words, topics, successors

    def sentences(self, n: int, seed: int) -> list[str]:
        words, topics, successors = self._tables()
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            topic = int(rng.integers(self.n_topics))
            prev = self.n_words
            sentence = [topics[topic]]
            while True:
                prev = int(successors[topic, prev, rng.integers(self.n_successors)])
                sentence.append(words[prev])
                if len(sentence) >= 4 and rng.random() < self.p_end or len(sentence) >= 24:
                    break
            out.append(" ".join(sentence) + ".")
        return out

    def text(self, n_sentences: int, seed: int) -> str:
        return " ".join(self.sentences(n_sentences, seed))

    def prompts(self, n: int, seed: int) -> list[str]:
        """Sentence openings of 2 to 5 words, for probing models trained on this language."""
        rng = np.random.default_rng(seed)
        out = []
        for sentence in self.sentences(n, seed):
            tokens = sentence.rstrip(".").split(" ")
            keep = int(rng.integers(2, min(5, len(tokens)) + 1))
            out.append(" ".join(tokens[:keep]))
        return out


def _unigram_pieces(sentences: Sequence[str], n_pieces: int, pre_tokenizer: Any, rounds: int = 4) -> list[tuple[str, float]]:
    """A Unigram vocabulary (piece, log-probability) learnt from ``sentences``, deterministically.

    The tokenizers library's UnigramTrainer orders equal pieces by hash-map order, so it gives different
    ids on every run; this is a small stand-in with the same shape: seed pieces (every ASCII character,
    the word marker, and the most frequent substrings of words), then rounds of Viterbi segmentation,
    re-estimating each piece's probability from its use and dropping the least used multi-character
    pieces, ties broken by the piece itself."""
    import string
    from collections import Counter

    from tokenizers import Tokenizer, models

    words: Counter[str] = Counter(w for s in sentences for w, _ in pre_tokenizer.pre_tokenize_str(s))
    chars = sorted(set(string.ascii_letters + string.digits + string.punctuation + "\u2581") | {c for w in words for c in w})
    subs: Counter[str] = Counter()
    for word, n in words.items():
        for i in range(len(word)):
            for j in range(i + 2, min(len(word), i + 12) + 1):
                subs[word[i:j]] += n
    n_multi = max(0, n_pieces - len(chars))
    multi = sorted(subs, key=lambda p: (-subs[p] * (len(p) - 1), p))[: 4 * n_multi]
    usage: dict[str, float] = {p: float(subs[p]) for p in multi}
    usage.update({c: 1.0 + sum(n * w.count(c) for w, n in words.items()) for c in chars})
    for round_no in range(rounds + 1):
        if round_no > 0:  # keep the most used multi-character pieces, shrinking towards n_multi
            keep = max(n_multi, len(multi) // 2) if round_no < rounds else n_multi
            multi = sorted(multi, key=lambda p: (-usage[p], p))[:keep]
        total = sum(usage[p] for p in chars + multi)
        vocab = [(p, math.log(max(usage[p], 0.1) / total)) for p in chars + multi]
        model = Tokenizer(models.Unigram(vocab, unk_id=None)).model
        used: Counter[str] = Counter()
        for word, n in words.items():
            for token in model.tokenize(word):
                used[token.value] += n
        usage = {p: float(used[p]) for p in chars + multi}
        for c in chars:
            usage[c] += 1.0  # every character stays reachable
    total = sum(usage.values())
    return [(p, math.log(max(usage[p], 0.1) / total)) for p in chars + sorted(multi, key=lambda p: (-usage[p], p))]


TOKENIZER_KINDS = ("bpe", "unigram")


def build_tokenizer(grammar: Grammar, directory: Path, kind: str = "bpe", vocab_size: int | None = None) -> None:
    """A tokenizer trained on the language, saved as a fast tokenizer with <s>, </s> and <pad>.

    ``kind="bpe"`` (default): byte-level BPE, vocabulary up to 512 (any text still encodes, byte by byte).
    ``kind="unigram"``: a Unigram model over whitespace-marked words (Metaspace), vocabulary 192 by default,
    so the same text gets different ids and segmentation; characters outside ASCII map to <unk>. Its pieces
    come from :func:`_unigram_pieces`, deterministic where the tokenizers library's trainer is not.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    trainer: Any = None
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size or 512,
            special_tokens=["<pad>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        extra: dict[str, str] = {}
    elif kind == "unigram":
        specials = ["<pad>", "<s>", "</s>", "<unk>"]
        metaspace: dict[str, Any] = {"replacement": "\u2581", "prepend_scheme": "first"}
        pieces = _unigram_pieces(grammar.sentences(4000, seed=10_000), (vocab_size or 192) - len(specials),
                                 pre_tokenizers.Metaspace(**metaspace))
        tok = Tokenizer(models.Unigram([(t, 0.0) for t in specials] + pieces, unk_id=specials.index("<unk>")))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(**metaspace)
        tok.decoder = decoders.Metaspace(**metaspace)
        tok.add_special_tokens(specials)
        extra = {"unk_token": "<unk>"}
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {', '.join(TOKENIZER_KINDS)}")
    if trainer is not None:
        tok.train_from_iterator(grammar.sentences(4000, seed=10_000), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", **extra)
    fast.save_pretrained(directory)


@dataclass(frozen=True)
class TinyConfig:
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    context: int = 256
    arch: str = "llama"  # llama | gpt2


def new_model(tokenizer: Any, cfg: TinyConfig, seed: int) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(vocab_size=vocab, n_embd=cfg.hidden, n_layer=cfg.layers, n_head=cfg.heads,
                       n_positions=cfg.context, **ids)
        )
    return LlamaForCausalLM(
        LlamaConfig(vocab_size=vocab, hidden_size=cfg.hidden, intermediate_size=cfg.hidden * 4,
                    num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                    max_position_embeddings=cfg.context, tie_word_embeddings=True, **ids)
    )


def _windows(token_ids: Sequence[int], width: int, batch: int, seed: int) -> Iterator[torch.Tensor]:
    data = torch.tensor(token_ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(seed)
    while True:
        starts = torch.randint(0, len(data) - width - 1, (batch,), generator=gen)
        yield torch.stack([data[s : s + width] for s in starts.tolist()])


@dataclass(frozen=True)
class TrainPlan:
    steps: int = 300
    batch: int = 32
    width: int = 64
    lr: float = 3e-3
    seed: int = 0


def train(
    model: Any,
    token_ids: Sequence[int],
    plan: TrainPlan,
    teacher: Any = None,
    kd_weight: float = 1.0,
    on_step: Callable[[], None] | None = None,
) -> Any:
    """Next-token training; with a teacher, the loss mixes KL to the teacher's distribution (logit KD)
    with weight ``kd_weight`` and cross-entropy on the text with weight ``1 - kd_weight``."""
    opt = torch.optim.AdamW(model.parameters(), lr=plan.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / 20) * 0.5 * (1 + math.cos(math.pi * step / plan.steps))
    )
    model.train()
    if teacher is not None:
        teacher.eval()
    batches = _windows(token_ids, plan.width, plan.batch, plan.seed)
    for _ in range(plan.steps):
        x = next(batches)
        logits = model(input_ids=x).logits[:, :-1]
        logp = torch.log_softmax(logits, -1)
        loss = torch.tensor(0.0)
        if teacher is None or kd_weight < 1.0:
            ce = -logp.gather(-1, x[:, 1:, None]).mean()
            loss = loss + (1.0 - (kd_weight if teacher is not None else 0.0)) * ce
        if teacher is not None and kd_weight > 0.0:
            with torch.no_grad():
                t_logp = torch.log_softmax(teacher(input_ids=x).logits[:, :-1], -1)
            kl = (t_logp.exp() * (t_logp - logp)).sum(-1).mean()
            loss = loss + kd_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if on_step is not None:
            on_step()
    model.eval()
    return model


def encode_corpus(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def sample_texts(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 64,
    logits_hook: LogitsHook | None = None,
) -> list[str]:
    """Seeded sampled continuations of ``prompts`` (the text after each prompt, not including it).

    Decoding is :func:`audit.decoding.decode`'s (prompts encoded with <s> as the HF backend does), in
    batches of ``batch_size``. Each prompt's noise is seeded by :func:`audit.decoding.row_seed` of (seed,
    its index in ``prompts``, prompt): a continuation depends neither on batch composition nor on torch's
    global RNG, and a prompt listed twice gets two independent answers (a teacher asked twice). ``temperature``
    0 is greedy. ``logits_hook`` steers the sampling (a watermark's green-list bias, see :mod:`audit.watermark`).
    """
    model.eval()
    encoded = [list(ids) for ids in tokenizer(list(prompts), add_special_tokens=True)["input_ids"]]
    out: list[str] = []
    for start in range(0, len(encoded), batch_size):
        chunk = list(prompts[start : start + batch_size])
        seeds = [row_seed(seed, prompt, index=start + i) for i, prompt in enumerate(chunk)] if temperature > 0 else None
        generations = decode(model, tokenizer, encoded[start : start + batch_size], max_new_tokens, row_seeds=seeds,
                             temperature=temperature, logits_hook=logits_hook)
        out.extend(g.text for g in generations)
    return out


def layer_initialised(teacher: Any, tokenizer: Any, blocks: Sequence[int], seed: int) -> Any:
    """A DistilGPT2-style student: ``len(blocks)`` transformer blocks copied from the teacher's ``blocks``
    (student block i <- teacher block blocks[i]), with the teacher's embeddings, final norm and head; anything
    else keeps a fresh seeded initialisation. Train it afterwards, as DistilBERT and DistilGPT2 were."""
    import re

    config = teacher.config
    arch = "gpt2" if config.model_type == "gpt2" else "llama"
    hidden = config.n_embd if arch == "gpt2" else config.hidden_size
    heads = config.n_head if arch == "gpt2" else config.num_attention_heads
    context = config.n_positions if arch == "gpt2" else config.max_position_embeddings
    student = new_model(tokenizer, TinyConfig(hidden=hidden, layers=len(blocks), heads=heads, context=context,
                                              arch=arch), seed)
    source = teacher.state_dict()
    state = student.state_dict()
    for name in state:
        found = re.search(r"\.(layers|h)\.(\d+)\.", name)
        origin = name
        if found is not None:
            origin = name.replace(f".{found.group(1)}.{found.group(2)}.",
                                  f".{found.group(1)}.{blocks[int(found.group(2))]}.", 1)
        if origin in source and source[origin].shape == state[name].shape:
            state[name] = source[origin].clone()
    student.load_state_dict(state)
    return student
