"""Positions: a layered (Sugiyama style) top-to-bottom layout of an `ExecutionGraph`.

Cycles are broken by a DFS from Start, states get longest-path layers, long edges get dummy
nodes, layers are ordered by barycentre sweeps and x positions are a least-squares fit that
keeps order and spacing. Box sizes come from the lines each box shows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise

from .model import END, START, Edge, ExecutionGraph, StateRun, type_label
from .text import fmt_duration, fmt_retries, text_width

NODE_H = 66
MIN_W, MAX_W = 150, 300
PAD_X = 14
LAYER_GAP = 70
NODE_GAP = 34
DUMMY_W = 14
PSEUDO_W, PSEUDO_H = 64, 26
F_NAME, F_SMALL, F_LABEL = 13, 11, 10


@dataclass
class Node:
    key: str
    w: float
    h: float
    layer: int = 0
    x: float = 0.0  # centre
    y: float = 0.0  # top
    dummy: bool = False


def node_lines(run: StateRun, sdef: dict) -> list[tuple[str, str]]:
    """(text, role) lines shown in a box, before fitting to width."""
    lines = [(run.name, "name"), (type_label(run, sdef), "type")]
    stats = []
    if run.outcome == "running":
        stats.append("in progress…")
    elif run.outcome == "not_run":
        stats.append("not run")
    elif run.duration_s is not None:
        stats.append(fmt_duration(run.duration_s))
    if run.entries > 1:
        stats.append(f"{run.entries} entries")
    if run.retries:
        stats.append(fmt_retries(run.retries))
    lines.append(("  ·  ".join(stats), "stats"))
    if run.error and run.outcome in ("failed", "caught"):
        lines.append((run.error, "error"))
    return lines


def layout_graph(graph: ExecutionGraph, definition_types: dict[str, dict]):
    names = list(graph.states)
    fwd_edges = [e for e in graph.edges if e.src != e.dst]
    succ: dict[str, list[str]] = {n: [] for n in [START, END, *names]}
    for e in fwd_edges:
        succ.setdefault(e.src, [])
        succ.setdefault(e.dst, [])
        if e.dst not in succ[e.src]:
            succ[e.src].append(e.dst)

    # 1. break cycles: DFS from Start (then from anything unreached); back edges point upward.
    back: set[tuple[str, str]] = set()
    color: dict[str, int] = {}
    order_seen: list[str] = []

    def dfs(root: str) -> None:
        stack = [(root, iter(succ[root]))]
        color[root] = 1
        order_seen.append(root)
        while stack:
            node, it = stack[-1]
            for nxt in it:
                c = color.get(nxt, 0)
                if c == 0:
                    color[nxt] = 1
                    order_seen.append(nxt)
                    stack.append((nxt, iter(succ[nxt])))
                    break
                if c == 1:
                    back.add((node, nxt))
            else:
                color[node] = 2
                stack.pop()

    dfs(START)
    for n in [*names, END]:
        if n not in color:
            dfs(n)

    dag = {n: [m for m in succ[n] if (n, m) not in back and m != END] for n in succ}
    preds: dict[str, list[str]] = {n: [] for n in succ}
    for n, ms in dag.items():
        for m in ms:
            preds[m].append(n)

    # 2. longest-path layering; End goes alone at the bottom.
    layer: dict[str, int] = {}

    def layer_of(n: str) -> int:
        if n in layer:
            return layer[n]
        todo = [n]
        while todo:
            cur = todo[-1]
            missing = [p for p in preds[cur] if p not in layer]
            if missing:
                todo.extend(missing)
                continue
            todo.pop()
            if cur not in layer:
                layer[cur] = 0 if cur == START else max((layer[p] + 1 for p in preds[cur]), default=1)
        return layer[n]

    for n in order_seen:
        if n != END:
            layer_of(n)
    has_end = any(e.dst == END for e in graph.edges)
    if has_end:
        layer[END] = max(layer.values(), default=0) + 1

    # 3. nodes (with dummies on long edges)
    nodes: dict[str, Node] = {}
    for n, lv in layer.items():
        if n in (START, END):
            nodes[n] = Node(n, PSEUDO_W, PSEUDO_H, lv)
        elif n not in graph.states:  # a Next to a state the definition lacks: show the bug
            w = max(text_width(n, F_NAME, True), text_width("missing state", F_SMALL)) + 2 * PAD_X
            nodes[n] = Node(n, min(MAX_W, max(MIN_W, w)), 44, lv)
        else:
            run = graph.states[n]
            lines = node_lines(run, definition_types.get(n, {}))
            w = max(text_width(t, F_NAME if r == "name" else F_SMALL, r in ("name", "error"))
                    for t, r in lines)
            nodes[n] = Node(n, min(MAX_W, max(MIN_W, w + 2 * PAD_X + 6)), NODE_H, lv)

    routes: list[tuple[Edge, list[str], bool]] = []  # (edge, node chain, is_back)
    dummy_id = 0
    for e in graph.edges:
        if e.src not in nodes or e.dst not in nodes:
            continue
        is_back = (e.src, e.dst) in back or e.src == e.dst
        if is_back:
            routes.append((e, [e.src, e.dst], True))
            continue
        chain = [e.src]
        for lv in range(nodes[e.src].layer + 1, nodes[e.dst].layer):
            dummy_id += 1
            key = f"__d{dummy_id}"
            nodes[key] = Node(key, DUMMY_W, 0, lv, dummy=True)
            chain.append(key)
        chain.append(e.dst)
        routes.append((e, chain, False))

    nlayers = max((n.layer for n in nodes.values()), default=0) + 1
    up: dict[str, list[str]] = {k: [] for k in nodes}
    down: dict[str, list[str]] = {k: [] for k in nodes}
    for _, chain, is_back in routes:
        if is_back:
            continue
        for a, b in pairwise(chain):
            down[a].append(b)
            up[b].append(a)

    # 4. ordering within layers: DFS order first, then barycentre sweeps, keep the best.
    rank_seen = {n: i for i, n in enumerate(order_seen)}
    layers: list[list[str]] = [[] for _ in range(nlayers)]
    for k, nd in nodes.items():
        layers[nd.layer].append(k)

    def first_rank(k: str) -> float:
        if k in rank_seen:
            return rank_seen[k]
        # dummies: follow the rank of the source of their chain
        src = k
        while nodes[src].dummy and up[src]:
            src = up[src][0]
        return rank_seen.get(src, 0) + 0.5

    for lv in layers:
        lv.sort(key=first_rank)

    def crossings(lys: list[list[str]]) -> int:
        total = 0
        for i in range(len(lys) - 1):
            pos = {k: j for j, k in enumerate(lys[i + 1])}
            segs = [(j, pos[b]) for j, a in enumerate(lys[i]) for b in down[a] if b in pos]
            for s in range(len(segs)):
                for t in range(s + 1, len(segs)):
                    (a1, b1), (a2, b2) = segs[s], segs[t]
                    if (a1 - a2) * (b1 - b2) < 0:
                        total += 1
        return total

    best = [list(lv) for lv in layers]
    best_c = crossings(best)
    for it in range(12):
        rng = range(1, nlayers) if it % 2 == 0 else range(nlayers - 2, -1, -1)
        for i in rng:
            ref = layers[i - 1] if it % 2 == 0 else layers[i + 1]
            pos = {k: j for j, k in enumerate(ref)}
            nb = up if it % 2 == 0 else down
            cur = {k: j for j, k in enumerate(layers[i])}
            bary: dict[str, tuple[float, int]] = {}  # (barycentre of neighbours, current index)
            for k, j in cur.items():
                ps = [pos[p] for p in nb[k] if p in pos]
                bary[k] = (sum(ps) / len(ps) if ps else j, j)
            layers[i].sort(key=bary.__getitem__)
        c = crossings(layers)
        if c < best_c:
            best, best_c = [list(lv) for lv in layers], c
    layers = best

    # 5. x positions: pull each node toward its neighbours' mean, keep order and spacing.
    # Dummies weigh more so long edges run straight and real boxes move aside instead.
    def place(lv: list[str], desired: list[float]) -> list[float]:
        if not lv:
            return []
        offs = [0.0]
        for j in range(1, len(lv)):
            offs.append(offs[-1] + (nodes[lv[j - 1]].w + nodes[lv[j]].w) / 2 + NODE_GAP)
        # weighted pool-adjacent-violators: least squares under "order and gaps kept"
        blocks: list[list[float]] = []  # [weighted sum, weight, count]
        for k, d, o in zip(lv, desired, offs, strict=True):
            wt = 4.0 if nodes[k].dummy else 1.0
            blocks.append([(d - o) * wt, wt, 1])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                s_, w_, c_ = blocks.pop()
                blocks[-1][0] += s_
                blocks[-1][1] += w_
                blocks[-1][2] += c_
        fitted: list[float] = []
        for s_, w_, c_ in blocks:
            fitted.extend([s_ / w_] * int(c_))
        return [f + o for f, o in zip(fitted, offs, strict=True)]

    for lv in layers:  # initial: centred rows
        for k, x in zip(lv, place(lv, [0.0] * len(lv)), strict=True):
            nodes[k].x = x

    def sweep(rng: Iterable[int], nbmaps: tuple[dict[str, list[str]], ...]) -> None:
        for i in rng:
            lv = layers[i]
            desired = []
            for k in lv:
                ns = [m for nb in nbmaps for m in nb[k]]
                desired.append(sum(nodes[m].x for m in ns) / len(ns) if ns else nodes[k].x)
            for k, x in zip(lv, place(lv, desired), strict=True):
                nodes[k].x = x

    for _ in range(8):
        sweep(range(1, nlayers), (up,))
        sweep(range(nlayers - 2, -1, -1), (down,))
    sweep(range(nlayers), (up, down))
    sweep(range(1, nlayers), (up,))  # last word to the parents: chains end up vertical

    # 6. straighten long edges: move a whole dummy chain onto one x where every layer has room.
    where = {k: (i, j) for i, lv in enumerate(layers) for j, k in enumerate(lv)}

    def fits(k: str, x: float) -> bool:
        i, j = where[k]
        lv, half = layers[i], nodes[k].w / 2
        if j > 0:
            left = nodes[lv[j - 1]]
            if left.x + left.w / 2 + NODE_GAP > x - half:
                return False
        if j + 1 < len(lv):
            right = nodes[lv[j + 1]]
            if right.x - right.w / 2 - NODE_GAP < x + half:
                return False
        return True

    chains = sorted((c[1:-1] for _, c, b in routes if not b and len(c) > 2), key=len, reverse=True)
    for dums in chains:
        xs = sorted(nodes[k].x for k in dums)
        for x in (xs[len(xs) // 2], xs[0], xs[-1]):
            if all(fits(k, x) for k in dums):
                for k in dums:
                    nodes[k].x = x
                break

    return nodes, layers, routes


# --------------------------------------------------------------------------- SVG
