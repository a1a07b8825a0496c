"""What a report shows, computed from the result document: plain-language sentences, the summary of the
primary lines and the attribution table, highlighted example words (chart geometry: :mod:`reports.charts`).
Templates only lay it out.

Everything that came from a model or a user file stays a plain string here; the templates escape it
(autoescape) and the ``untrusted`` filter makes invisible control characters visible.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Callable, Mapping

from markupsafe import Markup, escape

from distill_audit.reports.charts import detector_chart, finite, forest_plot, heat_map, histogram, number

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
BONFERRONI_PRIMARY = ("Bonferroni", "Multiplying the smallest p-value by the number of primary lines of evidence, so "
                                    "that running several tests does not make a false alarm more likely.")
PRIMARY_GLOSSARY = (
    ("primary line of evidence", "One of the few independent tests the verdict rests on (the combined panel test, "
                                 "logged against fresh answers, the watermark, the weights). The correction for "
                                 "running several tests is made over these only; every other detector is "
                                 "supporting evidence."),
    ("adjusted p-value", "A primary line's p-value after the correction over the primary lines; compare it with "
                         "alpha."),
    ("panel omnibus", "The panel detectors put on one scale (per prompt, each model's rank among the student and "
                      "the references, averaged over the detectors) and tested once against the reference panel."),
)
ATTRIBUTION_GLOSSARY = (
    ("attribution", "Which of several candidate teachers the student is most like, each judged against the same "
                    "reference panel; it tells the teacher apart from a sibling trained on similar data."),
    ("excess", "The student's score towards a candidate minus the closest reference's, on the omnibus scale "
               "(0 to 1)."),
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


def _glossary(result: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The glossary, with the terms of the primary lines and of attribution where the result has them."""
    if "primary" not in result["verdict"]:
        return GLOSSARY
    terms = tuple(t if t[0] != "Bonferroni" else BONFERRONI_PRIMARY for t in GLOSSARY) + PRIMARY_GLOSSARY
    return terms + ATTRIBUTION_GLOSSARY if "attribution" in result else terms


def primary_rows(verdict: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The verdict's primary lines of evidence as the summary table shows them (all keys present)."""
    alpha = float(verdict["alpha"])
    rows = []
    for line in verdict.get("primary") or ():
        adjusted = finite(line.get("adjusted_p_value"))
        low, high = finite(line.get("ci_low")), finite(line.get("ci_high"))
        rows.append({
            "name": str(line.get("line") or line.get("detector") or ""),
            "detector": str(line.get("detector") or line.get("line") or ""),
            "description": str(line.get("description") or ""),
            "p_value": finite(line.get("p_value")),
            "adjusted_p_value": adjusted,
            "significant": adjusted is not None and adjusted < alpha,
            # the omnibus line with alternatives: its p is the larger of these two (intersection-union)
            "panel_p_value": finite(line.get("panel_p_value")),
            "attribution_p_value": finite(line.get("attribution_p_value")),
            "effect": number(line.get("effect_size")),
            "effect_size_name": str(line.get("effect_size_name") or ""),
            "ci": f"{number(low)} to {number(high)}" if low is not None and high is not None else None,
            "margin": number(line.get("margin")) if finite(line.get("margin")) is not None else None,
        })
    return rows


def lead_view(verdict: Mapping[str, Any]) -> dict[str, Any] | None:
    """The summary the report leads with: one row per primary line, and the forest plot. None for results
    written before the verdict named its primary lines (schema 1.2 and older)."""
    if "primary" not in verdict:
        return None
    lines = list(verdict.get("primary") or ())
    return {"lines": primary_rows(verdict), "forest": forest_plot(lines) if lines else None}


def attribution_view(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The attribution table: every candidate teacher, the closest marked; None when the result has none."""
    table = result.get("attribution")
    if not isinstance(table, Mapping):
        return None
    closest = table.get("closest")
    rows = []
    for c in table.get("candidates") or ():
        rows.append({
            "name": str(c.get("name") or ""), "role": str(c.get("role") or ""), "source": str(c.get("source") or ""),
            "student_score": finite(c.get("student_score")), "reference_mean": finite(c.get("reference_mean")),
            "excess": finite(c.get("excess")), "panel_t": finite(c.get("panel_t")),
            "p_value": finite(c.get("p_value")), "versus_teacher_p_value": finite(c.get("versus_teacher_p_value")),
            "alternative": c.get("role") == "alternative", "why": str(c.get("why") or ""),
            "closest": closest is not None and c.get("name") == closest,
        })
    tested = bool(table.get("tested"))
    note = str(table.get("note") or "")
    if not note and not tested:
        note = "Attribution among candidate teachers was not tested."
    return {"tested": tested, "note": note, "closest": closest, "rows": rows,
            "versus_teacher_p_value": finite(table.get("versus_teacher_p_value")),
            "attributed_to": result["verdict"].get("attributed_to")}


def omnibus_facts(details: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the omnibus panel test combined, and how: its components, access mode and scale."""
    if "components" not in details or "scale" not in details:
        return None
    left_out = details.get("components_left_out")
    return {"components": [str(c) for c in details.get("components") or ()], "access": details.get("access"),
            "scale": str(details["scale"]),
            "left_out": sorted((str(k), str(v)) for k, v in left_out.items()) if isinstance(left_out, Mapping) else []}


def differences_histogram(details: Mapping[str, Any]) -> dict[str, Any] | None:
    if "per_pair_difference" not in details:
        return None
    what = f"logged-minus-fresh {details.get('score', 'membership')} score"
    return histogram(details["per_pair_difference"], what) or {"empty": True, "caption": (
        f"The student's {what} per prompt pair: no pair has a finite value, so there is nothing to draw.")}


def build_view(result: Mapping[str, Any]) -> dict[str, Any]:
    verdict = result["verdict"]
    alpha = float(verdict["alpha"])
    primary = {str(line.get("detector") or line.get("line")): row
               for line, row in zip(verdict.get("primary") or (), primary_rows(verdict))}
    cards = []
    for e in result.get("evidence", []):
        details = e.get("details", {})
        cards.append({
            "e": e,
            "significant": e["p_value"] is not None and e["p_value"] < alpha,
            "chart": detector_chart(e),
            "heat": heat_map(details["heatmaps"]["student"]) if "student" in details.get("heatmaps", {}) else None,
            "lineage": details.get("lineage"),
            "adjusted": verdict.get("holm_adjusted_p_values", {}).get(e["detector"]),
            "powered": e["detector"] in verdict.get("powered_detectors", []),
            "primary": primary.get(e["detector"]),
            "omnibus": omnibus_facts(details),
            "histogram": differences_histogram(details),
            "calibrated": details.get("calibrated"),
            "calibration": details.get("calibration"),
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
        "lead": lead_view(verdict),
        "attribution": attribution_view(result),
        "cards": cards,
        "examples": examples,
        "glossary": _glossary(result),
        "teacher": next((m for m in result.get("models", []) if m["role"] == "teacher"), None),
        "student": next((m for m in result.get("models", []) if m["role"] == "student"), None),
    }
