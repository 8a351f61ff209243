"""Drawing: the laid-out graph as a standalone SVG (console colours), and an HTML page with
that SVG, a table of states and the execution's input/output."""

from __future__ import annotations

import html
import json
import math
import re
from datetime import UTC, datetime
from itertools import pairwise

from .layout import F_LABEL, F_NAME, F_SMALL, LAYER_GAP, PAD_X, layout_graph, node_lines
from .model import END, OUTCOMES, START, Edge, ExecutionGraph
from .text import fit_text, fmt_duration, fmt_time, text_width, xml_escape

# Console-like palette: stroke is the saturated colour, fill a light tint of it.
COLORS: dict[str, dict[str, str]] = {
    "succeeded": {"stroke": "#2ea44f", "fill": "#e6f6ea", "text": "#16191f", "label": "Succeeded"},
    "failed": {"stroke": "#d13212", "fill": "#fdebe7", "text": "#16191f", "label": "Failed"},
    "caught": {"stroke": "#ec7211", "fill": "#fff2e3", "text": "#16191f", "label": "Caught error"},
    "running": {"stroke": "#0972d3", "fill": "#e6f1fc", "text": "#16191f", "label": "In progress"},
    "not_run": {"stroke": "#b8bcc2", "fill": "#f4f5f6", "text": "#687078", "label": "Not run"},
}
EDGE_TAKEN = "#232f3e"
EDGE_NOT_TAKEN = "#c4c8cd"
STATUS_COLORS = {
    "SUCCEEDED": "#2ea44f",
    "FAILED": "#d13212",
    "TIMED_OUT": "#d13212",
    "ABORTED": "#d13212",
    "RUNNING": "#0972d3",
    "PENDING_REDRIVE": "#ec7211",
    "UNKNOWN": "#687078",
}



def _legend_items() -> list[tuple[str, str]]:
    return [(k, COLORS[k]["label"]) for k in OUTCOMES]


Point = tuple[float, float]


def _seg_point(seg: tuple, t: float) -> Point:
    kind, pts = seg[0], seg[1:]
    if kind == "L":
        (x0, y0), (x1, y1) = pts
        return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    if kind == "Q":
        (x0, y0), (cx, cy), (x1, y1) = pts
        u = 1 - t
        return u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1
    (x0, y0), (ax, ay), (bx, by), (x1, y1) = pts
    u = 1 - t
    return (u**3 * x0 + 3 * u * u * t * ax + 3 * u * t * t * bx + t**3 * x1,
            u**3 * y0 + 3 * u * u * t * ay + 3 * u * t * t * by + t**3 * y1)


def _seg_path(segs: list[tuple]) -> str:
    x, y = segs[0][1]
    d = [f"M{x:.1f},{y:.1f}"]
    for seg in segs:
        kind, pts = seg[0], seg[2:]
        d.append(kind + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts))
    return " ".join(d)


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _short_label(e: Edge) -> str:
    """What fits on an arrow; the full text stays in the edge's tooltip."""
    if e.kind == "catch":
        errors = list(dict.fromkeys(x.strip() for part in e.label.split(" | ")
                                    for x in part.split(",") if x.strip()))
        errors.sort(key=lambda x: x != "States.ALL")  # the catch-all says the most
        more = f" +{len(errors) - 1}" if len(errors) > 1 else ""
        return f"catch: {errors[0] if errors else '?'}{more}"
    # "$.registration.decision == ..." -> "decision == ...": the last path step names it
    return re.sub(r"\$\$?(?:\.[\w-]+|\[[^\]]*\])*\.([\w-]+)", r"\1", e.label)


