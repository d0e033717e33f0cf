"""Labelled schematics drawn with matplotlib: boxes, arrows and rows of tokens.

The book draws its architecture pictures from code, so that they are versioned with
the text and render in the static book like any other figure. Three levels:

* `Diagram` — a blank canvas in data coordinates with `box`, `arrow` and `note`;
* `flow(steps, skips=...)` — a vertical stack of boxes joined by arrows, with
  residual (skip) arrows drawn on the left: a Transformer block;
* `token_rows(tokens, rows)` — a row of tokens and, under it, one row of embedding
  boxes per table, joined by ⊕ signs: what BERT or GPT reads.

    >>> from plmkit.diagram import flow
    >>> fig = flow(["x", "LayerNorm", "attention", "+"], skips=[(0, 3)])
    >>> sorted(t.get_text() for t in fig.axes[0].texts)[:2]
    ['+', 'LayerNorm']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["Box", "Diagram", "flow", "token_rows", "PALETTE"]

# One colour per kind of part, used the same way in every chapter's figures.
PALETTE = {
    "input": "#e8e8e8",
    "norm": "#fde9b5",
    "attention": "#f8c9c4",
    "ffn": "#c9e4f6",
    "add": "#ffffff",
    "embedding": "#d5ecd0",
    "position": "#e6d9f2",
    "segment": "#fbdcc0",
    "head": "#d9d9f7",
    "output": "#e8e8e8",
}


@dataclass(frozen=True)
class Box:
    """A drawn box; `x, y` is its centre, `w, h` its size (data coordinates)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def top(self) -> tuple[float, float]:
        return (self.x, self.y + self.h / 2)

    @property
    def bottom(self) -> tuple[float, float]:
        return (self.x, self.y - self.h / 2)

    @property
    def left(self) -> tuple[float, float]:
        return (self.x - self.w / 2, self.y)

    @property
    def right(self) -> tuple[float, float]:
        return (self.x + self.w / 2, self.y)


def _color(kind_or_color: str) -> str:
    return PALETTE.get(kind_or_color, kind_or_color)


class Diagram:
    """A canvas `width` x `height` data units wide, axes hidden, 1 unit ≈ `scale` inches."""

    def __init__(self, width: float, height: float, *, scale: float = 0.9, title: str | None = None):
        if not (width > 0 and height > 0):
            raise ValueError(f"width and height must be positive, got {width} x {height}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.fig, self.ax = plt.subplots(figsize=(width * scale, height * scale))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_aspect("equal")
        self.ax.axis("off")
        if title:
            self.ax.set_title(title, fontsize=11)

    def box(self, x: float, y: float, label: str, *, w: float = 2.4, h: float = 0.6,
            kind: str = "input", fontsize: float = 9, round_: bool = True) -> Box:
        """A labelled box centred at (x, y); `kind` is a PALETTE key or a matplotlib colour."""
        if not (w > 0 and h > 0):
            raise ValueError(f"box size must be positive, got w={w}, h={h}")
        style = "round,pad=0.02,rounding_size=0.12" if round_ else "square,pad=0.02"
        self.ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle=style,
                                         facecolor=_color(kind), edgecolor="#444444", linewidth=1))
        self.ax.text(x, y, label, ha="center", va="center", fontsize=fontsize)
        return Box(x, y, w, h)

    def circle(self, x: float, y: float, label: str = "+", *, r: float = 0.22, fontsize: float = 11) -> Box:
        """A small circle with a symbol in it (a residual add, a ⊕ of embeddings)."""
        self.ax.add_patch(plt.Circle((x, y), r, facecolor="white", edgecolor="#444444", linewidth=1))
        self.ax.text(x, y, label, ha="center", va="center", fontsize=fontsize)
        return Box(x, y, 2 * r, 2 * r)

    def arrow(self, start: tuple[float, float], end: tuple[float, float], *, label: str | None = None,
              bend: float = 0.0, color: str = "#444444", dashed: bool = False, fontsize: float = 8) -> None:
        """An arrow from `start` to `end`; `bend` curves it (matplotlib arc3 radius)."""
        self.ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, color=color,
                                          linewidth=1, linestyle="--" if dashed else "-",
                                          connectionstyle=f"arc3,rad={bend}", shrinkA=0, shrinkB=0))
        if label:
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            self.ax.text(mx + 0.08, my, label, ha="left", va="center", fontsize=fontsize, color="#333333")

    def note(self, x: float, y: float, text: str, *, fontsize: float = 8, ha: str = "left",
             color: str = "#333333", **kw) -> None:
        """Free text (a shape, a comment) at (x, y)."""
        self.ax.text(x, y, text, ha=ha, va="center", fontsize=fontsize, color=color, **kw)


def _kind_of(label: str) -> str:
    low = label.lower()
    if low in {"+", "⊕"}:
        return "add"
    for key, kind in (("norm", "norm"), ("attention", "attention"), ("feed", "ffn"), ("ffn", "ffn"),
                      ("mlp", "ffn"), ("embed", "embedding"), ("head", "head"), ("softmax", "head")):
        if key in low:
            return kind
    return "input"


