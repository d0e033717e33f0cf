"""Widgets that still work in the static book: precomputed states switched in the browser.

A callback such as ``widgets.interact(f, x=slider)`` needs a running kernel: in the published
HTML page the slider moves and the plot stays. `precomputed_choice` draws every state once, while
the notebook runs, into one ``Output`` widget per state, stacks them in a ``widgets.Stack`` and
links the control's ``index`` to the stack's ``selected_index`` with ``jslink``, a link that the
browser keeps by itself. The page then switches between the saved states with no kernel, and a
running notebook behaves the same.

>>> box = precomputed_choice({"a": lambda: print("A"), "b": lambda: print("B")}, description="letter")
A
B
>>> control, stack = box.children
>>> type(control).__name__, stack.selected_index, len(stack.children)
('Dropdown', 0, 2)
"""
from __future__ import annotations

from typing import Callable

import ipywidgets as widgets

CONTROLS = ("dropdown", "slider", "buttons")


def precomputed_choice(states: dict[str, Callable[[], object]], *, control: str = "dropdown",
                       description: str = "", value: str | None = None) -> widgets.VBox:
    """A control (dropdown, slider or toggle buttons) over `states`, each drawn once by its callable.

    `states` maps each label to a function that prints or plots that state (``plt.show()`` inside
    it lands in the state's own ``Output``). `value` is the label shown first (default: the first).
    Returns ``VBox([control, Stack([Output, ...])])`` with the control's index jslinked to the stack.
    """
    if not isinstance(states, dict) or not states:
        raise ValueError(f"states must be a non-empty dict of label -> callable, got {type(states).__name__}")
    bad = [label for label, draw in states.items() if not callable(draw)]
    if bad:
        raise ValueError(f"states must map each label to a callable, not for {bad}")
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    labels = [str(label) for label in states]
    if value is None:
        value = labels[0]
    if value not in labels:
        raise ValueError(f"value must be one of the labels {labels}, got {value!r}")
    pages = []
    for draw in states.values():
        out = widgets.Output()
        with out:
            draw()
        pages.append(out)
    start = labels.index(value)
    stack = widgets.Stack(children=pages, selected_index=start)
    options = [(label, i) for i, label in enumerate(labels)]
    if control == "dropdown":
        chooser = widgets.Dropdown(options=options, value=start, description=description,
                                   layout={"width": "max-content"}, style={"description_width": "initial"})
    elif control == "slider":
        chooser = widgets.SelectionSlider(options=options, value=start, description=description,
                                          continuous_update=True, style={"description_width": "initial"})
    else:
        chooser = widgets.ToggleButtons(options=options, value=start, description=description,
                                        style={"description_width": "initial"})
    widgets.jslink((chooser, "index"), (stack, "selected_index"))
    return widgets.VBox([chooser, stack])
