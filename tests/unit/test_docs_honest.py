"""The docs stay true where a machine can check them.

- every config key of the schema is in docs/configuration.md with its real default;
- every option that some `bmo ... --help` prints appears in the docs;
- no doc cites a file the repository does not have, or the spec that is not in it.

A new config key or CLI option without docs fails here: that is intended.
"""

from __future__ import annotations

import io
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args, get_origin

import msgspec
import pytest
from rich.console import Console

from app.cli.main import build_cli
from app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DOC = ROOT / "docs" / "configuration.md"
EXAMPLE_NAME = "example"  # [providers.example], [mcp.example] stand for any name in the doc
NOT_DOCUMENTED = {("sources",)}  # computed by load_settings, never read from a file


def doc_files() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found += sorted((ROOT / "deploy").glob("**/*.md")) + sorted((ROOT / "otel").glob("**/*.md"))
    return found


def all_docs_text() -> str:
    return "\n".join(p.read_text() for p in doc_files())


# ------------------------------------------------------------------ config keys


def _struct_of(tp: Any) -> type[msgspec.Struct] | None:
    if get_origin(tp) is not None and get_args(tp) and hasattr(get_args(tp)[0], "__struct_fields__"):
        tp = get_args(tp)[0]  # Annotated[Struct, ...]
    return tp if isinstance(tp, type) and issubclass(tp, msgspec.Struct) else None


def _named_table_item(tp: Any) -> type[msgspec.Struct] | None:
    if get_origin(tp) is not dict:
        return None
    return _struct_of(get_args(tp)[1])


def schema_keys(
    cls: type[msgspec.Struct] = Settings, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(key path, default) for every leaf key; msgspec.NODEFAULT for required keys."""
    for field in msgspec.structs.fields(cls):
        path = (*prefix, field.name)
        if path in NOT_DOCUMENTED:
            continue
        item = _named_table_item(field.type)
        nested = _struct_of(field.type)
        if item is not None:
            yield from schema_keys(item, (*path, EXAMPLE_NAME))
        elif nested is not None:
            yield from schema_keys(nested, path)
        else:
            default = field.default
            if default is msgspec.NODEFAULT and field.default_factory is not msgspec.NODEFAULT:
                default = field.default_factory()
            yield path, default


def documented_toml() -> tuple[dict[str, Any], str]:
    """The merged ```toml blocks of docs/configuration.md, and their text (for commented keys)."""
    blocks = re.findall(r"```toml\n(.*?)```", CONFIG_DOC.read_text(), flags=re.S)
    merged: dict[str, Any] = {}
    for block in blocks:
        _merge(merged, tomllib.loads(block))
    return merged, "\n".join(blocks)


def _merge(into: dict[str, Any], more: dict[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _lookup(table: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = table
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return KeyError
        node = node[key]
    return node


def _plain(value: Any) -> Any:
    """What TOML would hold: tuples as lists, structs as tables."""
    return msgspec.json.decode(msgspec.json.encode(value))


def _commented(text: str, key: str) -> bool:
    return re.search(rf"^\s*#\s*{re.escape(key)}\s*=", text, flags=re.M) is not None


def test_every_config_key_is_documented_with_its_real_default() -> None:
    documented, text = documented_toml()
    problems = []
    for path, default in schema_keys():
        dotted = ".".join(path)
        shown = _lookup(documented, path)
        if default is None:
            if shown is not KeyError or not _commented(text, path[-1]):
                hint = f"document it as a commented `# {path[-1]} = ...`"
                problems.append(f"{dotted}: unset by default; {hint}")
        elif shown is KeyError:
            what = "required" if default is msgspec.NODEFAULT else f"default {_plain(default)!r}"
            problems.append(f"{dotted}: missing from docs/configuration.md ({what})")
        elif default is not msgspec.NODEFAULT and shown != _plain(default):
            problems.append(f"{dotted}: the doc says {shown!r}, the real default is {_plain(default)!r}")
    assert problems == [], "\n".join(problems)


def test_the_doc_shows_no_key_the_schema_lacks() -> None:
    documented, _ = documented_toml()
    known = {path for path, _ in schema_keys()}

    def leaves(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        for key, value in node.items():
            if isinstance(value, dict) and (*prefix, key) not in known:
                yield from leaves(value, (*prefix, key))
            else:
                yield (*prefix, key)

    assert sorted(".".join(p) for p in leaves(documented) if p not in known) == []


# ------------------------------------------------------------------ CLI options


def _commands(app: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name in app:
        if name.startswith("-"):
            continue
        sub = app[name]
        path = (*prefix, name)
        yield path
        yield from _commands(sub, path)


def _help(tokens: tuple[str, ...]) -> str:
    app = build_cli()
    out = io.StringIO()
    app.help_print(list(tokens), console=Console(file=out, width=200, color_system=None))
    return out.getvalue()


def cli_options() -> dict[str, set[str]]:
    """Every `--option` each command's --help prints (negative `--no-x` flags of `--x` left out)."""
    found: dict[str, set[str]] = {}
    for command in _commands(build_cli()):
        text = _help(command)
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        options -= {"--help", "--version"}
        options -= set(re.findall(r"[A-Z][A-Z0-9-]* (--[a-z][a-z0-9-]*)", text))  # a positional's name
        options = {o for o in options if not (o.startswith("--no-") and f"--{o[5:]}" in options)}
        if options:
            found[" ".join(command)] = options
    return found


def test_every_cli_option_is_documented() -> None:
    options = cli_options()
    assert "--ledger-capacity" in options["projections rebuild"]  # the walk reaches nested commands
    text = all_docs_text()
    missing = sorted(
        f"bmo {command} {option}"
        for command, opts in options.items()
        for option in opts
        if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text)
    )
    assert missing == [], "options missing from README.md and docs/: " + ", ".join(missing)


# ------------------------------------------------------------------ citations

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_PATHLIKE = re.compile(r"`([A-Za-z0-9_.][\w.-]*(?:/[\w.-]+)+/?)`")
_EXTERNAL = ("http://", "https://", "mailto:", "#")


def cited_paths(doc: Path) -> Iterator[str]:
    """Relative links, and `dir/file.ext` mentions that start in a top-level directory of the repo.

    Mentions of files the reader creates (dotfiles such as `deploy/.env`) and of
    paths elsewhere (`logs/bmo.jsonl` under the data dir) are not citations.
    """
    text = doc.read_text()
    for target in _LINK.findall(text):
        if not target.startswith(_EXTERNAL):
            yield target.split("#", 1)[0]
    top = {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    for mention in _PATHLIKE.findall(text):
        parts = mention.rstrip("/").split("/")
        if parts[0] not in top or any(part.startswith(".") for part in parts):
            continue
        if "." in parts[-1] or mention.endswith("/"):  # a file with an extension, or a directory
            yield mention


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_cite_only_files_in_the_repo(doc: Path) -> None:
    missing = [
        cited
        for cited in cited_paths(doc)
        if not (doc.parent / cited).exists() and not (ROOT / cited).exists()
    ]
    assert missing == [], f"{doc.relative_to(ROOT)} cites files not in the repository: {missing}"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_stand_alone(doc: Path) -> None:
    """The spec is not part of the repository: a doc that cites it sends the reader nowhere."""
    text = doc.read_text()
    assert re.findall(r"SPEC ?§|SPEC\.md|/work/shared", text) == []
