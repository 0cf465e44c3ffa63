"""The computation graph drawn as SVG by a layered layout, left to right, without Graphviz."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from html import escape

from .tools import KINDS, Edge, Graph

NODE_H, ROW, GAP = 28.0, 46.0, 96.0  # node height, vertical pitch, space between columns for labels
CHAR, LABEL_CHAR, PAD = 7.3, 6.1, 14.0  # monospace advance at 12px and 10px; text padding in a node
MARGIN = 16.0
BACKWARD = "#a33a3a"  # the colour the DOT and Mermaid graphs give backward edges


def _style(kind: str) -> dict[str, str]:
    """fill, stroke and dasharray of a kind, read from its Mermaid class style in tools.KINDS."""
    return dict(part.split(":", 1) for part in KINDS[kind][2].split(","))


@dataclass(eq=False)
class _Slot:
    """A node, or the point where an edge crosses a column between its ends (width 0)."""

    layer: int
    width: float
    y: float = 0.0


BACKWARD_KINDS = ("seed", "gradient", "gradient temporary")


def _layers(g: Graph) -> dict[str, int]:
    """Each node's column: the longest path to it, the backward pass after the whole forward pass
    (as it runs), and each input just before the first statement that reads it."""
    preds: dict[str, set[str]] = defaultdict(set)
    succs: dict[str, set[str]] = defaultdict(set)
    for e in g.edges:
        preds[e.target].add(e.source)
        succs[e.source].add(e.target)
    order: list[str] = []  # topological, ties in the graph's own order
    waiting = {n: len(preds[n]) for n in g.nodes}
    ready = [n for n in g.nodes if not waiting[n]]
    while ready:
        n = ready.pop(0)
        order.append(n)
        for m in succs[n]:
            waiting[m] -= 1
            if not waiting[m]:
                ready.append(m)
    order += [n for n in g.nodes if n not in order]  # unreachable on a DAG; kept for safety
    layer: dict[str, int] = {}
    for n in order:
        layer[n] = max((layer[p] + 1 for p in preds[n] if p in layer), default=0)
    first_back = 1 + max((layer[n] for n, v in g.nodes.items() if v.kind not in BACKWARD_KINDS), default=-1)
    for n in order:
        if g.nodes[n].kind in BACKWARD_KINDS:
            layer[n] = max(first_back, max((layer[p] + 1 for p in preds[n]), default=0))
    for n in reversed(order):
        if not preds[n] and succs[n]:
            layer[n] = min(layer[s] for s in succs[n]) - 1
    return layer


def _order(columns: list[list[_Slot]], links: list[tuple[_Slot, _Slot]], sweeps: int = 8) -> None:
    """Reorder each column by the mean position of its neighbours in the column before (then
    after), the barycentre heuristic for fewer crossings."""
    left: dict[int, list[_Slot]] = defaultdict(list)
    right: dict[int, list[_Slot]] = defaultdict(list)
    for a, b in links:
        right[id(a)].append(b)
        left[id(b)].append(a)
    pos = {id(s): k for col in columns for k, s in enumerate(col)}
    for sweep in range(sweeps):
        forward = sweep % 2 == 0
        for col in columns[1:] if forward else columns[-2::-1]:
            near = left if forward else right

            def centre(s: _Slot, near: dict[int, list[_Slot]] = near) -> float:
                ns = near[id(s)]
                return sum(pos[id(n)] for n in ns) / len(ns) if ns else pos[id(s)]

            col.sort(key=centre)
            pos.update({id(s): k for k, s in enumerate(col)})


def _place(columns: list[list[_Slot]], links: list[tuple[_Slot, _Slot]]) -> None:
    """Vertical positions: each slot moves towards its neighbours' mean, keeping its column's
    order and a row's distance from the slots beside it."""
    for col in columns:
        top = -ROW * (len(col) - 1) / 2
        for k, s in enumerate(col):
            s.y = top + ROW * k
    near: dict[int, list[_Slot]] = defaultdict(list)
    for a, b in links:
        near[id(a)].append(b)
        near[id(b)].append(a)
    for _ in range(12):
        for col in columns:
            want = [sum(n.y for n in near[id(s)]) / len(near[id(s)]) if near[id(s)] else s.y for s in col]
            for k, s in enumerate(col):  # push down past the one above, then up past the one below
                s.y = max(want[k], col[k - 1].y + ROW) if k else want[k]
            for k in range(len(col) - 2, -1, -1):
                col[k].y = min(col[k].y, col[k + 1].y - ROW)