def render_svg(graph: ExecutionGraph) -> str:
    """A standalone SVG of the execution graph (top to bottom, console colours)."""
    sdefs = graph.definition.get("States") or {}
    nodes, layers, routes = layout_graph(graph, sdefs)

    # ---- vertical placement (drawing coordinates; translated under the header at the end)
    layer_h = [max((nodes[k].h for k in lv), default=0) for lv in layers]
    layer_top: list[float] = []
    y = 0.0
    for lv, h in zip(layers, layer_h, strict=True):
        layer_top.append(y)
        for k in lv:
            nodes[k].y = y + (h - nodes[k].h) / 2
        y += h + LAYER_GAP

    # ---- back edges: leave the source's bottom, run up a lane right of everything they pass,
    # enter the target's top. Horizontal runs stay in the gaps between layers, so they never
    # cross a box.
    lane_x: dict[int, float] = {}
    lane_i: dict[int, int] = {}
    for i, ri in enumerate(ri for ri, r in enumerate(routes) if r[2]):
        _, chain, _ = routes[ri]
        lo, hi = sorted((nodes[chain[0]].layer, nodes[chain[1]].layer))
        span_right = max(n.x + n.w / 2 for n in nodes.values() if lo <= n.layer <= hi)
        lane_x[ri] = span_right + 26 + 16 * i
        lane_i[ri] = i

    # ---- ports: spread several edges over a node's bottom (out) / top (in) side
    out_ports: dict[str, list[tuple[float, int]]] = {}
    in_ports: dict[str, list[tuple[float, int]]] = {}
    for idx, (_, chain, is_back) in enumerate(routes):
        if is_back:
            out_ports.setdefault(chain[0], []).append((lane_x[idx], idx))
            in_ports.setdefault(chain[1], []).append((lane_x[idx], idx))
        else:
            out_ports.setdefault(chain[0], []).append((nodes[chain[1]].x, idx))
            in_ports.setdefault(chain[-1], []).append((nodes[chain[-2]].x, idx))

    def port_x(table: dict, key: str, idx: int) -> float:
        lst = sorted(table[key])
        n = nodes[key]
        k = len(lst)
        step = min(22.0, (n.w - 24) / (k - 1)) if k > 1 else 0.0
        j = [i for _, i in lst].index(idx)
        return n.x + (j - (k - 1) / 2) * step

    segments: dict[int, list[tuple]] = {}
    for idx, (_, chain, is_back) in enumerate(routes):
        s_node, t_node = nodes[chain[0]], nodes[chain[-1]]
        p0 = (port_x(out_ports, chain[0], idx), s_node.y + s_node.h)
        p_end = (port_x(in_ports, chain[-1], idx), t_node.y - 2)
        segs: list[tuple] = []
        if is_back:
            lx, r, i = lane_x[idx], 8.0, lane_i[idx]
            y_lo = layer_top[s_node.layer] + layer_h[s_node.layer] + 14 + 6 * (i % 6)
            y_hi = layer_top[t_node.layer] - 14 - 6 * (i % 6)
            x0, x2 = p0[0], p_end[0]
            segs = [
                ("L", p0, (x0, y_lo - r)),
                ("Q", (x0, y_lo - r), (x0, y_lo), (x0 + r, y_lo)),
                ("L", (x0 + r, y_lo), (lx - r, y_lo)),
                ("Q", (lx - r, y_lo), (lx, y_lo), (lx, y_lo - r)),
                ("L", (lx, y_lo - r), (lx, y_hi + r)),
                ("Q", (lx, y_hi + r), (lx, y_hi), (lx - r, y_hi)),
                ("L", (lx - r, y_hi), (x2 + r, y_hi)),
                ("Q", (x2 + r, y_hi), (x2, y_hi), (x2, y_hi + r)),
                ("L", (x2, y_hi + r), p_end),
            ]
        else:
            pts = [p0]
            for k in chain[1:-1]:
                dn = nodes[k]
                pts.append((dn.x, layer_top[dn.layer]))
                pts.append((dn.x, layer_top[dn.layer] + layer_h[dn.layer]))
            pts.append(p_end)
            for (xa, ya), (xb, yb) in pairwise(pts):
                if abs(xa - xb) < 0.5:
                    segs.append(("L", (xa, ya), (xb, yb)))
                else:
                    my = (ya + yb) / 2
                    segs.append(("C", (xa, ya), (xa, my), (xb, my), (xb, yb)))
        segments[idx] = segs

    # ---- edge labels: first free spot along the edge (boxes and other labels are obstacles)
    obstacles = [(n.x - n.w / 2 - 3, n.y - 3, n.x + n.w / 2 + 3, n.y + n.h + 3)
                 for n in nodes.values() if not n.dummy]
    labels: list[tuple[int, str, tuple[float, float, float, float]]] = []
    for idx in sorted(range(len(routes)), key=lambda i: not routes[i][0].taken):
        e = routes[idx][0]
        if not e.label or e.kind not in ("choice", "default", "catch", "undeclared"):
            continue
        text = fit_text(_short_label(e), 160, F_LABEL)
        tw, th = text_width(text, F_LABEL) + 8, 15.0
        segs = segments[idx]
        if routes[idx][2]:
            segs = [sg for sg in segs if sg[0] == "L" and abs(sg[1][0] - sg[2][0]) < 0.5][1:2] or segs
        cands = [_seg_point(sg, t) for sg in segs for t in (0.62, 0.76, 0.48, 0.88, 0.34)]
        chosen = None
        for cx, cy in cands:
            rect = (cx - tw / 2, cy - th / 2, cx + tw / 2, cy + th / 2)
            if not any(_overlaps(rect, o) for o in obstacles):
                chosen = rect
                break
        if chosen is None:
            cx, cy = cands[0]
            chosen = (cx - tw / 2, cy - th / 2, cx + tw / 2, cy + th / 2)
        obstacles.append(chosen)
        labels.append((idx, text, chosen))

    # ---- bounding box of the drawing, canvas size, header
    boxes = [(n.x - n.w / 2, n.y, n.x + n.w / 2, n.y + n.h) for n in nodes.values()]
    boxes += [(x, y, x, y) for segs in segments.values() for sg in segs for x, y in sg[1:]]
    boxes += [r for _, _, r in labels]
    min_x = min((b[0] for b in boxes), default=0.0)
    max_x = max((b[2] for b in boxes), default=0.0)
    max_y = max((b[3] for b in boxes), default=0.0)
    draw_w = max_x - min_x

    margin = 28
    header_h = 104
    title = f"Execution {graph.execution_name}"
    title = fit_text(title, 900, 17, True)
    status = graph.execution_status
    sub_parts = []
    if graph.started_at:
        sub_parts.append("started " + graph.started_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip())
    if graph.duration_s is not None:
        sub_parts.append("took " + fmt_duration(graph.duration_s))
    if graph.error:
        sub_parts.append(f"error {graph.error}")
    subtitle = "  ·  ".join(sub_parts)
    legend_rows = [
        [(k, lbl, text_width(lbl, F_SMALL) + 40) for k, lbl in _legend_items()],
        [(k, lbl, text_width(lbl, F_SMALL) + 46)
         for k, lbl in (("taken", "transition taken"), ("idle", "not taken"), ("catch", "Catch"))],
    ]
    legend_w = max(sum(w for *_, w in row) for row in legend_rows)
    title_w = text_width(title, 17, True) + text_width(status, 11, True) + 34
    width = max(draw_w + 2 * margin, legend_w + 2 * margin, title_w + 2 * margin, 380)
    height = header_h + margin + max_y + margin
    dx = margin - min_x + (width - 2 * margin - draw_w) / 2
    dy = header_h + margin

    out: list[str] = []
    w_, h_ = math.ceil(width), math.ceil(height)
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w_}" height="{h_}" '
        f'viewBox="0 0 {w_} {h_}" font-family="Helvetica, Arial, sans-serif" '
        f'role="img" aria-label="{xml_escape(title + " " + status)}">'
    )
    out.append(f"<title>{xml_escape(title)} ({xml_escape(status)})</title>")
    out.append("<defs>")
    for mid, colr in (("arrow-taken", EDGE_TAKEN), ("arrow-idle", EDGE_NOT_TAKEN)):
        out.append(
            f'<marker id="{mid}" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" '
            f'markerHeight="7" markerUnits="userSpaceOnUse" orient="auto">'
            f'<path d="M0,0.5 L10,5 L0,9.5 z" fill="{colr}"/></marker>'
        )
    out.append("</defs>")
    out.append(f'<rect x="0" y="0" width="{w_}" height="{h_}" fill="#ffffff"/>')

    # header: title + status badge, subtitle, legend
    sc = STATUS_COLORS.get(status, STATUS_COLORS["UNKNOWN"])
    out.append(f'<text x="{margin}" y="{margin + 8}" font-size="17" font-weight="bold" '
               f'fill="#16191f">{xml_escape(title)}</text>')
    bx = margin + text_width(title, 17, True) + 12
    bw = text_width(status, 11, True) + 16
    out.append(f'<rect x="{bx:.1f}" y="{margin - 7}" width="{bw:.1f}" height="20" rx="10" '
               f'fill="{sc}"/>')
    out.append(f'<text x="{bx + bw / 2:.1f}" y="{margin + 7}" font-size="11" font-weight="bold" '
               f'fill="#ffffff" text-anchor="middle">{xml_escape(status)}</text>')
    if subtitle:
        out.append(f'<text x="{margin}" y="{margin + 28}" font-size="11" fill="#5f6b7a">'
                   f'{xml_escape(fit_text(subtitle, width - 2 * margin, 11))}</text>')
    ly = margin + 50
    lx = float(margin)
    for key, lbl, w in legend_rows[0]:
        c = COLORS[key]
        out.append(f'<rect x="{lx:.1f}" y="{ly - 10}" width="20" height="13" rx="3" '
                   f'fill="{c["fill"]}" stroke="{c["stroke"]}" stroke-width="1.5"/>')
        out.append(f'<text x="{lx + 26:.1f}" y="{ly}" font-size="{F_SMALL}" fill="#414d5c">'
                   f'{xml_escape(lbl)}</text>')
        lx += w
    ly += 19
    lx = float(margin)
    for key, lbl, w in legend_rows[1]:
        colr = EDGE_NOT_TAKEN if key == "idle" else EDGE_TAKEN
        dash = ' stroke-dasharray="6 4"' if key == "catch" else ""
        out.append(f'<line x1="{lx:.1f}" y1="{ly - 4}" x2="{lx + 26:.1f}" y2="{ly - 4}" '
                   f'stroke="{colr}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 32:.1f}" y="{ly}" font-size="{F_SMALL}" fill="#414d5c">'
                   f'{xml_escape(lbl)}</text>')
        lx += w
    out.append(f'<line x1="{margin}" y1="{header_h}" x2="{w_ - margin}" y2="{header_h}" '
               f'stroke="#e9ebed"/>')

    out.append(f'<g transform="translate({dx:.1f},{dy:.1f})">')
    # edges: not taken first so taken ones sit on top
    out.append('<g class="edges">')
    for idx in sorted(range(len(routes)), key=lambda i: routes[i][0].taken):
        e = routes[idx][0]
        colr = EDGE_TAKEN if e.taken else EDGE_NOT_TAKEN
        marker = "arrow-taken" if e.taken else "arrow-idle"
        dash = {"catch": ' stroke-dasharray="6 4"', "undeclared": ' stroke-dasharray="2 3"'}.get(
            e.kind, "")
        sw = 2 if e.taken else 1.5
        tip = f"{_pretty(e.src)} → {_pretty(e.dst)}"
        if e.label:
            tip += f": {e.label}"
        if e.count > 1:
            tip += f" (taken {e.count}×)"
        out.append(
            f'<path d="{_seg_path(segments[idx])}" fill="none" stroke="{colr}" '
            f'stroke-width="{sw}"{dash} marker-end="url(#{marker})" data-src="{xml_escape(e.src)}" '
            f'data-dst="{xml_escape(e.dst)}" data-kind="{e.kind}" data-taken="{str(e.taken).lower()}">'
            f"<title>{xml_escape(tip)}</title></path>"
        )
    out.append("</g>")

    out.append('<g class="nodes">')
    for key, n in nodes.items():
        if n.dummy:
            continue
        if key in (START, END):
            reached = any(e.taken for e in graph.edges if key in (e.src, e.dst))
            fill = "#414d5c" if reached else "#c4c8cd"
            out.append(
                f'<g data-state="{_pretty(key)}"><rect x="{n.x - n.w / 2:.1f}" y="{n.y:.1f}" '
                f'width="{n.w}" height="{n.h}" rx="{n.h / 2}" fill="{fill}"/>'
                f'<text x="{n.x:.1f}" y="{n.y + n.h / 2 + 4:.1f}" font-size="11" '
                f'font-weight="bold" fill="#ffffff" text-anchor="middle">{_pretty(key)}</text></g>'
            )
            continue
        if key not in graph.states:
            red = COLORS["failed"]["stroke"]
            out.append(
                f'<g data-state="{xml_escape(key)}" data-missing="true"><rect x="{n.x - n.w / 2:.1f}" '
                f'y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h}" rx="9" fill="#ffffff" '
                f'stroke="{red}" stroke-width="1.5" stroke-dasharray="4 3"/>'
                f'<text x="{n.x:.1f}" y="{n.y + 19:.1f}" text-anchor="middle" font-size="{F_NAME}" '
                f'font-weight="bold" fill="{red}">{xml_escape(fit_text(key, n.w - 2 * PAD_X, F_NAME, True))}'
                f'</text><text x="{n.x:.1f}" y="{n.y + 34:.1f}" text-anchor="middle" '
                f'font-size="{F_SMALL}" fill="{red}">missing state</text></g>'
            )
            continue
        run = graph.states[key]
        c = COLORS.get(run.outcome, COLORS["not_run"])
        sw = 1.5 if run.outcome == "not_run" else 2.2
        dash = ' stroke-dasharray="6 3"' if run.outcome == "running" else ""
        tip = [f"{run.name} ({run.type}): {c['label']}"]
        if run.comment:
            tip.append(str(run.comment))
        if run.error:
            tip.append(f"{run.error}: {run.cause or ''}"[:500])
        out.append(f'<g data-state="{xml_escape(key)}" data-outcome="{run.outcome}">'
                   f"<title>{xml_escape(chr(10).join(tip))}</title>")
        out.append(
            f'<rect x="{n.x - n.w / 2:.1f}" y="{n.y:.1f}" width="{n.w:.1f}" height="{n.h}" '
            f'rx="9" fill="{c["fill"]}" stroke="{c["stroke"]}" stroke-width="{sw}"{dash}/>'
        )
        lines = node_lines(run, sdefs.get(key, {}))
        inner = n.w - 2 * PAD_X
        spacing = {"name": 17, "type": 15, "stats": 15, "error": 15}
        total = sum(spacing[r] for _, r in lines)
        ty = n.y + (n.h - total) / 2 + 12
        for text, role in lines:
            if role == "name":
                attrs = f'font-size="{F_NAME}" font-weight="bold" fill="{c["text"]}"'
                text = fit_text(text, inner, F_NAME, True)
            elif role == "error":
                attrs = f'font-size="{F_SMALL}" fill="{c["stroke"]}" font-weight="bold"'
                text = fit_text(text, inner, F_SMALL, True)
            else:
                grey = "#5f6b7a" if run.outcome != "not_run" else "#8d99a8"
                attrs = f'font-size="{F_SMALL}" fill="{grey}"'
                text = fit_text(text, inner, F_SMALL)
            out.append(f'<text x="{n.x:.1f}" y="{ty:.1f}" text-anchor="middle" {attrs}>'
                       f"{xml_escape(text)}</text>")
            ty += spacing[role]
        out.append("</g>")
    out.append("</g>")

    out.append('<g class="labels">')
    for idx, text, (x0, y0, x1, y1) in labels:
        tcol = "#414d5c" if routes[idx][0].taken else "#8d99a8"
        out.append(
            f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" rx="3" '
            f'fill="#ffffff" fill-opacity="0.94"/>'
            f'<text x="{(x0 + x1) / 2:.1f}" y="{y1 - 4:.1f}" font-size="{F_LABEL}" fill="{tcol}" '
            f'text-anchor="middle">{xml_escape(text)}</text>'
        )
    out.append("</g>")
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _pretty(key: str) -> str:
    return {START: "Start", END: "End"}.get(key, key)


