"""Rendering only: results in, text out. Every output is rebuilt from the result document alone."""

from distill_audit.reports.render import render_html, render_markdown, render_summary, template_environment

__all__ = ["render_html", "render_markdown", "render_summary", "template_environment"]
