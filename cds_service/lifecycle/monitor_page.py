"""The lifecycle monitoring page: one self-contained HTML document from a :class:`MonitorView`.

``render_monitor`` is pure: the admin route gathers the view (deployment state, registry, drift
history, audit trail) and serves the string. The page carries no JavaScript and loads nothing
(styles inline, plots as inline SVG drawn here), because hospital networks often block external
assets and an admin page has no business running scripts. Every value from the view may have
come from Redis, so every one is escaped, attributes included; level and card-state words are
printed as text beside their colours, so the page reads the same without colour.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any, Literal

from pydantic import BaseModel

from cds_service.drift.statistics import Level
from cds_service.lifecycle.monitor import DriftSnapshot as DriftPoint
from cds_service.lifecycle.shadow import ShadowReport as ShadowSummary

__all__ = [
    "AuditRow",
    "DriftPoint",
    "FeatureFigure",
    "Level",
    "MonitorView",
    "ServiceRow",
    "ShadowSummary",
    "VersionRow",
    "render_monitor",
]


class ServiceRow(BaseModel):
    service_id: str
    title: str
    cards: Literal["shown", "stopped", "killed"]
    why: str | None = None
    since: datetime | None = None
    active: str | None
    shadow: str | None
    canary: str | None
    canary_share: float | None


class VersionRow(BaseModel):
    version: str
    role: str | None  # active/shadow/canary/previous/withdrawn/None
    trained_on: str | None
    gates_passed: bool | None
    gate_failures: list[str] = []
    validation: dict[str, float] = {}


class FeatureFigure(BaseModel):
    name: str
    psi: float
    wasserstein: float
    missing_delta: float
    n: int
    level: Level


class AuditRow(BaseModel):
    at: datetime
    actor: str
    action: str
    service: str | None
    version: str | None
    reason: str
    figures: dict[str, Any] = {}


class MonitorView(BaseModel):
    generated: datetime
    model: str
    revision: int
    services: list[ServiceRow]
    versions: list[VersionRow]
    drift: dict[str, list[DriftPoint]]  # per version, oldest first
    features: dict[str, list[FeatureFigure]]  # per version, latest check, worst first
    audit: list[AuditRow]  # newest first
    shadow: ShadowSummary | None
    window_hours: int
    thresholds: dict[str, float]
    audit_durable: bool | None = None
    """False: Redis would lose audit events (no AOF or an eviction policy); None: not checked."""


#: features listed per version; the table is for finding the culprit, not an inventory
TOP_FEATURES = 15
#: longest figure value printed in the audit table; the full figures are in the stream
FIGURE_CHARS = 80
_ROLE_ORDER = {"active": 0, "canary": 1, "shadow": 2}
_LEVEL_WORD: dict[str, str] = {"ok": "OK", "warn": "WARN", "act": "ACT"}
_CARDS_CLASS: dict[str, str] = {"shown": "ok", "stopped": "act", "killed": "act"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#111;background:#fff;max-width:78rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
h3{font-size:1rem}table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ccc;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
.lvl{font-weight:bold;padding:0 .3rem;border-radius:3px;border:1px solid}
.ok{color:#0a5d1a;background:#e3f4e6}.warn{color:#6b4500;background:#fff1cc}
.act{color:#8b0000;background:#fde2e2}.muted{color:#555}
.banner{padding:.5rem 1rem;border:2px solid #8b0000;background:#fde2e2;font-weight:bold}
.plots{display:flex;flex-wrap:wrap;gap:1rem}figure{margin:0;width:30rem;max-width:100%}
figcaption{font-size:.85rem}svg{width:100%;height:auto;background:#fafafa}
svg text{font-size:10px;fill:#333}
"""


def _e(value: object) -> str:
    """Escaped text for element content and quoted attributes alike."""
    return escape(str(value), quote=True)


def _utc(at: datetime) -> datetime:
    # Naive times are taken as UTC, the only zone the service writes.
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _time(at: datetime | None) -> str:
    return "—" if at is None else _utc(at).strftime("%Y-%m-%d %H:%M UTC")


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value * 100:.1f} %"


def _level(level: str) -> str:
    cls = level if level in _LEVEL_WORD else "warn"
    return f'<span class="lvl {cls}">{_e(_LEVEL_WORD.get(level, level))}</span>'


