"""The lifecycle monitoring page: well-formed, self-contained, escaped, and right about the data."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest

from cds_service.lifecycle.monitor_page import (
    TOP_FEATURES,
    AuditRow,
    DriftPoint,
    FeatureFigure,
    MonitorView,
    ServiceRow,
    ShadowSummary,
    VersionRow,
    render_monitor,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
HOSTILE = '<script>alert("x")</script>'
HOSTILE_VERSION = 'v9" onmouseover="alert(1)'
THRESHOLDS = {
    "psi_warn": 0.1,
    "psi_act": 0.25,
    "missing_delta_warn": 0.1,
    "missing_delta_act": 0.2,
    "alert_rate_warn_ratio": 1.5,
    "alert_rate_act_ratio": 2.0,
}
#: elements HTML never closes
VOID = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node] = field(default_factory=list)
    text: str = ""

    def all(self, tag: str) -> list[Node]:
        found = [self] if self.tag == tag else []
        for child in self.children:
            found += child.all(tag)
        return found

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class TreeParser(HTMLParser):
    """A strict little DOM: every non-void element must be closed by its own end tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {})
        self.stack = [self.root]
        self.errors: list[str] = []
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        if len(self.stack) == 1 or self.stack[-1].tag != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1].tag}>")
            return
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].text += data


def parse(page: str) -> Node:
    parser = TreeParser()
    parser.feed(page)
    parser.close()
    assert parser.doctype.lower() == "doctype html"
    assert not parser.errors, parser.errors
    assert [n.tag for n in parser.stack] == ["#root"], "unclosed elements"
    return parser.root


def point(i: int, version: str, **changes: object) -> DriftPoint:
    figures: dict[str, object] = {
        "at": T0 + timedelta(minutes=5 * i),
        "version": version,
        "rows": 400 + i,
        "patient_hours": 600.0,
        "score_psi": 0.03 + 0.001 * i,
        "max_feature_psi": 0.05,
        "max_feature": "heart_rate",
        "max_missing_delta": 0.02,
        "alert_rate": 12.0,
        "reference_alert_rate": 10.0,
        "inputs": "ok",
        "behaviour": "ok",
    }
    return DriftPoint.model_validate(figures | changes)


def realistic_view() -> MonitorView:
    active = [point(i, "sepsis-gbdt-AB-2") for i in range(30)]
    # One breach: the score distribution jumps past the act line at check 20.
    active[20] = point(20, "sepsis-gbdt-AB-2", score_psi=0.31, behaviour="act")
    # An unknown alert rate (too few patient-hours) leaves a gap in that line.
    active[10] = point(10, "sepsis-gbdt-AB-2", alert_rate=None)
    shadow = [point(i, "sepsis-gbdt-AB-3", score_psi=0.12, behaviour="warn") for i in range(3)]
    features = [
        FeatureFigure(
            name=f"feature_{k}",
            psi=0.3 - 0.01 * k,
            wasserstein=0.1,
            missing_delta=0.01,
            n=380,
            level="act" if k == 0 else "ok",
        )
        for k in range(20)
    ]
    return MonitorView(
        generated=T0 + timedelta(hours=3),
        model="sepsis",
        revision=7,
        services=[
            ServiceRow(
                service_id="sepsis-patient-view",
                title="Sepsis risk",
                cards="shown",
                active="sepsis-gbdt-AB-2",
                shadow="sepsis-gbdt-AB-3",
                canary=None,
                canary_share=None,
            ),
            ServiceRow(
                service_id="sepsis-order-sign",
                title="Sepsis orders at signing",
                cards="killed",
                why="ward reports duplicate cards",
                since=T0,
                active="sepsis-gbdt-AB-2",
                shadow=None,
                canary="sepsis-gbdt-AB-4",
                canary_share=0.1,
            ),
        ],
        versions=[
            VersionRow(
                version="sepsis-gbdt-AB-2",
                role="active",
                trained_on="PhysioNet 2019 A+B",
                gates_passed=True,
                validation={"auroc": 0.81, "normalized_utility": 0.33},
            ),
            VersionRow(
                version="sepsis-gbdt-AB-3",
                role="shadow",
                trained_on="PhysioNet 2019 A+B",
                gates_passed=False,
                gate_failures=["calibration slope 1.4 outside [0.8, 1.25]"],
            ),
            VersionRow(
                version="sepsis-gbdt-AB-1",
                role="withdrawn",
                trained_on=None,
                gates_passed=None,
            ),
        ],
        drift={"sepsis-gbdt-AB-2": active, "sepsis-gbdt-AB-3": shadow},
        features={"sepsis-gbdt-AB-2": features},
        audit=[
            AuditRow(
                at=T0 + timedelta(hours=2),
                actor="drift-monitor",
                action="drift-warn",
                service=None,
                version="sepsis-gbdt-AB-2",
                reason="score PSI 0.31 at or above 0.25",
                figures={"score_psi": 0.31, "rows": 420},
            ),
            AuditRow(
                at=T0,
                actor="dr-jones",
                action="kill",
                service="sepsis-order-sign",
                version=None,
                reason=HOSTILE,
            ),
        ],
        shadow=ShadowSummary(
            active="sepsis-gbdt-AB-2",
            shadow="sepsis-gbdt-AB-3",
            rows=1234,
            agreement=0.962,
            active_alert_share=0.081,
            shadow_alert_share=0.094,
            score_psi=0.04,
            mean_abs_difference=0.021,
        ),
        window_hours=24,
        thresholds=THRESHOLDS,
        audit_durable=True,
    )


