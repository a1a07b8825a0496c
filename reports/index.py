"""The index of a sweep: one row per student (verdict, p-value, links to its report and result), in HTML and
Markdown. Rendering only, from the rows the CLI collected; every model- or file-derived value is escaped."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from distill_audit.reports.render import markdown_environment, template_environment


def render_index_html(rows: Sequence[Mapping[str, Any]], audit_file: Mapping[str, str]) -> str:
    """The sweep's index page; ``rows`` hold student, source, verdict, p_value, report and result (relative links)."""
    return template_environment().get_template("index.html.j2").render(rows=rows, audit_file=audit_file)


def render_index_markdown(rows: Sequence[Mapping[str, Any]], audit_file: Mapping[str, str]) -> str:
    """The same index as Markdown, for a ticket or a pull request."""
    return markdown_environment().get_template("index.md.j2").render(rows=rows, audit_file=audit_file)
