"""The HTML report in a real browser (headless Chromium): it renders, makes no network request, logs no
console message, and hostile model text does not run. Skips with the reason where Chromium is missing,
unless DISTILL_AUDIT_REQUIRE_BROWSER is set (CI sets it once Chromium is installed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from distill_audit.reports import render_html
from tests.test_reports import _hostile

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("DISTILL_AUDIT_REQUIRE_BROWSER"):
        pytest.fail("DISTILL_AUDIT_REQUIRE_BROWSER is set but no Chromium is on PATH")
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); .ci/run installs it")


def _load(page: Path, tmp_path: Path) -> dict[str, Any]:
    """Open ``page`` headless; return its screenshot, console messages and the requests the page made."""
    shot, netlog = tmp_path / f"{page.stem}.png", tmp_path / f"{page.stem}.netlog.json"
    proc = subprocess.run(
        [_browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", f"--log-net-log={netlog}", "--window-size=1280,2400",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    log = json.loads(netlog.read_text())
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    # Requests the browser makes for itself carry no origin; those a page makes carry the page's ("null" for file:).
    requests = [e["params"]["url"] for e in log["events"]
                if kinds.get(e["type"]) == "URL_REQUEST_START_JOB" and "url" in e.get("params", {})
                and e["params"].get("initiator") != "not an origin"]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return {"shot": shot, "requests": requests, "console": console, "returncode": proc.returncode}


def test_the_harness_sees_requests_and_console_messages(tmp_path: Path) -> None:
    """The checks below can fail: a page that fetches and logs is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="http://example.invalid/x.png"><script>console.error("boom")</script></body></html>')
    seen = _load(bad, tmp_path)
    assert seen["requests"] == ["http://example.invalid/x.png"]
    assert any("boom" in line for line in seen["console"])


def test_report_renders_offline_with_no_errors_and_hostile_text_inert(demo_run: dict[str, Any], tmp_path: Path) -> None:
    result = _hostile(demo_run["distilled"])
    for e in result["evidence"]:
        for ex in e["examples"]:
            ex["prompt"] = '<script>console.error("model text ran")</script>' + ex["prompt"]
    page = tmp_path / "report.html"
    page.write_text(render_html(result))
    seen = _load(page, tmp_path)
    assert seen["returncode"] == 0
    assert seen["requests"] == []  # nothing fetched: CSS inline, charts inline SVG, no fonts or scripts
    assert seen["console"] == []  # no error, and none of the hostile scripts ran
    png = seen["shot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a real screenshot of a laid-out page
