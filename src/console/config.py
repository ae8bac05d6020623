"""The console's remembered choices: `$XDG_CONFIG_HOME/graftline/config.toml` (default
`~/.config/graftline/config.toml`). Today it holds the theme that `t` last picked:

    theme = "light"

`--theme` and `GRAFTLINE_THEME` override it for one session. A file that cannot be read is
ignored (the console opens with its defaults); one that cannot be written is not an error.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["config_path", "load", "save", "saved_theme"]


def config_path() -> Path:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg and Path(xdg).is_absolute() else \
        Path.home() / ".config"
    return base / "graftline" / "config.toml"


def load() -> dict[str, Any]:
    try:
        return tomllib.loads(config_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def save(**changes: str | int | float | bool) -> bool:
    """Merge `changes` into the file (top-level scalars only), atomically; False on failure."""
    from graftline.engine.common import atomic_write_text

    values = {k: v for k, v in load().items() if isinstance(v, (str, int, float, bool))}
    values.update(changes)
    # a JSON string is a valid TOML basic string for what we store (names, numbers, booleans)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path = config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "# graftline console settings\n" + "\n".join(lines) + "\n")
    except OSError:
        return False
    return True


def saved_theme() -> str | None:
    theme = load().get("theme")
    return theme if isinstance(theme, str) and theme else None