def _node_svg(text: str, kind: str, x: float, y: float, w: float) -> str:
    st = _style(kind)
    rx = 4 if kind in ("input", "param", "label", "seed") else NODE_H / 2
    dash = f' stroke-dasharray="{st["stroke-dasharray"]}"' if "stroke-dasharray" in st else ""
    bold = 2.2 if kind == "param" else 1.2
    return (
        f'<g class="node {kind.replace(" ", "-")}"><title>{escape(kind)}</title>'
        f'<rect x="{x:.1f}" y="{y - NODE_H / 2:.1f}" width="{w:.1f}" height="{NODE_H:.0f}" rx="{rx:.0f}" '
        f'fill="{st["fill"]}" stroke="{st["stroke"]}" stroke-width="{bold}"{dash}/>'
        f'<text x="{x + w / 2:.1f}" y="{y + 4:.1f}" text-anchor="middle">{escape(text)}</text></g>'
    )


def _curve(points: list[tuple[float, float]]) -> str:
    """A path through points: a horizontal S-curve between columns, straight across a dummy's column."""
    (x0, y0), rest = points[0], points[1:]
    d = f"M{x0:.1f},{y0:.1f}"
    for k, (x, y) in enumerate(rest):
        px, py = points[k]
        if k % 2 == 0:  # from one column's right side to the next column's left side
            dx = (x - px) / 2
            d += f" C{px + dx:.1f},{py:.1f} {x - dx:.1f},{y:.1f} {x:.1f},{y:.1f}"
        else:
            d += f" L{x:.1f},{y:.1f}"
    return d


def _label_svg(text: str, x: float, y: float, backward: bool) -> str:
    colour = f' fill="{BACKWARD}"' if backward else ""
    return f'<text class="label" x="{x:.1f}" y="{y:.1f}" text-anchor="middle"{colour}>{escape(text)}</text>'


