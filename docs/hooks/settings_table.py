"""mkdocs hook: the settings reference is built from the code when the site is built, so it cannot
drift from what ``TraceletConfig`` accepts. A page asks for it with the line ``<!-- settings -->``."""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any

MARKER = "<!-- settings -->"


def settings_rows() -> list[dict[str, str]]:
    """One row per setting: its keyword, environment variable, default and description."""
    from tracelet_callbacks.config import ENV_VARS, TraceletConfig

    described = _attributes(inspect.getdoc(TraceletConfig) or "")
    variables = {key: variable for variable, key in ENV_VARS.items()}
    rows = []
    for field in dataclasses.fields(TraceletConfig):
        default = field.default if field.default is not dataclasses.MISSING else None
        rows.append(
            {
                "keyword": field.name,
                "variable": variables.get(field.name, ""),
                "default": repr(default),
                "meaning": described.get(field.name, ""),
            }
        )
    return rows


def settings_table() -> str:
    lines = ["| keyword | environment variable | default | what it does |", "|---|---|---|---|"]
    for row in settings_rows():
        variable = f"`{row['variable']}`" if row["variable"] else "(keyword only)"
        meaning = row["meaning"].replace("|", "\\|")
        lines.append(f"| `{row['keyword']}` | {variable} | `{row['default']}` | {meaning} |")
    return "\n".join(lines)


def _attributes(doc: str) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring, as ``{name: one-line text}``."""
    found: dict[str, str] = {}
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    name = None
    for line in section.splitlines():
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            found[name] = entry.group(2).strip()
        elif name and line.startswith("        "):
            found[name] += " " + line.strip()
    return found


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(MARKER, settings_table()) if MARKER in markdown else markdown
