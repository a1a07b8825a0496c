"""Local Hugging Face causal LMs: a checkpoint directory, a hub id already in the local cache, or a GGUF file.

Never touches the network: every load is ``local_files_only``. Safetensors are preferred and pickle
checkpoints refused unless asked for; remote code runs only when asked for.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from distill_audit import fingerprint as fp
from distill_audit.backends.base import (
    Capability,
    GenerateParams,
    Generation,
    ModelAdapter,
    ScoredText,
    pool_spans,
    report_each,
)
from distill_audit.decoding import cache_kwarg, context_limit, decode, row_seed
from distill_audit.errors import ModelLoadError

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The output head's statistics (bench/throughput.py --against lm-eval measured these on SmolLM2-135M, 2 CPU cores):
# on a CPU, one matmul over up to _HEAD_ROWS positions, then the statistics in blocks of _STAT_ROWS rows, whose
# [rows, vocab] logits stay in the core's L2 cache through the several passes; on an accelerator, one block.
_HEAD_ROWS = 512
_STAT_ROWS = 16
_ACCELERATOR_HEAD_ROWS = 4096
# Texts of one batch that share at least this many leading tokens are scored with those tokens run once.
_MIN_SHARED_TOKENS = 8
_RENDERED_KEPT = 1 << 16  # chat renderings kept per model (an audit's probes in each of its formats)
# Top-k through groups: the k largest logits lie in the k groups with the largest maxima, so topk runs over those
# groups' members (k x _TOPK_GROUP) instead of the whole vocabulary.
_TOPK_GROUP = 128


@dataclass(frozen=True)
class LoadOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device_map: str | None = None  # "auto" spreads a model too large for one device
    allow_pickle: bool = False
    trust_remote_code: bool = False


@dataclass(frozen=True)
class ResolvedSource:
    directory: Path
    gguf_file: str | None
    origin: str  # what the user typed, recorded in results


def resolve_device(requested: str) -> str:
    if requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"--device {requested}: CUDA is not available on this machine")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    if requested != "auto":
        if requested not in _DTYPES:
            raise ModelLoadError(f"--dtype {requested}: choose one of auto, {', '.join(_DTYPES)}")
        return _DTYPES[requested]
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_source(spec: str) -> ResolvedSource:
    """Turn what the user typed into a local directory (+ GGUF file name), or raise one clear error."""
    path = Path(spec).expanduser()
    if path.exists():
        if not os.access(path, os.R_OK):
            raise ModelLoadError(f"{spec}: permission denied")
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise ModelLoadError(f"{spec}: not a model directory or a .gguf file")
            return ResolvedSource(path.parent, path.name, spec)
        if not (path / "config.json").exists():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ResolvedSource(path, ggufs[0], spec)
            if ggufs:
                raise ModelLoadError(f"{spec}: several .gguf files ({', '.join(ggufs)}); name one of them")
            raise ModelLoadError(f"{spec}: no config.json, so not a Hugging Face model directory")
        return ResolvedSource(path, None, spec)
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~"))
    if looks_like_hub_id:
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(spec, local_files_only=True)
        except Exception as exc:  # any failure means "not in the local cache"
            raise ModelLoadError(
                f"{spec}: no such path, and not in the local Hugging Face cache "
                "(distill-audit never downloads; fetch it first, e.g. `hf download " + spec + "`)"
            ) from exc
        return ResolvedSource(Path(local), None, spec)
    raise ModelLoadError(f"{spec}: no such file or directory")


def _weights_files(directory: Path, allow_pickle: bool, origin: str) -> tuple[list[Path], bool]:
    """The weight files to load and whether they are pickles; refuses pickles unless allowed."""
    safetensors = sorted(directory.glob("*.safetensors"))
    if safetensors:
        return safetensors, False
    pickles = sorted(directory.glob("pytorch_model*.bin")) + sorted(directory.glob("*.pt"))
    if pickles:
        if not allow_pickle:
            raise ModelLoadError(
                f"{origin}: weights are pickle files ({pickles[0].name}), which can run code when loaded; "
                "convert them to safetensors, or pass --allow-pickle if you trust their source"
            )
        return pickles, True
    raise ModelLoadError(f"{origin}: no weights found (*.safetensors or, with --allow-pickle, *.bin)")


def _weights_hash(files: list[Path], is_pickle: bool, is_gguf: bool, origin: str) -> str:
    """The weights' content hash; for pickles a placeholder, replaced once the weights are loaded."""
    if is_pickle:
        return ""
    try:
        return fp.file_fingerprint(files[0]) if is_gguf else fp.safetensors_fingerprint(files)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{origin}: damaged weights file: {_first_line(exc)}") from None


