"""An in-toto Statement (v1) of the verdict, ready to sign with Sigstore/cosign tooling (not signed here).

Subjects are the teacher and the student, with distill-audit's model fingerprints (sha256 over every
tensor's name, dtype, shape and bytes; shard-invariant) as their digests. The predicate carries the
verdict, the per-detector p-values and the sha256 of result.json and of report.html, so a signature over
the statement binds the verdict to the exact evidence files.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://github.com/distill-audit/distill-audit/verdict/v1"
DIGEST_NAME = "distillAuditModelSha256"  # not a file digest: the tensor-level fingerprint described above


def statement(result: Mapping[str, Any], result_bytes: bytes, report_html: str) -> dict[str, Any]:
    subjects = []
    for m in result["models"]:
        if m["role"] in ("teacher", "student"):
            digest = {DIGEST_NAME: m["fingerprint"]["model"]}
            if m["fingerprint"].get("tokenizer"):
                digest["distillAuditTokenizerSha256"] = m["fingerprint"]["tokenizer"]
            subjects.append({"name": f"{m['role']}:{m['source']}", "digest": digest})
    v = result["verdict"]
    return {
        "_type": STATEMENT_TYPE,
        "subject": subjects,
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "verdict": v["label"],
            "p_value": v["p_value"],
            "alpha": v["alpha"],
            "combination": v.get("combination"),
            "detectors": {e["detector"]: {"p_value": e["p_value"], "null": e["null"]} for e in result["evidence"]},
            "negative_controls": {c["model"]: c["label"] for c in result.get("negative_controls", [])},
            "warnings": list(v.get("warnings", [])),
            "evidence": {
                "result.json": {"sha256": hashlib.sha256(result_bytes).hexdigest()},
                "report.html": {"sha256": hashlib.sha256(report_html.encode("utf-8")).hexdigest()},
            },
            "probe_sets": [{"name": p["name"], "sha256": p["hash"]} for p in result.get("probe_sets", [])],
            "tool": {"name": "distill-audit", "version": result.get("tool_version"),
                     "result_schema": result.get("schema_version")},
            "created_at": result.get("created_at"),
        },
    }


def render_statement(result: Mapping[str, Any], result_bytes: bytes, report_html: str) -> str:
    return json.dumps(statement(result, result_bytes, report_html), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