def empty_view() -> MonitorView:
    return MonitorView(
        generated=T0,
        model="sepsis",
        revision=0,
        services=[],
        versions=[],
        drift={},
        features={},
        audit=[],
        shadow=None,
        window_hours=24,
        thresholds={},
    )


def figures_of(root: Node) -> dict[str, Node]:
    """Each plot by its accessible name."""
    return {svg.attrs["aria-label"]: svg for svg in root.all("svg")}


def points_of(polyline: Node) -> list[tuple[float, float]]:
    pairs = polyline.attrs["points"].split()
    return [(float(x), float(y)) for x, y in (p.split(",") for p in pairs)]


def data_lines(svg: Node) -> list[Node]:
    # The data series is the one solid line (threshold and reference lines are dashed).
    return [p for p in svg.all("polyline") if "stroke-dasharray" not in p.attrs]


def dashed_line(svg: Node, legend_word: str) -> Node:
    lines = [p for p in svg.all("polyline") if "stroke-dasharray" in p.attrs]
    dashes = {"warn": "4 4", "act": "1 3", "reference": "6 3"}[legend_word]
    (line,) = [p for p in lines if p.attrs["stroke-dasharray"] == dashes]
    return line


# --- structure --------------------------------------------------------------------------------


def test_the_page_is_one_balanced_html_document() -> None:
    page = render_monitor(realistic_view())
    root = parse(page)
    (html,) = root.all("html")
    assert [c.tag for c in html.children] == ["head", "body"]
    robots = [m for m in root.all("meta") if m.attrs.get("name") == "robots"]
    assert [m.attrs["content"] for m in robots] == ["noindex"]
    assert root.all("title")[0].all_text() == "Model lifecycle: sepsis"
    for table in root.all("table"):
        widths = {len(row.all("td")) + len(row.all("th")) for row in table.all("tr")}
        assert len(widths) == 1, f"ragged table: {widths}"


def test_one_svg_per_plotted_figure() -> None:
    root = parse(render_monitor(realistic_view()))
    names = set(figures_of(root))
    # Four figures for each version with drift checks; none for the version without.
    assert len(root.all("svg")) == 8
    for version in ("sepsis-gbdt-AB-2", "sepsis-gbdt-AB-3"):
        for figure in (
            "Score PSI",
            "Largest feature PSI",
            "Largest missingness change",
            "Alerts per 100 patient-days",
        ):
            assert f"{figure}, version {version}" in names
    assert not any("AB-1" in name for name in names)


