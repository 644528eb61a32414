"""The whole napari-chflow workflow in one command: ``napari -w napari-chflow``.

napari opens the first widget a plugin lists when ``-w`` names no widget; that first entry is
"Workflow (all four panels)", whose command :func:`open_workflow` docks the four panels, each
under the name its own *Plugins* menu entry uses (so an open panel is shown, never duplicated):
"Seed volume" and "Train surrogate" tabbed on the left, "Evolve and compare" above "Traces" on
the right. napari docks the widget a command makes; :class:`Workflow` is empty and removes its
own dock at once, so the window holds exactly the four panels.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QWidget

PLUGIN = "napari-chflow"
DOCK_WIDTH = 360  # px: the panels and plots are laid out for docks about this wide


def _panels():
    from .evolve import EvolveWidget
    from .seed import SeedWidget
    from .traces import TracesWidget
    from .train import TrainWidget

    # (menu name, class, dock area, tabbed with the previous panel of that area)
    return (("Seed volume", SeedWidget, "left", False),
            ("Train surrogate", TrainWidget, "left", True),
            ("Evolve and compare", EvolveWidget, "right", False),
            ("Traces", TracesWidget, "right", False))


def dock_name(name: str) -> str:
    """The dock title napari gives the plugin's widget ``name`` (also its key in
    ``viewer.window.dock_widgets``)."""
    from napari.plugins import menu_item_template

    return menu_item_template.format(PLUGIN, name)


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The dock holding ``widget`` (napari may wrap it in a container first)."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def dock_workflow(viewer) -> dict[str, QWidget]:
    """Dock the four panels in ``viewer``'s window (reusing any already open) and return them by
    menu name."""
    window = viewer.window
    widgets, docks = {}, {}
    for name, cls, area, tabbed in _panels():
        key = dock_name(name)
        widget = window.dock_widgets.get(key)
        if widget is None:
            widget = cls(viewer)
            window.add_dock_widget(widget, name=key, area=area, tabify=tabbed)
        widgets[name] = widget
        docks[name] = dock_of(widget)
        docks[name].show()
    size_docks(docks)
    QTimer.singleShot(0, lambda: size_docks(docks))  # again once the window is laid out
    docks["Seed volume"].raise_()
    return widgets


def size_docks(docks: dict) -> None:
    """Docks ~:data:`DOCK_WIDTH` wide; on the right, "Traces" gets most of the height."""
    try:
        main = docks["Seed volume"].parentWidget()  # the QMainWindow holding the docks
        main.resizeDocks([docks["Seed volume"], docks["Evolve and compare"]],
                         [DOCK_WIDTH, DOCK_WIDTH], Qt.Orientation.Horizontal)
        main.resizeDocks([docks["Evolve and compare"], docks["Traces"]], [380, 620],
                         Qt.Orientation.Vertical)
    except (AttributeError, RuntimeError):  # not in a main window (any more)
        pass


class Workflow(QWidget):
    """npe2 widget command "Workflow (all four panels)": docks the four panels
    (:func:`dock_workflow`). napari docks this (empty) widget too; its dock is removed at the
    next turn of the event loop."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.panels = dock_workflow(napari_viewer)
        window = napari_viewer.window

        def remove() -> None:
            try:
                window.remove_dock_widget(self)
            except (LookupError, RuntimeError):  # not docked, or the window is gone
                pass

        QTimer.singleShot(0, remove)
