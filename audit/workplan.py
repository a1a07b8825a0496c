"""The work an audit will do, known before any model loads (``distill-audit run --plan``).

Every detector declares the inference it asks for (:meth:`Detector.planned_requests`, next to its ``run``); the
stages around the detectors (fresh teacher answers, attribution, negative controls, identity probes) are declared
here, in the order :func:`distill_audit.runner.execute` runs them. Requests that an earlier line already asked of
the same model are marked shared: the engine computes them once. Tokens cannot be counted before the tokenizers
load, so the plan counts requests, the most new tokens they generate, and the characters of the texts they read
where those texts exist before the audit runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

from distill_audit import omnibus
from distill_audit.detectors import Available, Detector
from distill_audit.detectors.base import PlanInputs, PlannedRequest
from distill_audit.detectors.identity import IDENTITY_MAX_NEW_TOKENS, IDENTITY_QUESTIONS
from distill_audit.logs import distinct_outputs
from distill_audit.runner import ATTRIBUTION, FRESH_ANSWERS, IDENTITY_PROBES, NEGATIVE_CONTROLS, AuditPlan
from distill_audit.spec import describe_source


@dataclass(frozen=True)
class PlanRow:
    """One planned request set: ``request`` asked of ``model`` on behalf of ``label`` (a detector or a stage);
    ``new`` of its requests were not planned by an earlier row (the rest are the same requests, computed once,
    first planned under ``shared_with``)."""

    label: str
    model: str
    request: PlannedRequest
    new: int
    shared_with: str | None = None


@dataclass(frozen=True)
class WorkPlan:
    models: tuple[tuple[str, str], ...]  # (name, source), in the order the result lists them
    probe_set: dict[str, Any]
    running: tuple[str, ...]  # detectors whose inputs are there (the models may still skip some when they load)
    skipped: tuple[tuple[str, str], ...]  # (detector, reason)
    undeclared: tuple[str, ...]  # running detectors that declare no plan
    rows: tuple[PlanRow, ...]

    def planned(self, label: str, model: str) -> int:
        """New requests planned for ``model`` under ``label``: what a run with no cache computes there, at most."""
        return sum(r.new for r in self.rows if r.label == label and r.model == model)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per model (and "all"): requests by kind, the most new tokens generated, characters of known texts read,
        and the requests that read texts not yet written (answers) or generate to a length set by the data."""
        out: dict[str, dict[str, int]] = {name: {} for name, _ in self.models}
        out["all"] = {}
        for row in self.rows:
            for name in (row.model, "all"):
                t = out[name] = out[name] or dict.fromkeys(("requests", "generate", "score", "hidden", "new_tokens",
                                                            "chars", "unknown_chars", "unknown_tokens"), 0)
                r, n = row.request, row.new
                t["requests"] += n
                t[r.kind] += n
                if r.kind == "generate":
                    if r.new_tokens is None:
                        t["unknown_tokens"] += n
                    else:
                        t["new_tokens"] += n * r.new_tokens
                elif r.chars is None:
                    t["unknown_chars"] += n
                else:
                    t["chars"] += r.chars * n // max(r.count, 1)
        return {name: t for name, t in out.items() if t}


STAGES = (FRESH_ANSWERS, ATTRIBUTION, NEGATIVE_CONTROLS, IDENTITY_PROBES)


def plan_inputs(plan: AuditPlan) -> PlanInputs:
    logged = distinct_outputs(plan.logged)[0] if plan.logged is not None else ()
    texts = plan.watermark.texts if plan.watermark is not None and plan.watermark.texts is not None else ()
    return PlanInputs(
        n_probes=len(plan.probe_set.prompts),
        probe_chars=sum(len(p) for p in plan.probe_set.prompts),
        n_references=len(plan.spec.references),
        n_logged=len(logged),
        logged_chars=sum(len(o.prompt) + len(o.completion) for o in logged),
        fresh_chars=(sum(len(o.prompt) + len(o.completion) for o in distinct_outputs(plan.fresh_file)[0])
                     if plan.fresh_file is not None else None),
        n_watermark_texts=len(texts),
        watermark_chars=sum(len(t.prompt) + len(t.completion) for t in texts),
    )


class _Planner:
    """Rows in the order the audit asks; a (model, share) set asked before is shared, not new."""

    def __init__(self) -> None:
        self.rows: list[PlanRow] = []
        self._seen: dict[tuple[str, str, str], tuple[int, str]] = {}

    def add(self, label: str, requests: Sequence[PlannedRequest], teacher: str, student: str,
            references: Sequence[str]) -> None:
        for r in requests:
            models = [teacher] if r.role == "teacher" else [student] if r.role == "student" else list(references)
            for model in models:
                key = (model, r.share, teacher if r.of_teacher else "")
                before, first = self._seen.get(key, (0, label))
                self._seen[key] = (max(before, r.count), first)
                new = max(0, r.count - before)
                self.rows.append(PlanRow(label, model, r, new, None if new == r.count else first))


def _can_run(det: Detector, plan: AuditPlan, n_references: int) -> bool:
    return det.unmet(Available(None, n_references, plan.logged is not None, plan.watermark)) is None