def test_plots_stay_inside_their_viewbox_and_span_the_time_axis() -> None:
    root = parse(render_monitor(realistic_view()))
    for svg in root.all("svg"):
        _, _, width, height = map(float, svg.attrs["viewbox"].split())
        for line in svg.all("polyline"):
            for x, y in points_of(line):
                assert 0 <= x <= width and 0 <= y <= height, (svg.attrs["aria-label"], x, y)
    score = figures_of(root)["Score PSI, version sepsis-gbdt-AB-2"]
    (line,) = data_lines(score)
    xs = [x for x, _ in points_of(line)]
    assert xs == sorted(xs) and len(xs) == 30
    labels = [t.all_text() for t in score.all("text")]
    assert "2025-03-01 08:00 UTC" in labels and "2025-03-01 10:25 UTC" in labels


def test_the_breach_is_drawn_above_the_act_line_and_marked_in_words() -> None:
    root = parse(render_monitor(realistic_view()))
    score = figures_of(root)["Score PSI, version sepsis-gbdt-AB-2"]
    (line,) = data_lines(score)
    ys = [y for _, y in points_of(line)]
    act_y = {y for _, y in points_of(dashed_line(score, "act"))}
    warn_y = {y for _, y in points_of(dashed_line(score, "warn"))}
    assert len(act_y) == 1 and len(warn_y) == 1, "threshold lines are horizontal"
    # SVG y grows downwards: the breach (0.31) is above the act line (0.25), the rest below warn.
    assert ys[20] < act_y.pop() < warn_y.pop() < min(ys[:20] + ys[21:])
    (marker,) = score.all("rect")[1:]  # the first rect is the plot frame
    assert marker.all_text() == "behaviour ACT: 0.31"
    legend = score.all("text")[-1].all_text()
    assert "warn 0.1" in legend and "act 0.25" in legend
    captions = {f.all("svg")[0].attrs["aria-label"]: f.all_text() for f in root.all("figure")}
    assert "behaviour verdict" in captions["Score PSI, version sepsis-gbdt-AB-2"]
    assert "inputs verdict" in captions["Largest feature PSI, version sepsis-gbdt-AB-2"]


def test_an_unknown_value_breaks_the_line_instead_of_bridging_it() -> None:
    root = parse(render_monitor(realistic_view()))
    alerts = figures_of(root)["Alerts per 100 patient-days, version sepsis-gbdt-AB-2"]
    runs = data_lines(alerts)
    assert [len(points_of(r)) for r in runs] == [10, 19]
    # The act line is twice the reference (10 per 100 patient-days): 20, above the 12 observed.
    (act_y,) = {y for _, y in points_of(dashed_line(alerts, "act"))}
    (ref_y,) = {y for _, y in points_of(dashed_line(alerts, "reference"))}
    (data_y,) = {y for r in runs for _, y in points_of(r)}
    assert act_y < data_y < ref_y


def test_one_point_and_a_constant_series_still_draw() -> None:
    view = empty_view()
    view.versions = [
        VersionRow(version="v1", role="active", trained_on=None, gates_passed=True),
    ]
    view.drift = {"v1": [point(0, "v1", score_psi=0.0, alert_rate=None, reference_alert_rate=None)]}
    page = render_monitor(view)
    root = parse(page)
    assert "nan" not in page.lower() and "inf" not in re.sub(r"info|inf[a-z]", "", page.lower())
    score = figures_of(root)["Score PSI, version v1"]
    # One check: a dot in the middle, not an invisible one-point line.
    assert data_lines(score) == []
    (dot,) = score.all("circle")
    assert float(dot.attrs["cx"]) == pytest.approx((58 + 480 - 12) / 2)
    labels = [t.all_text() for t in score.all("text")]
    assert labels[:2] == ["1", "0"], "a flat zero series gets a non-empty axis"
    alerts = figures_of(root)["Alerts per 100 patient-days, version v1"]
    assert alerts.all("polyline") == [] and alerts.all("circle") == []


# --- content ------------------------------------------------------------------------------------


def test_versions_services_shadow_and_audit_are_shown() -> None:
    root = parse(render_monitor(realistic_view()))
    text = root.all_text()
    for version in ("sepsis-gbdt-AB-1", "sepsis-gbdt-AB-2", "sepsis-gbdt-AB-3", "sepsis-gbdt-AB-4"):
        assert version in text
    assert "calibration slope 1.4 outside [0.8, 1.25]" in text
    assert "FAILED" in text and "PASSED" in text and "not checked" in text
    assert "auroc 0.81" in text
    assert "KILLED" in text and "ward reports duplicate cards" in text and "10.0 %" in text
    assert "score PSI 0.31 at or above 0.25" in text
    assert "score_psi=0.31; rows=420" in text
    assert "96.2 %" in text and "1234" in text
    # Newest audit event first, as given.
    audit = root.all("table")[-1]
    assert [r.all("td")[1].all_text() for r in audit.all("tr")[1:]] == ["drift-monitor", "dr-jones"]