def graph_svg(g: Graph) -> str:
    """The graph as a standalone SVG: tensors as boxes coloured by kind (as `indexgrad graph`
    colours them), each operand an arrow labelled with its operation; backward arrows dashed red."""
    layer = _layers(g)
    slots = {n: _Slot(layer[n], max(40.0, CHAR * len(node.text) + 2 * PAD)) for n, node in g.nodes.items()}
    paths: list[list[_Slot]] = []  # per edge: its source, its dummies, its target
    for e in g.edges:
        a, b = slots[e.source], slots[e.target]
        paths.append([a, *(_Slot(c, 0.0) for c in range(a.layer + 1, b.layer)), b])
    depth = max(layer.values(), default=-1) + 1
    columns: list[list[_Slot]] = [[] for _ in range(depth)]
    for s in slots.values():
        columns[s.layer].append(s)
    for p in paths:
        for s in p[1:-1]:
            columns[s.layer].append(s)
    links = [(p[i], p[i + 1]) for p in paths for i in range(len(p) - 1)]
    _order(columns, links)
    _place(columns, links)
    widths = [max((s.width for s in col), default=0.0) for col in columns]
    lefts, x = [], MARGIN
    for w in widths:
        lefts.append(x)
        x += w + GAP
    top = min((s.y for col in columns for s in col), default=0.0) - NODE_H / 2 - MARGIN
    bottom = max((s.y for col in columns for s in col), default=0.0) + NODE_H / 2 + MARGIN

    def box(s: _Slot) -> tuple[float, float]:  # a node's left edge, centred in its column
        return lefts[s.layer] + (widths[s.layer] - s.width) / 2, s.y - top

    body: list[str] = []
    incoming: dict[str, list[int]] = defaultdict(list)
    for k, e in enumerate(g.edges):
        incoming[e.target].append(k)
    for e, p in zip(g.edges, paths):
        points = [(box(p[0])[0] + p[0].width, p[0].y - top)]
        for s in p[1:-1]:
            points += [(lefts[s.layer], s.y - top), (lefts[s.layer] + widths[s.layer], s.y - top)]
        points.append((box(p[-1])[0], p[-1].y - top))
        dash = f' stroke="{BACKWARD}" stroke-dasharray="5 3" marker-end="url(#back)"' if e.backward else ""
        body.append(f'<path class="edge" d="{_curve(points)}"{dash}/>')
    for ks in incoming.values():
        body.extend(_labels(g.edges, ks, paths, box, top))
    for n, node in g.nodes.items():
        x0, y0 = box(slots[n])
        body.append(_node_svg(node.text, node.kind, x0, y0, slots[n].width))
    legend, legend_h = _legend(g, bottom - top)
    width = max(x - GAP + MARGIN, legend[1])
    height = bottom - top + legend_h
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" font-family="ui-monospace, Menlo, Consolas, '
        f'monospace" font-size="12"><title>computation graph of {escape(g.title)}</title>'
        "<defs>"
        '<marker id="fwd" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#555"/></marker>'
        '<marker id="back" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="{BACKWARD}"/></marker>'
        "</defs>"
        '<style>.edge{fill:none;stroke:#555;stroke-width:1.2;marker-end:url(#fwd)}'
        ".label{font-size:10px;paint-order:stroke;stroke:#fff;stroke-width:3px;fill:#333}</style>"
        + "".join(body)
        + legend[0]
        + "</svg>"
    )


def _labels(
    edges: list[Edge],
    ks: list[int],
    paths: list[list[_Slot]],
    box: Callable[[_Slot], tuple[float, float]],
    top: float,
) -> list[str]:
    """The operation of a statement once, before its target, when all its operands share it; else
    each operand's label half-way along its last stretch."""
    target = paths[ks[0]][-1]
    tx = box(target)[0]
    if len({edges[k].label for k in ks}) == 1:
        e = edges[ks[0]]
        return [_label_svg(e.label, tx - GAP / 2, target.y - top - 5, e.backward)]
    out = []
    for k in ks:
        before = paths[k][-2]
        bx = box(before)[0] + before.width if len(paths[k]) == 2 else tx - GAP
        y = (before.y + target.y) / 2 - top - 4
        out.append(_label_svg(edges[k].label, (bx + tx) / 2, y, edges[k].backward))
    return out


def _legend(g: Graph, y: float) -> tuple[tuple[str, float], float]:
    """A row of the kinds the graph shows: ((svg, width), height)."""
    kinds = list(dict.fromkeys(n.kind for n in g.nodes.values()))
    x, parts = MARGIN, []
    for kind in kinds:
        w = max(40.0, LABEL_CHAR * len(kind) + PAD)
        st = _style(kind)
        dash = f' stroke-dasharray="{st["stroke-dasharray"]}"' if "stroke-dasharray" in st else ""
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="18" rx="4" fill="{st["fill"]}" '
            f'stroke="{st["stroke"]}"{dash}/><text class="label" x="{x + w / 2:.1f}" y="{y + 13:.1f}" '
            f'text-anchor="middle">{escape(kind)}</text>'
        )
        x += w + 8
    if any(e.backward for e in g.edges):
        parts.append(_label_svg("- - → backward", x + 44, y + 13, True))
        x += 100
    return ("".join(parts), x + MARGIN), (26.0 if kinds else 0.0)
