"""Jinja environments (StrictUndefined): HTML autoescaped, Markdown escaped on output; templates format, Python
decides."""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import jinja2

from distill_audit.reports.charts import number
from distill_audit.reports.view import build_view, code_point, show_hidden, untrusted, visible


def _p_value(p: float | None) -> str:
    if p is None:
        return "n/a"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def template_environment(finalize: Callable[[Any], Any] | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("distill_audit.reports", "templates"),
        autoescape=jinja2.select_autoescape(["html", "htm", "xml", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters["pvalue"] = _p_value
    env.filters["num"] = number
    env.filters["untrusted"] = untrusted
    env.filters["visible"] = visible
    env.filters["md"] = markdown_text
    env.filters["code"] = markdown_code
    return env


def markdown_environment() -> jinja2.Environment:
    """The environment for Markdown templates: like autoescape for HTML, every ``{{ value }}`` is made inert
    Markdown on output (:func:`markdown_text`), so no interpolated value can be left unescaped by mistake."""
    return template_environment(finalize=markdown_text)


class MarkdownSafe(str):
    """Text already made inert for Markdown: escaped again, it would show its backslashes."""


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~&])")
_MD_SPACE = re.compile("[\t\n\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")  # shown as one space


def _one_line(text: Any) -> str:
    return _MD_SPACE.sub(" ", str("" if text is None else text)).strip()


def markdown_text(text: Any) -> MarkdownSafe:
    """Model or user text made inert in Markdown: one line; every markup character escaped (``|`` too, so a
    table cell holds); hidden characters shown as their code points, as in the HTML report."""
    if isinstance(text, MarkdownSafe):
        return text
    return MarkdownSafe(show_hidden(_MD_SPECIAL.sub(r"\\\1", _one_line(text)), code_point))


def markdown_code(text: Any) -> MarkdownSafe:
    """Text as an inert Markdown code span, one line, hidden characters shown as code points. The fence is
    longer than any run of backticks inside. Not for table cells (a ``|`` would end the cell)."""
    body = show_hidden(_one_line(text), code_point)
    fence = "`" * (max((len(run) for run in re.findall("`+", body)), default=0) + 1)
    pad = " " if body.startswith("`") or body.endswith("`") else ""
    return MarkdownSafe(f"{fence}{pad}{body}{pad}{fence}")


def render_html(result: Mapping[str, Any]) -> str:
    """The self-contained HTML evidence report, from the result document alone (same input, same bytes)."""
    return template_environment().get_template("report.html.j2").render(**build_view(result))


def render_markdown(result: Mapping[str, Any]) -> str:
    """A short Markdown summary for tickets and pull requests."""
    return markdown_environment().get_template("summary.md.j2").render(r=result)


def terminal_text(value: Any) -> Any:
    """Text shown as it is, but with hidden characters (terminal escapes, direction overrides) as code points."""
    return show_hidden(value, code_point) if isinstance(value, str) else value


def render_summary(result: Mapping[str, Any], result_path: str, title: str = "audit") -> str:
    """The plain-text verdict the CLI prints after a run (every interpolated string through :func:`terminal_text`)."""
    return template_environment(finalize=terminal_text).get_template("summary.txt.j2").render(
        result=result, path=result_path, title=title
    )