# --------------------------------------------------------------------------- HTML


def _pretty_json(text: str | None, limit: int = 4000) -> str:
    if text is None:
        return ""
    try:
        text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        pass
    if len(text) > limit:
        text = text[:limit] + f"\n… ({len(text) - limit} more characters)"
    return text


def render_html(graph: ExecutionGraph, svg: str) -> str:
    """A self-contained page: the SVG, a table of states, the execution's input/output."""
    e = html.escape
    status = graph.execution_status
    sc = STATUS_COLORS.get(status, STATUS_COLORS["UNKNOWN"])
    rows = []
    ordered = sorted(
        graph.states.values(),
        key=lambda r: (r.entered_at is None, r.entered_at or datetime.max.replace(tzinfo=UTC)),
    )
    for r in ordered:
        c = COLORS.get(r.outcome, COLORS["not_run"])
        retries = f"{r.retries}" if r.retries else ""
        attempts = str(r.attempts) if r.attempts else ""
        err = ""
        if r.error:
            cause = (r.cause or "")
            cause = cause[:300] + ("…" if len(cause) > 300 else "")
            err = f"<b>{e(r.error)}</b>" + (f"<br><span class=cause>{e(cause)}</span>" if cause else "")
        rows.append(
            "<tr>"
            f"<td class=name>{e(r.name)}</td>"
            f"<td>{e(r.type)}{('<br><span class=res>' + e(r.resource) + '</span>') if r.resource else ''}</td>"
            f"<td><span class=badge style=\"background:{c['fill']};border-color:{c['stroke']}\">"
            f"{e(c['label'])}</span></td>"
            f"<td>{e(fmt_time(r.entered_at, graph.started_at))}</td>"
            f"<td class=num>{e(fmt_duration(r.duration_s))}</td>"
            f"<td class=num>{e(str(r.entries) if r.entries else '')}</td>"
            f"<td class=num>{e(attempts)}</td>"
            f"<td class=num>{e(retries)}</td>"
            f"<td>{err}</td>"
            "</tr>"
        )
    io_blocks = []
    for title, text in (("Input", graph.input), ("Output", graph.output)):
        if text is not None:
            io_blocks.append(f"<div class=io><h3>{title}</h3><pre>{e(_pretty_json(text))}</pre></div>")
    if graph.error or graph.cause:
        io_blocks.append(
            f"<div class=io><h3>Error</h3><pre>{e(graph.error or '')}\n\n"
            f"{e(_pretty_json(graph.cause))}</pre></div>"
        )
    meta = []
    if graph.started_at:
        meta.append(f"started {e(graph.started_at.isoformat(timespec='milliseconds'))}")
    if graph.stopped_at:
        meta.append(f"stopped {e(graph.stopped_at.isoformat(timespec='milliseconds'))}")
    if graph.duration_s is not None:
        meta.append(f"duration {e(fmt_duration(graph.duration_s))}")
    if graph.comment:
        meta.append(e(str(graph.comment)))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{e(graph.execution_name)} – {e(status)}</title>