def test_level_words_are_printed_not_only_coloured() -> None:
    root = parse(render_monitor(realistic_view()))
    spans = [s for s in root.all("span") if "lvl" in s.attrs.get("class", "").split()]
    for span in spans:
        colour = span.attrs["class"].split()[1]
        assert colour in {"ok", "warn", "act"}
        assert span.all_text() in {
            "OK",
            "WARN",
            "ACT",
            "SHOWN",
            "STOPPED",
            "KILLED",
            "PASSED",
            "FAILED",
        }
    words = [s.all_text() for s in spans]
    assert "ACT" in words and "WARN" in words and "OK" in words


def test_features_are_cut_to_the_worst_and_the_rest_counted() -> None:
    root = parse(render_monitor(realistic_view()))
    (table,) = [t for t in root.all("table") if "Wasserstein" in t.all_text()]
    names = [r.all("td")[0].all_text() for r in table.all("tr")[1:]]
    assert names == [f"feature_{k}" for k in range(TOP_FEATURES)]
    assert "5 more features" in root.all_text()


def test_hostile_values_are_escaped() -> None:
    view = realistic_view()
    view.versions.append(
        VersionRow(version=HOSTILE_VERSION, role=HOSTILE, trained_on=HOSTILE, gates_passed=None)
    )
    view.drift[HOSTILE_VERSION] = [point(0, HOSTILE_VERSION, max_feature=HOSTILE)]
    view.features[HOSTILE_VERSION] = [
        FeatureFigure(name=HOSTILE, psi=0.0, wasserstein=0.0, missing_delta=0.0, n=1, level="ok")
    ]
    view.model = HOSTILE
    view.audit[0].figures = {HOSTILE: HOSTILE}
    view.thresholds = {HOSTILE: 1.0}
    page = render_monitor(view)
    root = parse(page)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert root.all("script") == []
    every = [n for tag in ("svg", "span", "td", "h1", "h3", "title", "text") for n in root.all(tag)]
    assert not [n for n in every for a in n.attrs if a.startswith("on")]
    # The quote-breaking version name stays one attribute value.
    assert f"Score PSI, version {HOSTILE_VERSION}" in figures_of(root)
    assert HOSTILE in root.all_text()


@pytest.mark.parametrize("view", [realistic_view(), empty_view()], ids=["realistic", "empty"])
def test_nothing_external_and_no_script(view: MonitorView) -> None:
    page = render_monitor(view)
    root = parse(page)
    assert "<script" not in page.lower()
    # No URL of any scheme, nor a scheme-relative one ("http-equiv" is not a reference).
    assert not re.search(r"https?:|//", page, re.IGNORECASE)
    assert "url(" not in page and "@import" not in page
    for node in root.all("link") + root.all("img") + root.all("iframe") + root.all("object"):
        pytest.fail(f"external asset element <{node.tag}>")
    linked = [n.tag for tag in ("a", "use", "image", "form") for n in root.all(tag)]
    assert linked == []
    (csp,) = [m for m in root.all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in csp.attrs["content"]


def test_the_empty_view_says_so() -> None:
    root = parse(render_monitor(empty_view()))
    text = root.all_text()
    assert root.all("svg") == []
    assert "No services." in text and "No versions registered." in text
    assert "No drift checks yet." in text and "No shadow version running." in text
    assert "No events yet." in text


def test_a_non_durable_audit_trail_is_announced() -> None:
    view = empty_view()
    assert "NOT DURABLE" not in render_monitor(view)
    view.audit_durable = False
    (banner,) = [p for p in parse(render_monitor(view)).all("p") if p.attrs.get("role") == "alert"]
    assert "AUDIT TRAIL NOT DURABLE" in banner.all_text()
