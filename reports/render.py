"""One Jinja environment (autoescape on, StrictUndefined); templates format, Python decides."""

from __future__ import annotations

import re
from typing import Any, Mapping

import jinja2

from reports.view import build_view, untrusted


def _p_value(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def template_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pvalue"] = _p_value
    env.filters["untrusted"] = untrusted
    env.filters["md"] = _markdown_text
    return env


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def _markdown_text(text: Any) -> str:
    """Model or user text made inert in Markdown: one line, every markup character escaped, in a code-free
    form that GitHub and GitLab render as the literal characters."""
    one_line = " ".join(str("" if text is None else text).split())
    return _INVISIBLE_MD.sub(lambda m: f"U+{ord(m.group()):04X}", _MD_SPECIAL.sub(r"\\\1", one_line))


_INVISIBLE_MD = re.compile("[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def render_html(result: Mapping[str, Any]) -> str:
    """The self-contained HTML evidence report, from the result document alone (same input, same bytes)."""
    return template_environment().get_template("report.html.j2").render(**build_view(result))


def render_markdown(result: Mapping[str, Any]) -> str:
    """A short Markdown summary for tickets and pull requests."""
    return template_environment().get_template("summary.md.j2").render(r=result)


def render_summary(result: Mapping[str, Any], result_path: str, title: str = "audit") -> str:
    """The plain-text verdict the CLI prints after a run."""
    return template_environment().get_template("summary.txt.j2").render(
        result=result, path=result_path, title=title
    )
