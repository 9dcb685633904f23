"""The urwid widgets: one screen, two layouts.

Wide terminals (>= `WIDE_COLS` columns) get the chat/view pane with a sidebar
on the right; narrower ones (80x24 included) fold the sidebar into two header
lines, so the `OpenAI compat: <label>` line is never wrapped or cut. Every
method here runs on the UI thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import urwid

from app.tui.views import DEGRADED_WARNING, Segment

__all__ = ["PALETTE", "SIDEBAR_COLS", "WIDE_COLS", "AnswerHandle", "Choice", "Row", "TuiScreen"]

WIDE_COLS = 110
SIDEBAR_COLS = 44

PALETTE: tuple[tuple[str, str, str], ...] = (
    ("user", "light cyan,bold", ""),
    ("tool", "dark green", ""),
    ("note", "dark gray", ""),
    ("warn", "yellow,bold", ""),
    ("error", "light red", ""),
    ("focus", "black", "light gray"),
    ("header", "white,bold", "dark blue"),
    ("status", "light gray", "dark blue"),
    ("label", "white,bold", ""),
    ("title", "white,bold", ""),
)


class Row(urwid.Text):
    """A selectable line: Enter (or space) runs its action."""

    _selectable = True

    def __init__(self, text: str, action: Callable[[], None]) -> None:
        super().__init__(text, wrap="ellipsis")
        self._action = action

    def keypress(self, size: tuple[int], key: str) -> str | None:
        if key in ("enter", " "):
            self._action()
            return None
        return key


class Choice(urwid.Widget):
    """A button whose focus shows as a marker (`▸< Allow >`), not only as a colour.

    A colour alone is lost on monochrome terminals, in tmux captures and for
    colour-blind operators. Enter or space presses it.
    """

    _selectable = True
    _sizing = frozenset([urwid.Sizing.FLOW])

    def __init__(self, label: str, on_press: Callable[[], None]) -> None:
        super().__init__()
        self._plain = urwid.Text(f" < {label} >", wrap="clip")
        self._marked = urwid.Text(("focus", f"▸< {label} >"), wrap="clip")
        self._on_press = on_press

    @staticmethod
    def width(label: str) -> int:
        return len(label) + 5

    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return 1

    def render(self, size: tuple[int], focus: bool = False) -> urwid.Canvas:
        return (self._marked if focus else self._plain).render(size, focus)

    def keypress(self, size: tuple[int], key: str) -> str | None:
        if key in ("enter", " "):
            self._on_press()
            return None
        return key

    def mouse_event(self, size: tuple[int], event: str, button: int, col: int, row: int, focus: bool) -> bool:
        if event == "mouse press" and button == 1:
            self._on_press()
            return True
        return False


class AnswerHandle:
    """The widgets of one streamed answer in the chat list (replaced as it grows)."""

    def __init__(self, widgets: list[urwid.Widget]) -> None:
        self.widgets = widgets


def _text(line: str, style: str | None = None) -> urwid.Widget:
    widget = urwid.Text(line)
    return urwid.AttrMap(widget, style) if style else widget


def _line_style(line: str) -> str | None:
    if line.startswith(DEGRADED_WARNING[:11]):
        return "warn"
    return None


class TuiScreen(urwid.WidgetWrap):
    def __init__(
        self,
        *,
        on_submit: Callable[[str], None],
        on_escape: Callable[[], None],
        on_quit: Callable[[], None],
    ) -> None:
        self._on_submit, self._on_escape, self._on_quit = on_submit, on_escape, on_quit
        self._chat_walker = urwid.SimpleFocusListWalker([])
        self._chat = urwid.ListBox(self._chat_walker)
        self._body = urwid.WidgetPlaceholder(self._chat)
        self._message = urwid.Text("")
        self.input = urwid.Edit("› ")
        self._label = urwid.Text("OpenAI compat: …", wrap="ellipsis")
        self._status = urwid.Text("", wrap="ellipsis")
        self._sidebar = urwid.Text("")
        self._focus_body = False
        self._buttons: list[tuple[int, int]] = []  # (row, column) of each button in the view, in Tab order
        self._wide = self._wide_layout()
        self._narrow = self._narrow_layout()
        super().__init__(self._narrow)

    # -- layouts ------------------------------------------------------------

    def _main(self) -> urwid.Pile:
        return urwid.Pile(
            [
                ("weight", 1, self._body),
                ("pack", urwid.Divider("─")),
                ("pack", self._message),
                ("pack", self.input),
            ],
            focus_item=3,
        )

    def _wide_layout(self) -> urwid.Columns:
        sidebar = urwid.Filler(urwid.Padding(self._sidebar, left=1, right=1), valign="top")
        return urwid.Columns(
            [
                ("weight", 1, self._main()),
                ("given", 1, urwid.SolidFill("│")),
                ("given", SIDEBAR_COLS, sidebar),
            ],
            focus_column=0,
        )

    def _narrow_layout(self) -> urwid.Pile:
        header = urwid.Pile([urwid.AttrMap(self._label, "header"), urwid.AttrMap(self._status, "status")])
        return urwid.Pile([("pack", header), ("weight", 1, self._main())], focus_item=1)

    def _main_pile(self, layout: urwid.Widget) -> urwid.Pile:
        if layout is self._wide:
            return self._wide.contents[0][0]
        return self._narrow.contents[1][0]

    def _sync(self, size: tuple[int, ...]) -> urwid.Pile:
        """Pick the layout for this size and give it the current focus (body or input)."""
        layout = self._wide if size and size[0] >= WIDE_COLS else self._narrow
        if self._w is not layout:
            self._w = layout
        main = self._main_pile(layout)
        main.focus_position = 0 if self._focus_body else 3
        return main

    @property
    def wide(self) -> bool:
        return self._w is self._wide

    def render(self, size: tuple[int, ...], focus: bool = False) -> urwid.Canvas:
        self._sync(size)
        return super().render(size, focus)

    def mouse_event(
        self, size: tuple[int, ...], event: str, button: int, col: int, row: int, focus: bool
    ) -> Any:
        main = self._sync(size)
        handled = super().mouse_event(size, event, button, col, row, focus)
        self._focus_body = main.focus_position == 0
        return handled

    def keypress(self, size: tuple[int, ...], key: str) -> str | None:
        main = self._sync(size)
        if key in ("tab", "shift tab") and self._buttons:
            self._cycle_buttons(forward=key == "tab")
            return None
        if key == "tab":
            self.focus_body(not self._focus_body)
            return None
        if key == "esc":
            self._on_escape()
            return None
        if key in ("ctrl c", "ctrl d"):
            self._on_quit()
            return None
        if key == "enter" and not self._focus_body:
            text = self.input.edit_text
            self.input.set_edit_text("")
            self._on_submit(text)
            return None
        if not self._focus_body and key in ("page up", "page down"):
            self._body.keypress(self._body_size(size), key)
            return None
        result = super().keypress(size, key)
        self._focus_body = main.focus_position == 0
        if result is not None and self._focus_body and len(key) == 1 and key.isprintable():
            self.focus_body(False)  # typing in a list goes to the input line
            self.input.keypress((max(1, size[0]),), key)
            return None
        return result

    def _body_size(self, size: tuple[int, ...]) -> tuple[int, int]:
        cols = size[0] - (SIDEBAR_COLS + 1 if self.wide else 0)
        rows = size[1] - (3 if self.wide else 5) if len(size) > 1 else 10
        return max(1, cols), max(1, rows)

    def _cycle_buttons(self, *, forward: bool) -> None:
        """Tab / Shift-Tab: every button of the view in turn, then the input line."""
        listbox = self._body.original_widget
        stops = self._buttons
        current = len(stops)  # the input line
        if self._focus_body:
            row = listbox.focus_position
            col = getattr(listbox.body[row], "focus_position", None)
            if (row, col) in stops:
                current = stops.index((row, col))
        target = (current + (1 if forward else -1)) % (len(stops) + 1)
        if target == len(stops):
            self.focus_body(False)
            return
        row, col = stops[target]
        listbox.focus_position = row
        listbox.body[row].focus_position = col
        self.focus_body(True)

    def focus_body(self, body: bool = True) -> None:
        self._focus_body = body
        self._invalidate()

    # -- sidebar --------------------------------------------------------------

    def set_sidebar(self, label: str, lines: Sequence[str], status: str) -> None:
        self._label.set_text(("label", f"OpenAI compat: {label}"))
        self._status.set_text(status)
        styled: list[Any] = []
        for i, line in enumerate(lines):
            style = "warn" if line.startswith("OpenAI compat: degraded") else ("label" if i == 0 else None)
            styled.append((style, line + "\n") if style else line + "\n")
        self._sidebar.set_text(styled or "")

    def flash(self, text: str, style: str = "note") -> None:
        self._message.set_text((style, text) if text else "")

    def quit(self) -> None:
        self._on_quit()

    # -- chat -----------------------------------------------------------------

    def _append(self, widgets: Sequence[urwid.Widget]) -> None:
        self._chat_walker.extend(widgets)
        self._scroll_to_end()

    def _scroll_to_end(self) -> None:
        if self._chat_walker:
            self._chat_walker.set_focus(len(self._chat_walker) - 1)

    def chat_user(self, text: str) -> None:
        self._append([urwid.Divider(), _text(f"you › {text}", "user")])

    def chat_note(self, text: str, style: str = "note") -> None:
        self._append([_text(text, style)])

    def answer_start(self) -> AnswerHandle:
        handle = AnswerHandle([_text("bmo › …", "note")])
        self._append(handle.widgets)
        return handle

    def answer_update(self, handle: object, segments: Sequence[Segment]) -> None:
        assert isinstance(handle, AnswerHandle)
        widgets: list[urwid.Widget] = []
        prefix = "bmo › "
        for segment in segments:
            if segment.kind == "tool":
                widgets.append(_text(segment.text, "tool"))
                continue
            text = segment.text.strip("\n")
            if text:
                widgets += [
                    _text(prefix + line if i == 0 else line) for i, line in enumerate(text.split("\n"))
                ]
                prefix = ""
        if not widgets:
            widgets = [_text("bmo › …", "note")]
        try:
            start = self._chat_walker.index(handle.widgets[0])
        except (ValueError, IndexError):
            return
        self._chat_walker[start : start + len(handle.widgets)] = widgets
        handle.widgets = widgets
        self._scroll_to_end()

    def answer_remove(self, handle: object) -> None:
        assert isinstance(handle, AnswerHandle)
        for widget in handle.widgets:
            if widget in self._chat_walker:
                self._chat_walker.remove(widget)
        handle.widgets = []

    # -- views ----------------------------------------------------------------

    def _show(self, widgets: list[urwid.Widget], *, focus: bool = False) -> None:
        self._buttons = []
        walker = urwid.SimpleFocusListWalker(widgets)
        self._body.original_widget = urwid.ListBox(walker)
        self.focus_body(focus)

    def show_chat(self) -> None:
        self._buttons = []
        self._body.original_widget = self._chat
        self._scroll_to_end()
        self.focus_body(False)

    def show_lines(self, lines: Sequence[str]) -> None:
        widgets = [_text(line, "title" if i == 0 else _line_style(line)) for i, line in enumerate(lines)]
        self._show(widgets)

    def show_rows(self, header: Sequence[str], rows: Sequence[tuple[str, Callable[[], None]]]) -> None:
        widgets: list[urwid.Widget] = [_text(line, "title") for line in header]
        widgets += [urwid.AttrMap(Row(text, action), None, focus_map="focus") for text, action in rows]
        self._show(widgets, focus=True)
        self._body.original_widget.focus_position = len(header)

    def show_questions(
        self, header: Sequence[str], items: Sequence[tuple[Sequence[str], Callable[[str], None]]]
    ) -> None:
        widgets: list[urwid.Widget] = [_text(line, "title") for line in header]
        stops: list[tuple[int, int]] = []
        for lines, decide in items:
            widgets += [_text(line) for line in lines]
            allow = Choice("Allow once", lambda d=decide: d("allow"))
            session = Choice("Allow for session", lambda d=decide: d("allow_session"))
            deny = Choice("Deny", lambda d=decide: d("deny"))
            buttons = urwid.Columns(
                [
                    ("given", 3, urwid.Text("")),
                    ("given", Choice.width("Allow once"), allow),
                    ("given", Choice.width("Allow for session"), session),
                    ("given", Choice.width("Deny"), deny),
                ],
                dividechars=2,
                focus_column=1,
            )
            stops += [(len(widgets), 1), (len(widgets), 2), (len(widgets), 3)]
            widgets.append(buttons)
            widgets.append(urwid.Divider())
        self._show(widgets, focus=True)
        self._buttons = stops
        if stops:
            self._body.original_widget.focus_position = stops[0][0]