def _cell(value: object, numeric: bool = False) -> str:
    text = "—" if value is None else str(value)
    return f'<td class="n">{_e(text)}</td>' if numeric else f"<td>{_e(text)}</td>"


def _table(head: Sequence[str], rows: Iterable[str], empty: str) -> str:
    body = "".join(rows)
    if not body:
        return f'<p class="muted">{_e(empty)}</p>'
    heads = "".join(f'<th scope="col">{_e(h)}</th>' for h in head)
    return f"<table><thead><tr>{heads}</tr></thead><tbody>{body}</tbody></table>"


# --- plots -----------------------------------------------------------------------------------

_W, _H = 480, 190
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 12, 12, 40
#: (stroke, dash pattern, width) per kind of line; the dash patterns carry the meaning in grey
_STROKES: dict[str, tuple[str, str, float]] = {
    "data": ("#1f4e9c", "", 2.0),
    "reference": ("#555555", "6 3", 1.5),
    "warn": ("#b07800", "4 4", 1.2),
    "act": ("#b00000", "1 3", 1.6),
}
_LINE_NAMES = {"reference": "dashed", "warn": "long dashes", "act": "dotted"}


@dataclass(frozen=True)
class _Series:
    label: str
    kind: Literal["data", "reference", "warn", "act"]
    values: list[float | None]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _y_range(series: Sequence[_Series]) -> tuple[float, float]:
    values = [v for s in series for v in map(_finite, s.values) if v is not None]
    if not values:
        return 0.0, 1.0
    # Every figure plotted is a distance or a rate, so the axis starts at 0 unless a value is below.
    low, high = min(0.0, *values), max(values)
    if high - low < 1e-12:
        pad = abs(high) * 0.1 or 1.0
        return low - pad if low < 0 else low, high + pad
    return low, high + (high - low) * 0.05


def _segments(xs: Sequence[float], ys: Sequence[float | None]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive known points; an unknown value breaks the line instead of bridging it."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys, strict=True):
        if y is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((x, y))
    return [r for r in runs if r]


def _plot(
    title: str,
    times: Sequence[datetime],
    series: Sequence[_Series],
    part: str,
    levels: Sequence[str],
) -> str:
    """One line plot as inline SVG: time on x, the series on y, and a marker on every check whose
    ``part`` verdict (inputs or behaviour) is warn or act: a hollow circle or a filled square, so
    a breach shows without colour."""
    stamps = [_utc(t).timestamp() for t in times]
    t0, t1 = (min(stamps), max(stamps)) if stamps else (0.0, 1.0)
    low, high = _y_range(series)
    inner_w, inner_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x_of(t: float) -> float:
        # One check, or all at one time: the point sits in the middle.
        return _LEFT + (inner_w / 2 if t1 == t0 else (t - t0) / (t1 - t0) * inner_w)

    def y_of(v: float) -> float:
        return _TOP + inner_h - (v - low) / (high - low) * inner_h

    xs = [x_of(t) for t in stamps]
    out = [
        f'<svg viewBox="0 0 {_W} {_H}" role="img" aria-label="{_e(title)}">',
        f"<title>{_e(title)}</title>",
        f'<rect x="{_LEFT}" y="{_TOP}" width="{inner_w}" height="{inner_h}" fill="#fff" '
        'stroke="#999"/>',
        f'<text x="{_LEFT - 4}" y="{_TOP + 4}" text-anchor="end">{_e(_num(high))}</text>',
        f'<text x="{_LEFT - 4}" y="{_TOP + inner_h}" text-anchor="end">{_e(_num(low))}</text>',
    ]
    if times:
        first, last = _time(min(times, key=_utc)), _time(max(times, key=_utc))
        base = _TOP + inner_h + 14
        out.append(f'<text x="{_LEFT}" y="{base}" text-anchor="start">{_e(first)}</text>')
        if last != first:
            out.append(f'<text x="{_W - _RIGHT}" y="{base}" text-anchor="end">{_e(last)}</text>')
    else:
        out.append(
            f'<text x="{_LEFT + inner_w / 2}" y="{_TOP + inner_h / 2}" text-anchor="middle">'
            "no checks yet</text>"
        )
    for s in series:
        colour, dash, width = _STROKES[s.kind]
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        for run in _segments(xs, [_finite(v) for v in s.values]):
            if len(run) == 1:
                # A lone point between gaps would be an invisible zero-length line.
                (x, y), radius = run[0], width + 1
                out.append(
                    f'<circle cx="{x:.1f}" cy="{y_of(y):.1f}" r="{radius}" fill="{colour}"/>'
                )
                continue
            points = " ".join(f"{x:.1f},{y_of(y):.1f}" for x, y in run)
            out.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" '
                f'stroke-width="{width}"{dash_attr}/>'
            )
    data = next((s for s in series if s.kind == "data"), None)
    if data is not None:
        for x, value, level in zip(xs, data.values, levels, strict=True):
            v = _finite(value)
            if v is None or level not in ("warn", "act"):
                continue
            y, tip = y_of(v), f"<title>{_e(part)} {_e(_LEVEL_WORD[level])}: {_e(_num(v))}</title>"
            if level == "act":
                out.append(
                    f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" '
                    f'fill="#b00000">{tip}</rect>'
                )
            else:
                out.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#fff" stroke="#b07800" '
                    f'stroke-width="1.5">{tip}</circle>'
                )
    legend_y = _H - 6
    legend = " · ".join(
        s.label if s.kind == "data" else f"{s.label} ({_LINE_NAMES[s.kind]})" for s in series
    )
    out.append(f'<text x="{_LEFT}" y="{legend_y}">{_e(legend)}</text>')
    out.append("</svg>")
    return "".join(out)


