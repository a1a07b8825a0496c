"""Chart geometry for the report, computed from the result's numbers: bar charts, the CKA heat map, the
forest plot of the primary lines of evidence and the histogram of per-pair differences. The templates draw
what these return as inline SVG; every number they show comes from the result or is computed here from it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a real, finite number (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def number(value: Any) -> str:
    """A number for reading: three decimals in the usual range, scientific notation for very small or large
    magnitudes (so a small effect never reads as 0.000), "n/a" when there is none."""
    x = finite(value)
    if x is None:
        return "n/a"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.3f}"
    return f"{x:.2e}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values between ``lo`` and ``hi``: steps of 1, 2, 2.5 or 5 times a power of ten."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo]
    raw = span / max(count, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + 1e-9 * step:
        ticks.append(round(k * step, 12) + 0.0)  # + 0.0: no "-0"
        k += 1
    return ticks


def bar_chart(rows: Sequence[tuple[str, float | None, bool]], width: int = 560, bar_height: int = 18) -> dict[str, Any]:
    """Geometry of a horizontal bar chart: (label, value, highlighted) per bar, scaled to the largest value."""
    finite_values = [v for _, v, _ in rows if v is not None and math.isfinite(v)]
    lo = min([0.0, *finite_values])
    hi = max([0.0, *finite_values]) or 1.0
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
    if "mean_logged" in d and "mean_fresh" in d and isinstance(d.get("reference_mean_difference"), Mapping):
        # Calibrated: the test sets the student's logged-minus-fresh advantage against every reference's.
        score = d.get("score", "loss")
        student = finite(d.get("student_mean_difference"))
        if student is None:
            student = _mean(finite_values(d.get("per_pair_difference")))
        rows = [("student", student, True)]
        rows += [(name, finite(v), False) for name, v in sorted(d["reference_mean_difference"].items())]
        chart = bar_chart(rows)  # a None draws as an empty bar labelled n/a
        chart["caption"] = (f"Mean {score} advantage of the logged answers over fresh ones (logged minus fresh, per "
                            "prompt pair), for the student and for every reference, which never saw the logs. Higher "
                            "is more member-like; the test asks whether the student's is larger than the references'.")
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


# -- the forest plot of the primary lines ------------------------------------------------------------------

FOREST_AXIS = "effect in units of its margin"


def forest_row(line: Mapping[str, Any]) -> dict[str, Any]:
    """One primary line on the margin scale: effect / margin (1 is the margin, 0 no effect), the CI likewise,
    and why it is not plotted when it cannot be ("no margin", "not estimable")."""
    name = str(line.get("line") or line.get("detector") or "")
    effect, margin = finite(line.get("effect_size")), finite(line.get("margin"))
    low, high = finite(line.get("ci_low")), finite(line.get("ci_high"))
    row: dict[str, Any] = {"name": name, "x": None, "low": None, "high": None, "status": None}
    if margin is None or margin == 0:
        row["status"] = "no margin"
    elif effect is None:
        row["status"] = "not estimable"
    else:
        row["x"] = effect / margin
        if low is not None and high is not None:  # a negative margin flips the ends
            row["low"], row["high"] = sorted((low / margin, high / margin))
    if row["x"] is None:
        row["alt"] = f"{name}: {row['status']}, not plotted."
    elif row["low"] is None:
        row["alt"] = f"{name}: effect {row['x']:.2f} times its margin; no confidence interval."
    else:
        row["alt"] = (f"{name}: effect {row['x']:.2f} times its margin (95% CI {row['low']:.2f} to "
                      f"{row['high']:.2f} times).")
    return row


def forest_plot(lines: Sequence[Mapping[str, Any]], width: int = 640, row_height: int = 30) -> dict[str, Any]:
    """Geometry of the overview forest plot: one row per primary line, each drawn relative to its own margin
    (the lines measure different things in different units), with the zero line and the margin line at 1."""
    rows = [forest_row(line) for line in lines]
    label_w, value_w, top, bottom = 170, 110, 22, 44
    plot_x0, plot_x1 = label_w, width - value_w
    points = [v for r in rows for v in (r["x"], r["low"], r["high"]) if v is not None]
    lo, hi = min([0.0, 1.0, *points]), max([0.0, 1.0, *points])
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(v: float) -> float:
        return round(plot_x0 + (plot_x1 - plot_x0) * (v - lo) / (hi - lo), 2)

    height = top + len(rows) * row_height + bottom
    for i, r in enumerate(rows):
        r["y"] = top + i * row_height + row_height // 2
        r["cx"] = px(r["x"]) if r["x"] is not None else None
        r["x_low"] = px(r["low"]) if r["low"] is not None else None
        r["x_high"] = px(r["high"]) if r["high"] is not None else None
        r["value"] = f"{r['x']:.2f}× margin" if r["x"] is not None else r["status"]
    axis_y = top + len(rows) * row_height
    plotted = sum(r["x"] is not None for r in rows)
    return {
        "width": width, "height": height, "rows": rows, "top": top, "axis_y": axis_y,
        "plot_x0": plot_x0, "plot_x1": plot_x1, "value_x": plot_x1 + 10,
        "zero": px(0.0), "margin": px(1.0),
        "ticks": [{"x": px(t), "text": f"{t:g}"} for t in nice_ticks(lo, hi)],
        "axis_label": FOREST_AXIS,
        "caption": (f"Each primary line's effect and 95% confidence interval divided by that line's own margin (the "
                    f"smallest effect it counts as distillation), because the lines measure different things in "
                    f"different units: 0 is no effect, the dashed line at 1 is the margin. {plotted} of {len(rows)} "
                    f"line{'s' if len(rows) != 1 else ''} plotted; a line with no margin or no estimate is listed "
                    f"without a point."),
    }


# -- the histogram of per-pair differences -------------------------------------------------------------------

def finite_values(values: Any) -> list[float]:
    if not isinstance(values, (list, tuple)):
        return []
    return [x for x in (finite(v) for v in values) if x is not None]


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def histogram(values: Any, what: str, width: int = 560, height: int = 190, max_bins: int = 40) -> dict[str, Any] | None:
    """Geometry of a histogram of ``values`` (missing and non-finite ones counted apart, not binned), with the
    zero line and the mean marked; None when no value is finite. Equal-width bins over the data's range,
    widened to include zero; about the square root of the count of them (5 to ``max_bins``)."""
    data = finite_values(values)
    total = len(values) if isinstance(values, (list, tuple)) else 0
    if not data:
        return None
    mean = _mean(data)
    assert mean is not None
    lo, hi = min(0.0, *data), max(0.0, *data)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    k = min(max_bins, max(5, math.ceil(math.sqrt(len(data)))))
    step = (hi - lo) / k
    counts = [0] * k
    for v in data:
        counts[min(int((v - lo) / step), k - 1)] += 1
    left, right, top, bottom = 44, 16, 22, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    tallest = max(counts)

    def px(v: float) -> float:
        return round(left + plot_w * (v - lo) / (hi - lo), 2)

    bins = []
    for i, c in enumerate(counts):
        a, b = lo + i * step, lo + (i + 1) * step
        h = plot_h * c / tallest
        bins.append({"count": c, "low": a, "high": b, "x": px(a), "w": round(max(px(b) - px(a) - 1, 1.0), 2),
                     "y": round(top + plot_h - h, 2), "h": round(h, 2)})
    return {
        "width": width, "height": height, "bins": bins, "left": left, "top": top, "base": top + plot_h,
        "plot_x1": left + plot_w, "zero": px(0.0), "mean_x": px(mean), "mean": mean, "tallest": tallest,
        "n": len(data), "missing": total - len(data), "low": lo, "high": hi, "axis_label": what,
        "ticks": [{"x": px(t), "text": f"{t:g}"} for t in nice_ticks(lo, hi)],
        "caption": (f"The student's {what} per prompt pair: {len(data)} pairs in {k} equal-width bins"
                    + (f" ({total - len(data)} pair{'s' if total - len(data) != 1 else ''} without a finite value "
                       "not shown)" if total > len(data) else "")
                    + f". Solid line: zero (no difference); dashed line: the mean, {number(mean)}. Right of zero: the "
                      "logged answer scored as more member-like."),
    }