<style>
body {{ font-family: Helvetica, Arial, sans-serif; color: #16191f; margin: 24px; background: #fafafa; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
.status {{ color: #fff; background: {sc}; border-radius: 10px; padding: 2px 10px; font-size: 12px;
  vertical-align: middle; margin-left: 8px; }}
.meta {{ color: #5f6b7a; font-size: 13px; margin-bottom: 16px; }}
.graph {{ background: #fff; border: 1px solid #e9ebed; border-radius: 8px; padding: 8px;
  overflow: auto; margin-bottom: 20px; }}
table {{ border-collapse: collapse; background: #fff; font-size: 13px; width: 100%; }}
th, td {{ border-bottom: 1px solid #e9ebed; padding: 6px 10px; text-align: left; vertical-align: top; }}
th {{ background: #f4f5f6; font-weight: 600; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
td.name {{ font-weight: 600; }}
.badge {{ border: 1.5px solid; border-radius: 10px; padding: 1px 8px; white-space: nowrap; }}
.res, .cause {{ color: #5f6b7a; font-size: 12px; }}
.ios {{ display: flex; gap: 16px; flex-wrap: wrap; margin-top: 20px; }}
.io {{ flex: 1 1 320px; min-width: 0; }}
.io h3 {{ font-size: 14px; margin: 0 0 6px; }}
pre {{ background: #fff; border: 1px solid #e9ebed; border-radius: 6px; padding: 10px;
  font-size: 12px; overflow: auto; max-height: 360px; white-space: pre-wrap; word-break: break-all; }}
</style>
</head>
<body>
<h1>Execution {e(graph.execution_name)}<span class="status">{e(status)}</span></h1>
<div class="meta">{" · ".join(meta)}</div>
<div class="graph">
{svg}
</div>
<table class="states">
<thead><tr><th>State</th><th>Type</th><th>Outcome</th><th>Entered</th><th>Duration</th>
<th>Entries</th><th>Attempts</th><th>Retries</th><th>Error</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<div class="ios">
{chr(10).join(io_blocks)}
</div>
</body>
</html>
"""