def _constant(
    label: str, kind: Literal["warn", "act"], value: float | None, n: int
) -> list[_Series]:
    return [] if value is None else [_Series(f"{label} {_num(value)}", kind, [value] * n)]


def _figure(title: str, svg: str, latest: str, part: str) -> str:
    return (
        f"<figure>{svg}<figcaption>{_e(title)}: latest {_e(latest)}. Markers: the check's "
        f"{_e(part)} verdict, hollow circle WARN, filled square ACT.</figcaption></figure>"
    )


def _drift_plots(version: str, points: Sequence[DriftPoint], th: dict[str, float]) -> str:
    times, n = [p.at for p in points], len(points)
    inputs, behaviour = [p.inputs for p in points], [p.behaviour for p in points]
    last = points[-1] if points else None

    def thresholds(prefix: str) -> list[_Series]:
        return [
            *_constant("warn", "warn", th.get(f"{prefix}_warn"), n),
            *_constant("act", "act", th.get(f"{prefix}_act"), n),
        ]

    def ratio_line(kind: Literal["warn", "act"]) -> list[_Series]:
        ratio = th.get(f"alert_rate_{kind}_ratio")
        if ratio is None:
            return []
        values = [
            None if p.reference_alert_rate is None else p.reference_alert_rate * ratio
            for p in points
        ]
        return [_Series(f"{kind} {_num(ratio)} times the reference", kind, values)]

    figures = [
        (
            "Score PSI",
            [_Series("score PSI", "data", [p.score_psi for p in points]), *thresholds("psi")],
            "behaviour",
            behaviour,
            _num(last.score_psi) if last else "—",
        ),
        (
            "Largest feature PSI",
            [
                _Series("max feature PSI", "data", [p.max_feature_psi for p in points]),
                *thresholds("psi"),
            ],
            "inputs",
            inputs,
            f"{_num(last.max_feature_psi)} ({last.max_feature or 'no feature'})" if last else "—",
        ),
        (
            "Largest missingness change",
            [
                _Series("max |Δ missing|", "data", [p.max_missing_delta for p in points]),
                *thresholds("missing_delta"),
            ],
            "inputs",
            inputs,
            _num(last.max_missing_delta) if last else "—",
        ),
        (
            "Alerts per 100 patient-days",
            [
                _Series("alert rate", "data", [p.alert_rate for p in points]),
                _Series("reference", "reference", [p.reference_alert_rate for p in points]),
                *ratio_line("warn"),
                *ratio_line("act"),
            ],
            "behaviour",
            behaviour,
            f"{_num(last.alert_rate)} (reference {_num(last.reference_alert_rate)})"
            if last
            else "—",
        ),
    ]
    return (
        '<div class="plots">'
        + "".join(
            _figure(
                title,
                _plot(f"{title}, version {version}", times, series, part, levels),
                latest,
                part,
            )
            for title, series, part, levels, latest in figures
        )
        + "</div>"
    )