def _check_complete(info: Mapping[str, Any], origin: str) -> None:
    """Refuse a model whose checkpoint does not fill it: a missing weight would be randomly initialised and
    an unexpected one means the config describes another model. Weights tied to others are not reported
    missing by the loader, so they pass."""
    problems = []
    for key, what in (("missing_keys", "missing"), ("unexpected_keys", "unexpected"),
                      ("mismatched_keys", "of the wrong shape")):
        names = sorted(str(n if isinstance(n, str) else n[0]) for n in info.get(key) or ())
        if names:
            problems.append(f"{len(names)} weight(s) {what} (e.g. {names[0]})")
    if problems:
        raise ModelLoadError(f"{origin}: the checkpoint does not match its config: {'; '.join(problems)}; "
                             "an incomplete model would be audited with random weights, so it is refused")


def _check_causal_lm(config: Any, origin: str) -> None:
    from transformers import AutoModelForCausalLM

    mapping = getattr(AutoModelForCausalLM, "_model_mapping", None)
    if mapping is not None and type(config) not in mapping and not getattr(config, "auto_map", None):
        arch = ", ".join(getattr(config, "architectures", None) or [type(config).__name__])
        raise ModelLoadError(f"{origin}: {arch} is not a causal (decoder) language model")


class HFAdapter(ModelAdapter):
    """A local transformers causal LM behind the :class:`~audit.backends.base.ModelAdapter` contract."""

    def __init__(self, model: Any, tokenizer: Any, name: str, fingerprint: dict[str, str], device: str):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self._fingerprint = fingerprint
        self.device = device
        self.forward_passes = 0  # counted so benchmarks and tests can prove the cache saved work
        self._fast_head = self._fast_head_matches()
        self._shares_prefixes: bool | None = None  # decided at the first scoring (see shares_prefixes)
        self._mlp_weights: list[np.ndarray] | None = None
        self._rendered: dict[tuple[tuple[tuple[str, str], ...], ...], str | None] = {}  # chat_prompt's renderings

    # -- loading -----------------------------------------------------------------------------------
    @classmethod
    def load(cls, spec: str, options: LoadOptions = LoadOptions(), name: str | None = None) -> "HFAdapter":
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        source = resolve_source(spec)
        device = resolve_device(options.device)
        dtype = resolve_dtype(options.dtype, device)
        common: dict[str, Any] = {"local_files_only": True, "trust_remote_code": options.trust_remote_code}
        if source.gguf_file is not None:
            try:
                import gguf  # noqa: F401
            except ImportError as exc:
                raise ModelLoadError(
                    f"{spec}: loading GGUF needs the gguf package: pip install 'distill-audit[gguf]'"
                ) from exc
            common["gguf_file"] = source.gguf_file
            is_pickle = False
            weight_files: list[Path] = [source.directory / source.gguf_file]
        else:
            weight_files, is_pickle = _weights_files(source.directory, options.allow_pickle, spec)
            if not any((source.directory / f).exists() for f in _TOKENIZER_FILES):
                raise ModelLoadError(f"{spec}: no tokenizer files (tokenizer.json or tokenizer_config.json)")
        try:
            config = AutoConfig.from_pretrained(source.directory, **common)
        except Exception as exc:  # OSError for bad JSON, ValueError, KeyError for an unknown model type, ...
            if "trust_remote_code" in str(exc) and not options.trust_remote_code:
                raise ModelLoadError(
                    f"{spec}: the checkpoint ships its own model code, which is not run by default; "
                    "pass --trust-remote-code only if you trust its source"
                ) from exc
            raise ModelLoadError(f"{spec}: cannot read the model config: {_first_line(exc)}") from exc
        _check_causal_lm(config, spec)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source.directory, **common)
        except Exception as exc:
            raise ModelLoadError(f"{spec}: cannot load the tokenizer: {_first_line(exc)}") from exc
        # Weights are hashed (and a safetensors header checked against its file) before anything is loaded,
        # so a truncated or lying file is refused with one line instead of crashing the loader.
        weights_hash = _weights_hash(weight_files, is_pickle, source.gguf_file is not None, spec)
        load_kwargs: dict[str, Any] = dict(common, dtype=dtype, output_loading_info=True)
        if source.gguf_file is None:
            load_kwargs["use_safetensors"] = not is_pickle
        if options.device_map:
            load_kwargs["device_map"] = options.device_map
        try:
            loaded: Any = AutoModelForCausalLM.from_pretrained(source.directory, **load_kwargs)
            model, info = loaded
        except Exception as exc:  # any failure inside the loader is a checkpoint the user must fix
            if isinstance(exc, ModelLoadError):
                raise
            if isinstance(exc, pickle.UnpicklingError):
                raise ModelLoadError(f"{spec}: the pickle checkpoint holds more than plain tensors, which torch's "
                                     "safe loader (weights_only) refuses to run; convert it to safetensors where you "
                                     "trust it") from exc
            raise ModelLoadError(f"{spec}: cannot load the model: {_first_line(exc)}") from exc
        _check_complete(info, spec)
        if not options.device_map:
            model.to(device)
        model.eval()
        if tokenizer.pad_token_id is None:
            # Padding positions are masked out, so any id works; eos is the usual choice.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
        if is_pickle:
            weights_hash = fp.state_dict_fingerprint(model.state_dict())
        tokenizer_hash = fp.tokenizer_fingerprint(tokenizer)
        # a GGUF file holds its own configuration, so its file hash covers it
        try:
            config_hash = "" if source.gguf_file is not None else fp.config_fingerprint(source.directory)
        except ValueError as exc:
            raise ModelLoadError(f"{spec}: {exc}") from None
        fingerprint = {
            "model": fp.combine(weights_hash, tokenizer_hash, config_hash),
            "weights": weights_hash,
            "tokenizer": tokenizer_hash,
            "format": "gguf" if source.gguf_file else ("pickle" if is_pickle else "safetensors"),
            # the same model in another dtype or on another kind of device gives other numbers: cached
            # answers are kept apart by this too (it is not part of the model's identity)
            "numerics": f"{str(model.dtype).replace('torch.', '')}/{torch.device(device).type}",
        }
        if config_hash:
            fingerprint["config"] = config_hash
        log.info("loaded %s (%s, %s, %s)", spec, type(model).__name__, device, dtype)
        return cls(model, tokenizer, name or spec, fingerprint, device if not options.device_map else "auto")

    # -- contract ----------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(Capability)

    @property
    def fingerprint(self) -> dict[str, str]:
        return dict(self._fingerprint)

    @property
    def runtime(self) -> dict[str, str]:
        """Where and how the model runs, for the result's record."""
        return {
            "backend": "hf",
            "class": type(self.model).__name__,
            "device": self.device,
            "dtype": str(self.model.dtype).replace("torch.", ""),
        }

    @property
    def context_length(self) -> int | None:
        return context_limit(self.model)

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self._encode(texts)]

    def _encode_with_offsets(self, texts: Sequence[str]) -> tuple[list[list[int]], list[np.ndarray]]:
        """Token ids and each token's character span, from one tokenizer pass where the tokenizer is fast."""
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(list(texts), add_special_tokens=True, return_offsets_mapping=True)
            offsets = [np.asarray(o, dtype=np.int64).reshape(-1, 2) for o in enc["offset_mapping"]]
            return [list(ids) for ids in enc["input_ids"]], offsets
        # Slow tokenizers have no offsets: recover them from the growth of the decoded prefix.
        encoded = self._encode(texts)
        out = []
        for ids in encoded:
            spans, prev = [], 0
            for i in range(len(ids)):
                end = len(self.tokenizer.decode(ids[: i + 1], skip_special_tokens=True))
                spans.append((prev, max(prev, end)))
                prev = max(prev, end)
            out.append(np.asarray(spans, dtype=np.int64).reshape(-1, 2))
        return encoded, out

    def _pad_right(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids in batch)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            mask[row, : len(ids)] = 1
        return input_ids.to(self.input_device), mask.to(self.input_device)

    def _fast_head_matches(self) -> bool:
        """Whether base model + output head reproduces the full forward's logits for this architecture.

        The fast path runs the output head only on real (non-padding) positions, the bulk of the cost
        for small models with large vocabularies. Architectures that post-process logits (soft-capping,
        scaling) fail this check and use the plain forward instead.
        """
        head = self.model.get_output_embeddings()
        if head is None or getattr(self.model, "base_model", None) is None:
            return False
        ids = torch.tensor([[self.tokenizer.pad_token_id or 0, 1, 2, 3]], device=self.input_device)
        ids = ids.clamp(max=self.model.config.vocab_size - 1)
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits.float()
            hidden = self.model.base_model(input_ids=ids)[0]
            fast = head(hidden).float()
        return bool(torch.allclose(full, fast, atol=1e-4, rtol=1e-4))

    def _position_logits(self, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Hidden states (or logits) at every position that predicts a real next token, flattened."""
        predicts = mask[:, 1:].bool()
        self.forward_passes += 1
        if self._fast_head:
            hidden = self.model.base_model(input_ids=input_ids, attention_mask=mask)[0]
            return hidden[:, :-1][predicts], self.model.get_output_embeddings()
        logits = self.model(input_ids=input_ids, attention_mask=mask).logits
        return logits[:, :-1][predicts], None

    def score(self, texts: Sequence[str], top_k: int,
              on_result: Callable[[int, ScoredText], None] | None = None) -> list[ScoredText]:
        if not texts:
            return []
        encoded, offsets = self._encode_with_offsets(texts)
        k = max(1, min(top_k, self.model.config.vocab_size))
        groups = (prefix_groups(encoded, _MIN_SHARED_TOKENS)
                  if all(len(ids) > 1 for ids in encoded) and self.shares_prefixes else [])
        with torch.inference_mode():
            if any(len(rows) > 1 for _, rows in groups):
                stats = self._shared_prefix_statistics(encoded, groups, k)
            else:
                input_ids, mask = self._pad_right(encoded)
                targets = input_ids[:, 1:][mask[:, 1:].bool()]
                rows, head = self._position_logits(input_ids, mask)
                flat = head_statistics(rows, head, targets, k)
                bounds = np.cumsum([0] + [max(len(ids) - 1, 0) for ids in encoded])
                stats = [tuple(a[bounds[i]:bounds[i + 1]] for a in flat) for i in range(len(encoded))]
        results = []
        for ids, offs, (row_lp, row_ids, row_top_lp, row_entropy, row_var) in zip(encoded, offsets, stats):
            # the first token has no prediction
            results.append(
                ScoredText(
                    token_ids=np.asarray(ids, dtype=np.int64),
                    offsets=offs,
                    target_logprob=np.concatenate([[np.nan], row_lp]).astype(np.float32),
                    topk_ids=np.concatenate([np.full((1, k), -1), row_ids]).astype(np.int64),
                    topk_logprobs=np.concatenate([np.full((1, k), np.nan), row_top_lp]).astype(np.float32),
                    entropy=np.concatenate([[np.nan], row_entropy]).astype(np.float32),
                    logprob_var=np.concatenate([[np.nan], row_var]).astype(np.float32),
                )
            )
        return report_each(results, on_result)

    @property
    def shares_prefixes(self) -> bool:
        """Whether texts of one batch that begin with the same tokens are scored with that beginning run once (the
        same probe read with several answers): checked once per model against scoring each text whole."""
        if self._shares_prefixes is None:
            self._shares_prefixes = self._shared_prefix_matches()
        return self._shares_prefixes

    def _shared_prefix_statistics(self, encoded: list[list[int]], groups: list[tuple[int, list[int]]],
                                  k: int) -> list[tuple[np.ndarray, ...]]:
        """Per row, the head statistics of its positions 0..n-2, computed in two passes: each group's shared
        tokens once (keeping their KV cache), then every row's own tokens on its group's cache."""
        base = self.model.base_model
        kwarg = cache_kwarg(base)
        prefixes = [encoded[rows[0]][:shared] for shared, rows in groups]
        p_ids, p_mask = self._pad_right(prefixes)
        self.forward_passes += 1
        out = base(input_ids=p_ids, attention_mask=p_mask, use_cache=True)
        p_hidden, cache = out[0], getattr(out, kwarg)
        order = [(g, row) for g, (_, rows) in enumerate(groups) for row in rows]
        suffixes = [encoded[row][groups[g][0]:] for g, row in order]
        s_ids, s_mask = self._pad_right(suffixes)
        index = torch.tensor([g for g, _ in order], device=p_ids.device)
        cache.batch_select_indices(index)
        starts = torch.tensor([groups[g][0] for g, _ in order], device=p_ids.device)
        positions = starts[:, None] + torch.arange(s_ids.shape[1], device=p_ids.device)[None, :]
        # a padding position is masked out, but a long shared beginning plus the batch's longest own ending may pass
        # the context, where absolute position embeddings have no row: padding keeps its row's first position
        positions = torch.where(s_mask.bool(), positions, starts[:, None])
        self.forward_passes += 1
        s_hidden = base(input_ids=s_ids, attention_mask=torch.cat([p_mask[index], s_mask], dim=1),
                        position_ids=positions, use_cache=False, **{kwarg: cache})[0]
        # rows of the head: each group's shared positions that predict a shared token, then each row's last shared
        # position (it predicts the row's first own token) and its own positions but the last
        hidden_rows, targets = [], []
        for g, (shared, _) in enumerate(groups):
            hidden_rows.append(p_hidden[g, : shared - 1])
            targets.extend(prefixes[g][1:shared])
        for i, (g, _) in enumerate(order):
            n_own = len(suffixes[i])
            hidden_rows.append(p_hidden[g, groups[g][0] - 1 : groups[g][0]])
            hidden_rows.append(s_hidden[i, : n_own - 1])
            targets.extend(suffixes[i])
        flat = head_statistics(torch.cat(hidden_rows), self.model.get_output_embeddings(),
                               torch.tensor(targets, dtype=torch.long), k)
        cursor, shared_stats = 0, []
        for shared, _ in groups:
            shared_stats.append(tuple(a[cursor : cursor + shared - 1] for a in flat))
            cursor += shared - 1
        out_stats: list[tuple[np.ndarray, ...]] = [()] * len(encoded)
        for i, (g, row) in enumerate(order):
            n_own = len(suffixes[i])
            own = tuple(a[cursor : cursor + n_own] for a in flat)
            cursor += n_own
            out_stats[row] = tuple(np.concatenate([s, o]) for s, o in zip(shared_stats[g], own))
        return out_stats

    def _shared_prefix_matches(self) -> bool:
        """Whether this architecture scores texts through a shared prefix's KV cache as it scores them whole
        (within float tolerance): models whose cache cannot be re-indexed or that need more than positions and a
        mask to continue one (or whose output head post-processes logits) score every text whole."""
        if not self._fast_head:
            return False
        vocab = self.model.config.vocab_size
        base = [(7 * i + 3) % vocab for i in range(_MIN_SHARED_TOKENS + 4)]
        encoded = [base + [5 % vocab, 9 % vocab], base + [11 % vocab], base[:-2] + [13 % vocab, 2 % vocab, 4 % vocab]]
        groups = prefix_groups(encoded, _MIN_SHARED_TOKENS)
        if not any(len(rows) > 1 for _, rows in groups):
            return False
        passes = self.forward_passes
        try:
            with torch.inference_mode():
                shared = self._shared_prefix_statistics(encoded, groups, 5)
                input_ids, mask = self._pad_right(encoded)
                rows, head = self._position_logits(input_ids, mask)
                whole = head_statistics(rows, head, input_ids[:, 1:][mask[:, 1:].bool()], 5)
        except Exception as exc:  # an architecture whose cache or forward does not take this: score texts whole
            log.debug("%s: shared-prefix scoring unavailable (%s)", self.name, _first_line(exc))
            return False
        finally:
            self.forward_passes = passes
        joined = np.concatenate([s[0] for s in shared])
        # rounding differs between the two paths by about the dtype's precision (a 16-bit model's log-probs by
        # hundredths); a cache that an architecture cannot be continued from differs by whole nats
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 0.1
        matches = bool(np.allclose(joined, whole[0], atol=tolerance, rtol=tolerance))
        log.debug("%s: shared-prefix scoring %s", self.name, "on" if matches else "off (differs from scoring whole)")
        return matches

    def generate(self, prompts: Sequence[str], params: GenerateParams,
                 on_result: Callable[[int, Generation], None] | None = None) -> list[Generation]:
        """Greedy or seeded sampling through :func:`audit.decoding.decode`, one KV cache per batch.

        Each row's noise is seeded by :func:`audit.decoding.row_seed` of (seed, prompt), so a prompt's
        continuation does not depend on which other prompts share its batch, and a cached answer stays valid.
        """
        seeds = [row_seed(params.seed, prompt) for prompt in prompts] if params.do_sample else None
        results = decode(self.model, self.tokenizer, self._encode(prompts), params.max_new_tokens, row_seeds=seeds,
                         temperature=params.temperature, top_k=max(1, params.top_k), on_forward=self._count_forward)
        return report_each(results, on_result)

    def _count_forward(self) -> None:
        self.forward_passes += 1

    def local_tokenizer(self) -> Any:
        return self.tokenizer

    def chat_prompt(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        """The model's own chat template applied to a conversation ending with a user turn, ready for the answer;
        None without a template, or when the template cannot render it (e.g. a system turn it does not allow)."""
        if not getattr(self.tokenizer, "chat_template", None):
            return None
        # an audit renders each probe many times per model (every detector, every answer read, every negative
        # control): the template is a pure function of the conversation, so each one is rendered once
        key = tuple(tuple(sorted((str(k), str(v)) for k, v in m.items())) for m in messages)
        if key not in self._rendered:
            if len(self._rendered) >= _RENDERED_KEPT:
                self._rendered.clear()
            self._rendered[key] = self._render_chat(messages)
        return self._rendered[key]

    def _render_chat(self, messages: Sequence[Mapping[str, str]]) -> str | None:
        try:
            text = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # a template that cannot render this conversation: the caller decides
            log.info("%s: chat template cannot render the conversation (%s)", self.name, _first_line(exc))
            return None
        bos = self.tokenizer.bos_token
        # The template usually writes the BOS token itself; when encoding adds it too, it is cut here so the model
        # reads it once. Only then: SmolLM2's BOS is <|im_start|>, which its encoding does not add, and cutting it
        # would hand the model a conversation without its first turn marker.
        if bos and isinstance(text, str) and text.startswith(bos) and self._encoding_adds_bos():
            text = text[len(bos):]
        return str(text)

    def _encoding_adds_bos(self) -> bool:
        bos_id = self.tokenizer.bos_token_id
        ids = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        return bos_id is not None and bool(ids) and ids[0] == bos_id

    @property
    def n_layers(self) -> int:
        """Transformer blocks; hidden-state layer 0 is the embeddings, so layers run 0..n_layers."""
        config = self.model.config
        for attr in ("num_hidden_layers", "n_layer", "num_layers"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return 0

    def mlp_weights(self) -> list[np.ndarray]:
        """Per transformer block, the MLP's input weights as one row per hidden unit: ``[units, d_model * k]``
        (k input projections side by side, e.g. Llama's up and gate). Empty when none are recognised.

        A unit's row is what it reads from the residual stream; permuting a block's units permutes these
        rows, which is what the weight-lineage test relies on. Found by shape: inside a block's MLP, the
        linear maps (nn.Linear, or GPT-2's transposed Conv1D) from d_model to a wider space. Extracted once
        (weights do not change), since needs checks, negative controls and the test all ask for them."""
        if self._mlp_weights is None:
            self._mlp_weights = self._extract_mlp_weights()
        return self._mlp_weights

    def _extract_mlp_weights(self) -> list[np.ndarray]:
        import re

        from transformers.pytorch_utils import Conv1D

        d_model = self.model.get_input_embeddings().weight.shape[1]
        blocks: dict[int, list[torch.Tensor]] = {}
        for name, module in self.model.named_modules():
            if not re.search(r"(mlp|feed_forward|ffn|fc1|dense_h_to_4h)", name):
                continue
            if isinstance(module, torch.nn.Linear):
                weight = module.weight  # [out, in]
            elif isinstance(module, Conv1D):
                weight = module.weight.T  # stored [in, out]
            else:
                continue
            out_dim, in_dim = weight.shape
            found = re.search(r"\.(\d+)\.", f".{name}.")
            if found is None or in_dim != d_model or out_dim <= d_model:
                continue
            blocks.setdefault(int(found.group(1)), []).append(weight.detach().float().cpu())
        out = []
        for index in sorted(blocks):
            mats = blocks[index]
            if len({m.shape[0] for m in mats}) == 1:
                out.append(torch.cat(mats, dim=1).numpy().astype(np.float32, copy=False))
        return out

    def hidden_states(self, texts: Sequence[str], layers: Sequence[int],
                      spans: Sequence[Sequence[tuple[int, int]]] | None = None) -> list[np.ndarray]:
        """Per-token hidden states of the chosen layers (0 = embeddings, -1 = last): [layers, tokens, dim]; with
        ``spans``, pooled to them (:func:`pool_spans`): [layers, spans, dim]."""
        if not texts:
            return []
        encoded, offsets = self._encode_with_offsets(texts)
        input_ids, mask = self._pad_right(encoded)
        with torch.inference_mode():
            self.forward_passes += 1
            # the body alone where it gives the same hidden states: the output head's logits are not needed here
            body = self.model.base_model if self._fast_head else self.model
            out = body(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
            chosen = [out.hidden_states[layer].float().cpu() for layer in layers]
        per_token = [np.stack([h[row, : len(ids)].numpy() for h in chosen]).astype(np.float32)
                     for row, ids in enumerate(encoded)]
        if spans is None:
            return per_token
        return [pool_spans(h, offs, sp) for h, offs, sp in zip(per_token, offsets, spans)]


def prefix_groups(encoded: Sequence[Sequence[int]], min_shared: int) -> list[tuple[int, list[int]]]:
    """Rows grouped by a common leading run of token ids, as ``(shared tokens, rows)``, the shared run leaving every
    row at least one token of its own; a row alone is a group whose shared run is all but its last token.

    Rows are sorted by their ids, so rows that share a beginning are neighbours; neighbouring groups are merged,
    those sharing the longest runs first, whenever the merged group runs fewer tokens (its shared run once, then each
    row's own tokens) than the two apart, and shares at least ``min_shared`` tokens. A chat template's system turn,
    which every text begins with, thus joins texts of different probes only where it saves work."""
    order = sorted(range(len(encoded)), key=lambda i: list(encoded[i]))
    runs = [[i] for i in order]
    shared = [max(len(encoded[i]) - 1, 0) for i in order]
    bounds: list[int] = []  # common leading tokens of the rows either side of each gap between runs
    for x, y in zip(order, order[1:]):
        a, b = encoded[x], encoded[y]
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        bounds.append(n)
    while bounds and max(bounds) >= min_shared:
        k = max(range(len(bounds)), key=lambda j: bounds[j])
        left, right = runs[k], runs[k + 1]
        common = min(bounds[k], shared[k], shared[k + 1])
        total = sum(len(encoded[i]) for i in left + right)
        apart = shared[k] + shared[k + 1] + total - len(left) * shared[k] - len(right) * shared[k + 1]
        merged = common + total - (len(left) + len(right)) * common
        if common >= min_shared and merged < apart:
            runs[k : k + 2] = [left + right]
            shared[k : k + 2] = [common]
            del bounds[k]
        else:
            bounds[k] = -1  # never merged: these two stay apart
    return list(zip(shared, runs))


def grouped_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.topk(k, dim=-1)`` (values descending; the same values, and the same ids up to the order of ties),
    reading the whole vocabulary once for the group maxima and then only the members of the k best groups."""
    rows, vocab = logits.shape
    groups = -(-vocab // _TOPK_GROUP)
    if groups <= k or vocab < 4 * _TOPK_GROUP:
        return logits.topk(k, dim=-1)
    width = groups * _TOPK_GROUP
    padded = logits if width == vocab else torch.nn.functional.pad(logits, (0, width - vocab), value=-math.inf)
    grouped = padded.view(rows, groups, _TOPK_GROUP)
    best_groups = grouped.amax(dim=-1).topk(k, dim=-1).indices  # [rows, k]
    members = grouped.gather(1, best_groups[:, :, None].expand(rows, k, _TOPK_GROUP)).reshape(rows, k * _TOPK_GROUP)
    values, where = members.topk(k, dim=-1)
    ids = best_groups.gather(1, where // _TOPK_GROUP) * _TOPK_GROUP + where % _TOPK_GROUP
    return values, ids


def head_statistics(rows: torch.Tensor, head: Any, targets: torch.Tensor, k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per predicting position: the target's log-prob, the top-k ids and log-probs, the entropy and the variance of
    the log-probs under the model's distribution. ``rows``: hidden states (with ``head``, the output layer) or
    logits (``head`` None), [positions, ...]; ``targets``: the next token at each position."""
    n = rows.shape[0]
    on_cpu = rows.device.type == "cpu"
    head_rows = _HEAD_ROWS if on_cpu else _ACCELERATOR_HEAD_ROWS
    stat_rows = _STAT_ROWS if on_cpu else head_rows
    parts: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, n, head_rows):
        block_logits = head(rows[start : start + head_rows]) if head is not None else rows[start : start + head_rows]
        block_targets = targets[start : start + head_rows].to(block_logits.device)
        for sub in range(0, block_logits.shape[0], stat_rows):
            logits = block_logits[sub : sub + stat_rows].float()
            # Few passes over the [rows, vocab] block, one temporary: max, exp in place, sums.
            peak = logits.amax(dim=-1, keepdim=True)
            weights = logits.sub(peak).exp_()
            total = weights.sum(dim=-1)
            lse = peak[:, 0] + total.log()
            mean_logit = torch.linalg.vecdot(weights, logits) / total
            entropy = lse - mean_logit
            tgt = block_targets[sub : sub + stat_rows]
            target_lp = logits.gather(1, tgt[:, None])[:, 0] - lse
            top_vals, top_ids = grouped_topk(logits, k)
            # Var of log p under p equals Var of the logits under p (a shift); centred in place, read last.
            logits_var = torch.linalg.vecdot(weights, logits.sub_(mean_logit[:, None]).square_()) / total
            parts.append((target_lp, top_ids, top_vals - lse[:, None], entropy, logits_var))
    if not parts:
        return (np.zeros(0, np.float32), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32),
                np.zeros(0, np.float32), np.zeros(0, np.float32))
    lp, ids, top_lp, entropy, var = (torch.cat([p[i] for p in parts]).cpu().numpy() for i in range(5))
    return lp, ids, top_lp, entropy, var


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