def flow(steps: Sequence[str], *, skips: Sequence[tuple[int, int]] = (), notes: dict[int, str] | None = None,
         title: str | None = None, x: float = 2.4, spacing: float = 0.95, width: float = 5.2,
         diagram: Diagram | None = None, kinds: dict[int, str] | None = None):
    """Draw `steps` bottom to top, joined by arrows; "+" steps are drawn as add circles.

    skips: pairs (i, j), i < j: an arrow from the output of step i around the left
        side into step j (a residual connection).
    notes: step index -> text written to the right of that step (e.g. a shape).
    kinds: step index -> PALETTE key, overriding the colour guessed from the label.
    Returns the matplotlib Figure (or draws into `diagram` and returns its figure).
    """
    steps = list(steps)
    if not steps:
        raise ValueError("flow needs at least one step")
    n = len(steps)
    for i, j in skips:
        if not (0 <= i < j < n):
            raise ValueError(f"skip ({i}, {j}) must satisfy 0 <= i < j < {n} (the number of steps)")
        if steps[j] not in {"+", "⊕"}:
            raise ValueError(f"skip ({i}, {j}) must end in an add step ('+'), got {steps[j]!r}")
    notes, kinds = dict(notes or {}), dict(kinds or {})
    for key in list(notes) + list(kinds):
        if not 0 <= key < n:
            raise ValueError(f"notes/kinds index {key} is outside 0..{n - 1}")
    d = diagram or Diagram(width, spacing * n + 0.6, title=title)
    boxes: list[Box] = []
    box_w = 2.4
    for i, label in enumerate(steps):
        y = 0.5 + spacing * i
        if label in {"+", "⊕"}:
            boxes.append(d.circle(x, y, label))
        else:
            boxes.append(d.box(x, y, label, w=box_w, kind=kinds.get(i, _kind_of(label))))
        if i in notes:
            d.note(x + 1.55, y, notes[i])
    for a, b in zip(boxes, boxes[1:]):
        d.arrow(a.top, b.bottom)
    for k, (i, j) in enumerate(skips):
        # tap the arrow just above step i, go round on the left of every box, enter the add
        src, dst = boxes[i], boxes[j]
        lane = x - box_w / 2 - 0.3 - 0.25 * k
        start_y = (src.top[1] + boxes[i + 1].bottom[1]) / 2
        d.ax.plot([src.x, lane, lane], [start_y, start_y, dst.y], color="#444444", linewidth=1)
        d.arrow((lane, dst.y), dst.left)
    return d.fig


def token_rows(tokens: Sequence[str], rows: Sequence[tuple[str, Sequence[str], str]], *,
               title: str | None = None, cell: float = 1.05, output: Sequence[str] | None = None,
               output_name: str | None = None):
    """A row of input tokens and, under it, the embedding rows that are summed.

    rows: (name, one label per token, PALETTE key or colour), e.g.
        ("Token", ["E[CLS]", "E_my", ...], "embedding"); rows are joined by ⊕.
    output: optional labels drawn above the tokens (e.g. next-token targets), one per token.
    """
    tokens = list(tokens)
    if not tokens:
        raise ValueError("token_rows needs at least one token")
    if not rows:
        raise ValueError("token_rows needs at least one embedding row")
    for name, labels, _ in rows:
        if len(labels) != len(tokens):
            raise ValueError(f"row {name!r} has {len(labels)} labels for {len(tokens)} tokens")
    if output is not None and len(output) != len(tokens):
        raise ValueError(f"output has {len(output)} labels for {len(tokens)} tokens")
    left = 1.9
    height = 0.55 + 1.0 * (output is not None) + 1.0 + 1.5 * (len(rows) - 1) + 0.45
    d = Diagram(left + cell * len(tokens) + 0.2, height, title=title)
    y = d.ax.get_ylim()[1] - 0.55
    if output is not None:
        d.note(0.1, y, output_name or "Targets", fontsize=9, fontweight="bold")
        for k, label in enumerate(output):
            d.box(left + cell * (k + 0.5), y, label, w=cell * 0.9, h=0.5, kind="head", fontsize=8)
            d.arrow((left + cell * (k + 0.5), y - 0.75), (left + cell * (k + 0.5), y - 0.27))
        y -= 1.0
    d.note(0.1, y, "Input", fontsize=9, fontweight="bold")
    for k, tok in enumerate(tokens):
        d.box(left + cell * (k + 0.5), y, tok, w=cell * 0.9, h=0.5, kind="input", fontsize=8)
    for r, (name, labels, kind) in enumerate(rows):
        y -= 1.0 if r == 0 else 1.5
        if r > 0:
            for k in range(len(tokens)):
                d.circle(left + cell * (k + 0.5), y + 0.75, "+", r=0.17, fontsize=9)
        d.note(0.1, y, name, fontsize=9, fontweight="bold")
        for k, label in enumerate(labels):
            d.box(left + cell * (k + 0.5), y, label, w=cell * 0.9, h=0.5, kind=kind, fontsize=8)
    return d.fig
