"""One Jinja environment (autoescape on, StrictUndefined); templates format, Python decides."""

from __future__ import annotations

from typing import Any, Mapping

import jinja2


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
    return env


def render_summary(result: Mapping[str, Any], result_path: str, title: str = "audit") -> str:
    """The plain-text verdict the CLI prints after a run."""
    return template_environment().get_template("summary.txt.j2").render(
        result=result, path=result_path, title=title
    )
