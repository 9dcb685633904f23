"""What an approval covers: canonical tool arguments, their digest, and a rendering a human can trust.

An operator approves one tool call. What they see must be what runs, so the
arguments are first made canonical (decoded and re-encoded: duplicate keys
collapse to the value the tool would decode), the digest is taken over the
tool name and that exact text, and the tool later runs with that text. The
display escapes everything a terminal or browser would hide or reinterpret
(control and format characters, bidi overrides, zero-width and unusual
spaces, long runs of blanks), so nothing can be pushed out of sight.
Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

__all__ = ["BLANK_RUN", "arguments_digest", "canonical_arguments", "display_arguments", "visible"]

BLANK_RUN = 8  # this many spaces in a row or more are shown as a counted marker
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp", "Zs"})
_MARKERS = frozenset("\u27ea\u27eb")  # ⟪ ⟫ delimit our own markers, so a literal one is escaped
_SPACES = re.compile(f" {{{BLANK_RUN},}}")


def canonical_arguments(arguments: str) -> str:
    """The exact text a tool will run with: canonical JSON of an object, else the text as sent.

    Keys are sorted and duplicates resolved the way the tool's decoder resolves
    them. Text that is not a JSON object is kept byte for byte: the tool will
    refuse it, and the operator sees exactly that.
    """
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments
    if not isinstance(value, dict):
        return arguments
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as JSON escapes
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return text


def arguments_digest(tool: str, canonical: str) -> str:
    """sha256 hex of `tool + "\\n" + canonical`: the tool is part of what is approved."""
    return hashlib.sha256(f"{tool}\n{canonical}".encode("utf-8", "surrogatepass")).hexdigest()


def display_arguments(canonical: str) -> str:
    """The arguments for a human: indented JSON when they are an object, every invisible made visible.

    String values stay JSON-escaped (newlines show as `\\n`), so each value is
    one unambiguous line however it was built.
    """
    try:
        value = json.loads(canonical) if canonical.strip() else {}
        pretty = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
    except ValueError:
        pretty = canonical
    return visible(pretty)


def visible(text: str) -> str:
    """Escape what would be hidden; a run of blanks becomes `⟪N spaces⟫`. Newlines are kept."""
    out: list[str] = []
    for line in text.split("\n"):
        escaped = "".join(_escape(ch) for ch in line)
        out.append(_SPACES.sub(lambda m: f"\u27ea{len(m.group())} spaces\u27eb", escaped))
    return "\n".join(out)


def _escape(ch: str) -> str:
    if ch == " " or (ch not in _MARKERS and unicodedata.category(ch) not in _HIDDEN_CATEGORIES):
        return ch
    code = ord(ch)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
