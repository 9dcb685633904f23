"""`bmo tui`: an urwid client of a bmo server (chat, posture, runs, permission questions).

Modules: `views` (pure text rendering), `commands` (slash parsing), `client`
(HTTP), `controller` (what happens on input), `widgets` (urwid), `app` (the
main loop and threads), `bridge` (the same thread hand-off without a main
loop, for tests), `server` (the self-started server), `command` (CLI).
Nothing is imported here, so `import app.tui` has no side effects.
"""

__all__ = ["app", "bridge", "client", "command", "commands", "controller", "server", "views", "widgets"]
