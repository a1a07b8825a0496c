"""What a report shows, computed from the result document: plain-language sentences, chart geometry,
highlighted example words. Templates only lay it out.

Everything that came from a model or a user file stays a plain string here; the templates escape it
(autoescape) and the ``untrusted`` filter makes invisible control characters visible.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Callable, Mapping

from markupsafe import Markup, escape

PLAIN_LABEL = {
    "distilled": "The evidence says the student was distilled from the teacher.",
    "not-distilled": "The evidence says the student was not distilled from the teacher, to the strength the tests could detect.",
    "inconclusive": "The evidence is not strong enough either way.",
}

GLOSSARY = (
    ("p-value", "How surprising the data would be if the student were not distilled from the teacher. "
                "Small (below alpha) means the 'not distilled' explanation fits the data badly."),
    ("alpha", "The threshold below which a p-value counts as evidence; it caps the chance of wrongly "
              "calling an independent model distilled."),
    ("null hypothesis", "The explanation a test tries to rule out, here always some form of 'the student "
                        "is no more teacher-like than an independent model'."),
    ("reference model", "An independent model of a similar class, used to measure how teacher-like a model "
                        "is by chance alone."),
    ("effect size", "How much more teacher-like the student is than the closest reference, in the "
                    "detector's own units, with a 95% confidence interval."),
    ("margin", "The smallest effect a detector counts as distillation; a not-distilled verdict rules out "
               "effects at least this large."),
    ("negative control", "A reference model audited as if it were the student. It should never come out "
                         "distilled; if it does, the panel is too weak."),
    ("Bonferroni", "Multiplying the smallest p-value by the number of detectors, so that running many "
                   "tests does not make a false alarm more likely."),
    ("fingerprint", "A hash of a model's weights and tokenizer: the same fingerprint means the same model."),
)


def p_in_words(p: float | None, alpha: float) -> str:
    if p is None or not math.isfinite(p):
        return "no p-value"
    if p < alpha:
        odds = max(1, round(1 / p)) if p > 0 else None
        chance = f"about 1 in {odds:,}" if odds else "vanishingly small"
        return (f"If the student were an independent model, results at least this teacher-like would turn up "
                f"by chance {chance}: below the threshold of {alpha:g}.")
    return (f"Results like these are quite possible for an independent model (p = {p:.2g}, threshold {alpha:g}), "
            "so they are not evidence of distillation.")


def is_hidden(ch: str) -> bool:
    """A character a reader cannot see, or that changes how the text around it reads: controls (tab and
    newline aside), format characters (zero-width, direction marks and overrides, tags), line and
    paragraph separators (U+2028, U+2029), private-use, unassigned and surrogate code points. Spaces of
    other widths (U+00A0, U+3000...) show as space and are left alone."""
    return ch not in "\t\n" and not ch.isprintable() and unicodedata.category(ch) != "Zs"


def show_hidden(text: str, show: Callable[[str], str]) -> str:
    """``text`` with every hidden character (see :func:`is_hidden`) replaced by ``show(ch)``."""
    if text.isprintable():
        return text
    return "".join(show(ch) if is_hidden(ch) else ch for ch in text)


def code_point(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def _code_point_html(ch: str) -> str:
    return f'<span class="ctl" title="{unicodedata.name(ch, "control")}">{code_point(ch)}</span>'


def visible(text: Any) -> Markup:
    """Escape model or user text for a place that holds no markup (an SVG label, a tooltip): hidden characters
    become their plain code points."""
    return Markup(show_hidden(str(escape("" if text is None else str(text))), code_point))


def untrusted(text: Any) -> Markup:
    """Escape model or user text, and show invisible and direction-changing characters as visible codes,
    so that no such text can reorder or hide what a reviewer reads."""
    return Markup(show_hidden(str(escape("" if text is None else str(text))), _code_point_html))


def word_segments(teacher: str, other: str) -> list[dict[str, Any]]:
    """``other`` split into words and the space between them, each word marked when it is the teacher's
    word at the same position (the agreement the text detectors measure)."""
    t_words = re.findall(r"\w+", (teacher or "").lower())
    out, index = [], 0
    for piece in re.split(r"(\w+)", other or ""):
        if not piece:
            continue
        if re.fullmatch(r"\w+", piece):
            match = index < len(t_words) and t_words[index] == piece.lower()
            out.append({"text": piece, "match": match})
            index += 1
        else:
            out.append({"text": piece, "match": False})
    return out


def bar_chart(rows: list[tuple[str, float, bool]], width: int = 560, bar_height: int = 18) -> dict[str, Any]:
    """Geometry of a horizontal bar chart: (label, value, highlighted) per bar, scaled to the largest value."""
    finite = [v for _, v, _ in rows if v is not None and math.isfinite(v)]
    lo = min([0.0, *finite])
    hi = max([0.0, *finite]) or 1.0
    span = (hi - lo) or 1.0
    label_w, plot_w = 150, width - 150 - 70
    bars = []
    for i, (label, value, highlight) in enumerate(rows):
        v = value if value is not None and math.isfinite(value) else 0.0
        x0 = label_w + plot_w * (min(v, 0.0) - lo) / span
        x1 = label_w + plot_w * (max(v, 0.0) - lo) / span
        bars.append({"label": label, "value": value, "x": round(x0, 2), "w": round(max(x1 - x0, 1.0), 2),
                     "y": i * (bar_height + 6), "h": bar_height, "highlight": highlight,
                     "text_x": round(x1 + 6, 2)})
    zero = round(label_w + plot_w * (0.0 - lo) / span, 2)
    return {"width": width, "height": len(rows) * (bar_height + 6), "bars": bars, "zero": zero}


def _sortable(value: float | None) -> float:
    """A number for ordering: a missing or NaN value sorts below every real one."""
    return value if value is not None and math.isfinite(value) else -math.inf


def detector_chart(evidence: Mapping[str, Any]) -> dict[str, Any] | None:
    d = evidence.get("details", {})
    if "reference_means" in d and "student_mean" in d:
        closest = max(d["reference_means"], key=lambda k: (_sortable(d["reference_means"][k]), k)) \
            if d["reference_means"] else None
        rows = [("student", d["student_mean"], True)]
        rows += [(name, v, False) for name, v in sorted(d["reference_means"].items())]
        chart = bar_chart(rows)
        chart["caption"] = (f"Mean {d.get('statistic', 'similarity')} per model; higher is more teacher-like. "
                            f"Closest reference: {closest}.")
        return chart
    if "mean_logged" in d and "mean_fresh" in d:
        score = d.get("score", "loss")
        chart = bar_chart([("logged answers", d["mean_logged"].get(score), True),
                           ("fresh answers", d["mean_fresh"].get(score), False)])
        chart["caption"] = (f"The student's mean {score} score (higher: more like training data) on the logged "
                            "and on fresh teacher answers to the same prompts.")
        return chart
    return None


def heat_map(heat: Mapping[str, Any], cell: int = 46) -> dict[str, Any]:
    """Geometry of a layer-by-layer CKA heat map: rows are the model's layers, columns the teacher's. Opacity
    spreads the grid's own range (CKA values of trained models bunch together), the value is written in
    each cell, and the best cell is outlined."""
    rows, cols = list(heat["layers"]), list(heat["teacher_layers"])
    left, top = 70, 34
    best = tuple(heat.get("best", ()))
    values = [float(v) for row in heat["cka"] for v in row if v is not None and math.isfinite(float(v))]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    cells = []
    for a, layer in enumerate(rows):
        for b, t_layer in enumerate(cols):
            v = heat["cka"][a][b]
            value = float(v) if v is not None and math.isfinite(float(v)) else math.nan
            shade = 0.15 + 0.85 * ((value - lo) / (hi - lo) if hi > lo and math.isfinite(value) else 1.0)
            cells.append({"x": left + b * cell, "y": top + a * cell, "w": cell - 2, "h": cell - 2,
                          "opacity": round(shade, 3), "value": value, "best": (layer, t_layer) == best,
                          "text_x": left + b * cell + 6, "text_y": top + a * cell + cell // 2 + 4})
    return {"width": max(left + len(cols) * cell + 10, 200), "height": top + len(rows) * cell + 4, "cells": cells,
            "cell": cell, "left": left, "top": top,
            "row_labels": [{"y": top + a * cell + cell // 2 + 4, "text": f"layer {layer}"} for a, layer in enumerate(rows)],
            "col_labels": [{"x": left + b * cell + cell // 2 - 4, "text": str(t)} for b, t in enumerate(cols)],
            "caption": f"Linear CKA between the student's hidden-state layers (rows) and the teacher's (columns; layer "
                       f"n is the output of block n-1), from {lo:.3f} (light) to {hi:.3f} (dark); the outlined cell is "
                       "the pair the test uses."}


def build_view(result: Mapping[str, Any]) -> dict[str, Any]:
    verdict = result["verdict"]
    alpha = float(verdict["alpha"])
    cards = []
    for e in result.get("evidence", []):
        cards.append({
            "e": e,
            "significant": e["p_value"] is not None and e["p_value"] < alpha,
            "chart": detector_chart(e),
            "heat": heat_map(e["details"]["heatmaps"]["student"])
            if "student" in e.get("details", {}).get("heatmaps", {}) else None,
            "lineage": e.get("details", {}).get("lineage"),
            "adjusted": verdict.get("holm_adjusted_p_values", {}).get(e["detector"]),
            "powered": e["detector"] in verdict.get("powered_detectors", []),
        })
    examples = []
    for e in result.get("evidence", []):
        for ex in e.get("examples", [])[:2]:
            teacher = ex.get("teacher") or ex.get("logged") or ""
            row = {"detector": e["detector"], "prompt": ex.get("prompt", ""), "teacher": teacher, "columns": []}
            for key, title in (("student", "student"), ("reference_output", ex.get("reference", "reference")),
                               ("fresh", "fresh teacher answer")):
                if key in ex:
                    row["columns"].append({"title": title, "segments": word_segments(teacher, ex[key])})
            row["numbers"] = {k: v for k, v in ex.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            examples.append(row)
    return {
        "r": result,
        "verdict": verdict,
        "plain": PLAIN_LABEL.get(verdict["label"], ""),
        "p_words": p_in_words(verdict.get("p_value"), alpha),
        "cards": cards,
        "examples": examples,
        "glossary": GLOSSARY,
        "teacher": next((m for m in result.get("models", []) if m["role"] == "teacher"), None),
        "student": next((m for m in result.get("models", []) if m["role"] == "student"), None),
    }
