"""Content fingerprints of everything that decides a local model's outputs.

Weights are hashed per tensor (name, dtype, shape, raw bytes) in sorted name order, so the same
weights re-sharded into other files, or saved in another tensor order, give the same hash. A GGUF
file is hashed as a file. The tokenizer is hashed from its canonical serialisation, so two copies of
the same tokenizer saved by different library versions agree. The configuration (``config.json``,
the generation config, the tokenizer's config and chat template) is hashed from its canonical JSON
without the keys that only say which library version wrote it: a copy of a model whose activation or
RoPE base was edited is another model, and must never share its cache entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping

_CHUNK = 1 << 22


def _tensor_record(name: str, dtype: str, shape: Iterable[int], data_digest: str) -> bytes:
    return json.dumps([name, dtype, list(shape), data_digest], separators=(",", ":")).encode()


# Bytes per element of each safetensors dtype, to check that a header's offsets match its shapes.
_ST_DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                  "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100 << 20  # the format's own reader refuses headers past 100 MB


def _read_safetensors_header(fh: BinaryIO, size: int) -> tuple[dict[str, Any], int]:
    """The header of an open .safetensors file, checked against the file's size; ValueError when it lies."""
    head = fh.read(8)
    if len(head) < 8:
        raise ValueError("too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", head)
    if header_len > min(_MAX_HEADER, size - 8):
        raise ValueError(f"header claims {header_len} bytes, more than the file holds or the format allows")
    try:
        header = json.loads(fh.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    data_size = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(info, dict) and info.get("dtype") in _ST_DTYPE_SIZE
              and isinstance(info.get("shape"), list) and all(type(d) is int and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(type(o) is int for o in info["data_offsets"]))
        if not ok:
            raise ValueError(f"tensor {name}: malformed header entry")
        begin, end = info["data_offsets"]
        count = 1
        for d in info["shape"]:
            count *= d
        if not 0 <= begin <= end <= data_size or end - begin != count * _ST_DTYPE_SIZE[info["dtype"]]:
            raise ValueError(f"tensor {name}: its data lies outside the file (truncated?) or does not match "
                             f"its shape {info['shape']}")
    return header, 8 + header_len


def safetensors_fingerprint(files: Iterable[Path]) -> str:
    """sha256 over every tensor of one or more .safetensors files, independent of sharding.

    Each file's header is checked against the file first (offsets inside it, sizes matching shapes), so a
    truncated or lying file is a ValueError naming it rather than a crash or a huge allocation later."""
    jobs: list[tuple[Path, str, str, list[int], int, int]] = []  # (file, tensor, dtype, shape, start, length)
    for path in files:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            try:
                header, base = _read_safetensors_header(fh, size)
            except ValueError as exc:
                raise ValueError(f"{path.name}: {exc}") from None
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            jobs.append((path, name, info["dtype"], info["shape"], base + begin, end - begin))

    def tensor_record(job: tuple[Path, str, str, list[int], int, int]) -> tuple[str, bytes]:
        path, name, dtype, shape, start, remaining = job
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as fh:
            fh.seek(start)
            while remaining > 0:
                chunk = fh.read(min(_CHUNK, remaining))
                if not chunk:
                    raise ValueError(f"{path.name}: truncated tensor {name}")
                digest.update(chunk)
                remaining -= len(chunk)
        return name, _tensor_record(name, dtype, shape, digest.hexdigest())

    # tensors are hashed side by side (sha256 releases the GIL on large buffers): the same records, in the time of
    # the largest share rather than of the whole file on one core
    workers = max(1, min(4, os.cpu_count() or 1))
    jobs.sort(key=lambda job: -job[5])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        records = dict(pool.map(tensor_record, jobs))
    total = hashlib.sha256()
    for name in sorted(records):
        total.update(records[name])
    return total.hexdigest()


def state_dict_fingerprint(state_dict: Mapping[str, object]) -> str:
    """Same scheme as :func:`safetensors_fingerprint`, for weights already in memory (pickle checkpoints)."""
    import torch

    total = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        assert isinstance(tensor, torch.Tensor)
        t = tensor.detach().cpu().contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        dtype = _TORCH_TO_ST_DTYPE.get(str(t.dtype), str(t.dtype))
        total.update(_tensor_record(name, dtype, t.shape, hashlib.sha256(raw).hexdigest()))
    return total.hexdigest()


_TORCH_TO_ST_DTYPE = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
}


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the tokenizer's canonical form: the fast backend's JSON with sorted keys, else its vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        canonical = json.loads(backend.to_str())
    else:  # slow tokenizers: vocab plus special tokens is what decides the ids
        get_vocab = tokenizer.get_vocab
        canonical = {"vocab": sorted(get_vocab().items())}
    specials = getattr(tokenizer, "special_tokens_map", {})
    blob = json.dumps({"backend": canonical, "special": specials}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


# Files beside the weights that change what the model computes or how it is prompted. The tokenizer's own
# vocabulary and rules are covered by tokenizer_fingerprint.
CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.json",
    "chat_template.jinja",
)
# Keys that record who wrote a file, or how it was loaded when it was saved again, not what the model does.
_VOLATILE_CONFIG_KEYS = frozenset({
    "transformers_version", "_name_or_path", "name_or_path", "_commit_hash", "local_files_only",
    "trust_remote_code", "cache_dir", "revision", "token", "use_auth_token", "force_download", "_from_pipeline",
})


def config_fingerprint(directory: Path) -> str:
    """sha256 over the canonical form of every configuration file present in a checkpoint directory."""
    total = hashlib.sha256()
    for name in CONFIG_FILES:
        path = directory / name
        if not path.is_file():
            continue
        raw = path.read_bytes()
        if name.endswith(".json"):
            try:
                data = json.loads(raw.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"{name}: not valid JSON ({exc})") from None
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS}
            raw = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
        total.update(json.dumps([name, hashlib.sha256(raw).hexdigest()]).encode())
    return total.hexdigest()


def combine(weights: str, tokenizer: str, config: str = "") -> str:
    """The model's identity: weights, tokenizer and (when known separately from the weights) configuration."""
    text = f"weights:{weights};tokenizer:{tokenizer}" + (f";config:{config}" if config else "")
    return hashlib.sha256(text.encode()).hexdigest()
