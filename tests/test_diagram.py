"""plmkit.diagram draws what it is asked to, and refuses what it cannot draw."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402

from plmkit.diagram import Diagram, flow, token_rows  # noqa: E402


def texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def patches(fig, kind):
    return [p for p in fig.axes[0].patches if isinstance(p, kind)]


def test_flow_draws_every_step_arrow_and_skip():
    steps = ["x", "LayerNorm", "attention", "+", "LayerNorm", "feed-forward", "+"]
    fig = flow(steps, skips=[(0, 3), (3, 6)], notes={2: "causal mask"})
    assert sorted(texts(fig)) == sorted(steps + ["causal mask"])
    assert len(patches(fig, FancyBboxPatch)) == 5          # the boxes
    assert len(patches(fig, Circle)) == 2                  # the two adds
    assert len(patches(fig, FancyArrowPatch)) == 6 + 2     # between steps, plus one per skip
    # each skip's lane passes left of every box
    left_edge = min(p.get_x() for p in patches(fig, FancyBboxPatch))
    lanes = [line.get_xdata()[1] for line in fig.axes[0].lines]
    assert len(lanes) == 2 and all(lane < left_edge for lane in lanes)
    plt.close(fig)


def test_flow_colours_parts_by_kind():
    fig = flow(["LayerNorm", "multi-head attention", "feed-forward"])
    colours = {p.get_facecolor()[:3] for p in patches(fig, FancyBboxPatch)}
    assert len(colours) == 3
    plt.close(fig)


def test_token_rows_draws_one_box_per_token_and_row():
    toks = ["[CLS]", "a", "[SEP]"]
    rows = [("Token", ["Ea", "Eb", "Ec"], "embedding"), ("Position", ["P0", "P1", "P2"], "position")]
    fig = token_rows(toks, rows, output=["a", "[SEP]", "-"], output_name="Next")
    assert len(patches(fig, FancyBboxPatch)) == 3 * 4
    assert texts(fig).count("+") == 3
    assert {"Input", "Token", "Position", "Next", "P2"} <= set(texts(fig))
    plt.close(fig)


@pytest.mark.parametrize("call, match", [
    (lambda: flow([]), "at least one step"),
    (lambda: flow(["a", "b"], skips=[(1, 0)]), "skip"),
    (lambda: flow(["a", "b", "c"], skips=[(0, 2)]), "add step"),
    (lambda: flow(["a"], notes={3: "x"}), "outside"),
    (lambda: token_rows([], [("T", [], "embedding")]), "at least one token"),
    (lambda: token_rows(["a"], []), "at least one embedding row"),
    (lambda: token_rows(["a", "b"], [("T", ["x"], "embedding")]), "1 labels for 2 tokens"),
    (lambda: token_rows(["a"], [("T", ["x"], "embedding")], output=[]), "output has 0"),
    (lambda: Diagram(0, 1), "positive"),
])
def test_bad_input_is_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    plt.close("all")
