"""Content fingerprints of model weights and tokenizers.

Weights are hashed per tensor (name, dtype, shape, raw bytes) in sorted name order, so the same
weights re-sharded into other files, or saved in another tensor order, give the same hash. A GGUF
file is hashed as a file. The tokenizer is hashed from its canonical serialisation, so two copies of
the same tokenizer saved by different library versions agree.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

_CHUNK = 1 << 22


def _tensor_record(name: str, dtype: str, shape: Iterable[int], data_digest: str) -> bytes:
    return json.dumps([name, dtype, list(shape), data_digest], separators=(",", ":")).encode()


def safetensors_fingerprint(files: Iterable[Path]) -> str:
    """sha256 over every tensor of one or more .safetensors files, independent of sharding."""
    records: dict[str, bytes] = {}
    for path in files:
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
            base = 8 + header_len
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                begin, end = info["data_offsets"]
                fh.seek(base + begin)
                digest = hashlib.sha256()
                remaining = end - begin
                while remaining > 0:
                    chunk = fh.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise ValueError(f"{path}: truncated tensor {name}")
                    digest.update(chunk)
                    remaining -= len(chunk)
                records[name] = _tensor_record(name, info["dtype"], info["shape"], digest.hexdigest())
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


def combine(weights: str, tokenizer: str) -> str:
    return hashlib.sha256(f"weights:{weights};tokenizer:{tokenizer}".encode()).hexdigest()