def work_plan(plan: AuditPlan) -> WorkPlan:
    """What ``plan`` will ask of each model, read from the declarations; no model is loaded."""
    spec = plan.spec
    inputs = plan_inputs(plan)
    refs = [f"reference-{i + 1}" for i in range(len(spec.references))]
    alts = [f"alternative-{i + 1}" for i in range(len(spec.alternative_teachers))]
    names = ["teacher", "student", *refs, *alts]
    available = Available(None, len(refs), plan.logged is not None, plan.watermark)
    reasons = {d.name: d.unmet(available) for d in plan.detectors}
    running = [d for d in plan.detectors if reasons[d.name] is None]
    declared = {d.name: d.planned_requests(inputs) for d in running}
    planner = _Planner()

    def detectors_and_attribution(label: str | None, dets: Sequence[Detector], student: str,
                                  panel: Sequence[str]) -> None:
        sub = dataclasses.replace(inputs, n_references=len(panel))
        for d in dets:
            planner.add(label or d.name, d.planned_requests(sub) or (), "teacher", student, panel)
        components = [d for d in dets if d.name in {c for cs in omnibus.COMPONENTS.values() for c in cs}] or \
                     [d for d in dets if d.min_references >= 2]
        for alt in alts:
            for d in components:
                planner.add(label or ATTRIBUTION, d.planned_requests(sub) or (), alt, student, panel)

    if plan.logged is not None and plan.fresh_file is None:
        planner.add(FRESH_ANSWERS, [PlannedRequest(
            "teacher", "generate", inputs.n_logged, "a fresh answer to each logged prompt, as long as the logged one",
            "fresh", new_tokens=None)], "teacher", "student", refs)
    detectors_and_attribution(None, running, "student", refs)
    if spec.negative_controls and len(refs) >= 2:
        for i, ref in enumerate(refs):
            rest = refs[:i] + refs[i + 1:]
            dets = [d for d in running if _can_run(d, plan, len(rest))]
            detectors_and_attribution(NEGATIVE_CONTROLS, dets, ref, rest)
    student_format = spec.format_for("student")[0]
    if spec.teacher_names or student_format != "plain":
        condition = "" if spec.teacher_names or student_format == "chat" else \
            " (only if the student is asked in chat: --prompt-format auto decides when it loads)"
        planner.add(IDENTITY_PROBES, [PlannedRequest(
            "student", "generate", len(IDENTITY_QUESTIONS), "greedy answers to who-are-you questions" + condition,
            "identity", new_tokens=IDENTITY_MAX_NEW_TOKENS)], "teacher", "student", refs)
    return WorkPlan(
        models=tuple(zip(names, (describe_source(s) for s in spec.sources))),
        probe_set=plan.probe_set.to_dict(),
        running=tuple(d.name for d in running),
        skipped=tuple((name, reason) for name, reason in reasons.items() if reason is not None),
        undeclared=tuple(name for name, requests in declared.items() if requests is None),
        rows=tuple(planner.rows),
    )


def _n(x: int) -> str:
    return f"{x:,}"


def render_plan(work: WorkPlan, title: str = "audit") -> str:
    """The plan as plain text for a terminal."""
    lines = [f"distill-audit plan: {title} (no model loaded; nothing written)", "", "models:"]
    width = max(len(n) for n, _ in work.models)
    lines += [f"  {name:<{width}}  {source}" for name, source in work.models]
    ps = work.probe_set
    lines += ["", f"probes: {ps['name']} v{ps['version']}, {ps['n']} prompts, sha256 {ps['hash']}", "",
              "detectors that will run (the models' capabilities are checked when they load, and may skip more):"]
    lines += [f"  {name}" + (" (its requests are not declared)" if name in work.undeclared else "")
              for name in work.running] or ["  none"]
    if work.skipped:
        lines += ["", "skipped:"] + [f"  {name}: {reason}" for name, reason in work.skipped]
    lines += ["", "planned requests, in the order the audit asks (shared: the same requests as an earlier line, "
              "computed once):"]
    label, hidden = None, 0

    def flush() -> None:
        if hidden:
            lines.append(f"    (and {_n(hidden)} request set(s) the same as earlier lines: the detectors run again)")

    for row in work.rows:
        if row.label != label:
            flush()
            label, hidden = row.label, 0
            lines.append(f"  {label}")
        if row.label in STAGES and row.new == 0:  # a stage re-runs detectors: show only what is new
            hidden += 1
            continue
        r = row.request
        count = f"{_n(r.count)} x up to {_n(r.new_tokens)} new tokens" if r.kind == "generate" and r.new_tokens \
            else f"{_n(r.count)} x logged length" if r.kind == "generate" \
            else f"{_n(r.count)} ({_n(r.chars)} chars)" if r.chars is not None else _n(r.count)
        shared = "" if row.shared_with is None else \
            f"  [shared with {row.shared_with}]" if row.new == 0 else f"  [{_n(row.new)} new; rest shared]"
        lines.append(f"    {row.model:<{width}}  {r.kind:<8}  {count:<28}  {r.what}{shared}")
    flush()
    lines += ["", "totals (each request counted once):"]
    for name, t in work.totals().items():
        extra = []
        if t["unknown_tokens"]:
            extra.append(f"{_n(t['unknown_tokens'])} as long as logged answers")
        if t["unknown_chars"]:
            extra.append(f"{_n(t['unknown_chars'])} read answers written during the audit")
        more = f"; {'; '.join(extra)}" if extra else ""
        lines.append(f"  {name:<{width}}  {_n(t['requests'])} requests: {_n(t['generate'])} generate (up to "
                     f"{_n(t['new_tokens'])} new tokens), {_n(t['score'])} score, {_n(t['hidden'])} hidden states; "
                     f"{_n(t['chars'])} characters of given text read{more}")
    lines += ["", "Tokens to score are not counted: the tokenizers load with the models. A cache from an earlier run "
              "answers the requests it holds."]
    return "\n".join(lines) + "\n"