# --- sections --------------------------------------------------------------------------------


def _services(view: MonitorView) -> str:
    rows = (
        "<tr>"
        f"<td>{_e(s.title)}<br><code>{_e(s.service_id)}</code></td>"
        f'<td><span class="lvl {_CARDS_CLASS[s.cards]}">{_e(s.cards.upper())}</span></td>'
        + _cell(s.why)
        + _cell(_time(s.since) if s.since else None)
        + _cell(s.active)
        + _cell(s.shadow)
        + _cell(s.canary)
        + _cell(_pct(s.canary_share) if s.canary else None, numeric=True)
        + "</tr>"
        for s in view.services
    )
    head = ["service", "cards", "why", "since", "active", "shadow", "canary", "canary share"]
    return "<h2>Services</h2>" + _table(head, rows, "No services.")


def _gates(row: VersionRow) -> str:
    if row.gates_passed is None:
        return '<span class="muted">not checked</span>'
    if row.gates_passed:
        return '<span class="lvl ok">PASSED</span>'
    failures = "".join(f"<li>{_e(f)}</li>" for f in row.gate_failures)
    return '<span class="lvl act">FAILED</span>' + (f"<ul>{failures}</ul>" if failures else "")


def _versions(view: MonitorView) -> str:
    rows = (
        "<tr>"
        + _cell(v.version)
        + _cell(v.role or "registered")
        + _cell(v.trained_on)
        + f"<td>{_gates(v)}</td>"
        + _cell(", ".join(f"{k} {_num(x)}" for k, x in v.validation.items()) or None)
        + "</tr>"
        for v in view.versions
    )
    head = ["version", "role", "trained on", "gates", "validation"]
    return "<h2>Registered versions</h2>" + _table(head, rows, "No versions registered.")


def _drift_order(view: MonitorView) -> list[str]:
    roles = {v.version: v.role for v in view.versions}
    versions = [v for v, points in view.drift.items() if points] + [
        v for v in view.features if not view.drift.get(v)
    ]
    unique = list(dict.fromkeys(versions))
    return sorted(unique, key=lambda v: (_ROLE_ORDER.get(roles.get(v) or "", 9), v))


def _feature_table(figures: Sequence[FeatureFigure]) -> str:
    rows = (
        "<tr>"
        + _cell(f.name)
        + f"<td>{_level(f.level)}</td>"
        + _cell(_num(f.psi), numeric=True)
        + _cell(_num(f.wasserstein), numeric=True)
        + _cell(_num(f.missing_delta), numeric=True)
        + _cell(f.n, numeric=True)
        + "</tr>"
        for f in figures[:TOP_FEATURES]
    )
    table = _table(
        ["feature", "level", "PSI", "Wasserstein", "|Δ missing|", "rows"],
        rows,
        "No feature figures from the latest check.",
    )
    more = len(figures) - TOP_FEATURES
    return table + (
        f'<p class="muted">{more} more features, all less drifted.</p>' if more > 0 else ""
    )


def _check_table(points: Sequence[DriftPoint]) -> str:
    rows = (
        "<tr>"
        + _cell(_time(p.at))
        + _cell(p.rows, numeric=True)
        + _cell(_num(p.patient_hours), numeric=True)
        + _cell(_num(p.score_psi), numeric=True)
        + _cell(f"{_num(p.max_feature_psi)} {p.max_feature or ''}".strip())
        + _cell(_num(p.max_missing_delta), numeric=True)
        + _cell(_num(p.alert_rate), numeric=True)
        + _cell(_num(p.reference_alert_rate), numeric=True)
        + f"<td>{_level(p.inputs)}</td><td>{_level(p.behaviour)}</td>"
        + "</tr>"
        for p in reversed(points)
    )
    head = [
        "checked",
        "rows",
        "patient-hours",
        "score PSI",
        "max feature PSI",
        "|Δ missing|",
        "alert rate",
        "reference",
        "inputs",
        "behaviour",
    ]
    return (
        f"<details><summary>Every check ({len(points)}), newest first</summary>"
        + _table(head, rows, "No checks.")
        + "</details>"
    )


