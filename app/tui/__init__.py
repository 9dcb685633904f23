"""`bmo tui`: an urwid client of a bmo server (chat, posture, runs, permission questions).

Modules: `views` (pure text rendering), `commands` (slash parsing), `client`
(HTTP), `controller` (what happens on input), `widgets` (urwid), `app` (the
main loop and threads), `server` (the self-started server), `command` (CLI).
Nothing is imported here, so `import app.tui` has no side effects.
"""

__all__ = ["app", "client", "command", "commands", "controller", "server", "views", "widgets"]
