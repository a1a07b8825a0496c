"""What an API costs an audit: the same teacher generations locally, over loopback HTTP at concurrency 1 and
N, with injected latency (a remote API's round trip), and again from the inference cache.

    python bench/api_throughput.py --model DIR [--n 64] [--latency 0.2] [--concurrency 8]

DIR is a local checkpoint (e.g. the demo teacher under ~/.cache/distill-audit/demo-models-v3/teacher).
The server is tests/openai_server.py in its own process, one model call at a time, so concurrency only
overlaps the waiting, as it would against a busy remote API. Prints ratios to the local run's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distill_audit.backends.base import GenerateParams  # noqa: E402
from distill_audit.backends.hf import HFAdapter  # noqa: E402
from distill_audit.backends.http import HTTPSettings  # noqa: E402
from distill_audit.backends.openai_compat import OpenAIAdapter, RemoteModel  # noqa: E402
from distill_audit.cache import InferenceCache  # noqa: E402
from distill_audit.engine import Engine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds added to every content request")
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    prompts = [f"Prompt number {i} begins" for i in range(args.n)]
    params = GenerateParams(max_new_tokens=24, top_k=10)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tests.openai_server", "--model", str(args.model), "--name", "m"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().split()[1])
        root = f"http://127.0.0.1:{port}"
        local = HFAdapter.load(str(args.model))
        t0 = time.perf_counter()
        Engine(InferenceCache(None), token_budget=1024, progress=False).generate(local, prompts, params)
        t_local = time.perf_counter() - t0
        rows = [("local, batched", t_local, 0)]
        with tempfile.TemporaryDirectory() as tmp:
            for conc in (1, args.concurrency):
                remote = OpenAIAdapter.connect(RemoteModel(root + "/v1", "m", tokenizer=str(args.model)), "teacher",
                                               HTTPSettings(concurrency=conc))
                body = json.dumps({"faults": [{"path": "/v1/completions", "kind": "slow", "seconds": args.latency,
                                               "times": args.n}]}).encode()
                urllib.request.urlopen(urllib.request.Request(root + "/_control/faults", data=body), timeout=10)
                cache = InferenceCache(Path(tmp) / f"c{conc}.sqlite")
                t0 = time.perf_counter()
                Engine(cache, progress=False).generate(remote, prompts, params)
                rows.append((f"HTTP, concurrency {conc}, +{args.latency:g}s latency", time.perf_counter() - t0,
                             remote.client.requests))
                before = remote.client.requests
                t0 = time.perf_counter()
                Engine(cache, progress=False).generate(remote, prompts, params)
                rows.append((f"HTTP, concurrency {conc}, rerun from cache", time.perf_counter() - t0,
                             remote.client.requests - before))
                cache.close()
    finally:
        proc.terminate()
    print(f"{args.n} prompts x {params.max_new_tokens} new tokens; ratios to the local batched run")
    print(f"{'run':<44} {'seconds':>8} {'ratio':>7} {'requests':>9}")
    for name, seconds, requests in rows:
        print(f"{name:<44} {seconds:8.2f} {seconds / t_local:7.2f} {requests:9d}")


if __name__ == "__main__":
    main()