def _drift(view: MonitorView) -> str:
    parts = [f"<h2>Drift over the last {_e(view.window_hours)} h windows</h2>"]
    versions = _drift_order(view)
    if not versions:
        parts.append('<p class="muted">No drift checks yet.</p>')
    roles = {v.version: v.role for v in view.versions}
    for version in versions:
        points = view.drift.get(version, [])
        role = roles.get(version)
        parts.append(f"<h3>Version {_e(version)}" + (f" ({_e(role)})" if role else "") + "</h3>")
        if points:
            last = points[-1]
            parts.append(
                f"<p>Latest check {_e(_time(last.at))}: inputs {_level(last.inputs)}, behaviour "
                f"{_level(last.behaviour)}; {_e(last.rows)} rows, "
                f"{_e(_num(last.patient_hours))} patient-hours.</p>"
            )
            parts.append(_drift_plots(version, points, view.thresholds))
            parts.append(_check_table(points))
        else:
            parts.append('<p class="muted">No drift checks for this version yet.</p>')
        parts.append("<h4>Features at the latest check, most drifted first</h4>")
        parts.append(_feature_table(view.features.get(version, [])))
    return "".join(parts)


def _shadow(view: MonitorView) -> str:
    s = view.shadow
    if s is None:
        return '<h2>Shadow comparison</h2><p class="muted">No shadow version running.</p>'
    rows = [
        ("scored calls compared", str(s.rows)),
        ("agreement (same alert decision)", _pct(s.agreement)),
        (f"alert share, active {s.active}", _pct(s.active_alert_share)),
        (f"alert share, shadow {s.shadow}", _pct(s.shadow_alert_share)),
        ("score PSI, shadow against active", _num(s.score_psi)),
        ("mean |risk difference|", _num(s.mean_abs_difference)),
    ]
    body = (f'<tr><th scope="row">{_e(k)}</th><td class="n">{_e(v)}</td></tr>' for k, v in rows)
    return f"<h2>Shadow comparison: {_e(s.shadow)} against {_e(s.active)}</h2>" + _table(
        ["figure", "value"], body, ""
    )


def _figures_text(figures: dict[str, Any]) -> str:
    parts = []
    for key, value in figures.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        if len(text) > FIGURE_CHARS:
            text = text[: FIGURE_CHARS - 1] + "…"
        parts.append(f"{key}={text}")
    return "; ".join(parts)


def _audit(view: MonitorView) -> str:
    rows = (
        "<tr>"
        + _cell(_time(a.at))
        + _cell(a.actor)
        + _cell(a.action)
        + _cell(a.service)
        + _cell(a.version)
        + _cell(a.reason)
        + _cell(_figures_text(a.figures) or None)
        + "</tr>"
        for a in view.audit
    )
    head = ["when", "who", "action", "service", "version", "reason", "figures"]
    return "<h2>Recent lifecycle events, newest first</h2>" + _table(head, rows, "No events yet.")


def _header(view: MonitorView) -> str:
    parts = [
        f"<h1>Model lifecycle: {_e(view.model)}</h1>",
        f"<p>State revision {_e(view.revision)}, page generated {_e(_time(view.generated))}. "
        "This page does not refresh itself; reload it.</p>",
    ]
    if view.audit_durable is False:
        parts.append(
            '<p class="banner" role="alert">AUDIT TRAIL NOT DURABLE: Redis runs without '
            "append-only persistence or with an eviction policy, so audit events can be lost.</p>"
        )
    if view.thresholds:
        items = ", ".join(f"{k} {_num(v)}" for k, v in sorted(view.thresholds.items()))
        parts.append(f'<p class="muted">Thresholds: {_e(items)}.</p>')
    return "".join(parts)


def render_monitor(view: MonitorView) -> str:
    """The monitoring page for ``view`` as a complete HTML5 document."""
    title = f"Model lifecycle: {view.model}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        # Defence in depth behind the escaping: even injected markup could load or run nothing.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
        + _header(view)
        + _services(view)
        + _versions(view)
        + _drift(view)
        + _shadow(view)
        + _audit(view)
        + "</body></html>\n"
    )
