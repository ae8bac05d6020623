"""graftline's colour themes as Textual `Theme` objects, and the loader for a user's own.

Layout lives in graftline.tcss next to this file; colours live here. A user adds a theme by
dropping `<name>.toml` into this folder (or into `$GRAFTLINE_THEMES`) with the Theme fields:

    name = "solarized"        # optional: defaults to the file name
    primary = "#268bd2"
    background = "#002b36"
    dark = true

It is registered at start-up, offered by `--theme` and by the theme key (`t`), and a broken file
is reported (file and reason) without stopping the console.
"""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path

from textual.theme import Theme

GRAFTLINE_DARK = Theme(
    name="graftline-dark",
    primary="#5fafff",
    secondary="#87afaf",
    accent="#ffaf5f",
    warning="#ffd75f",
    error="#ff5f5f",
    success="#87d787",
    foreground="#d0d0d0",
    background="#121212",
    surface="#1c1c1c",
    panel="#262626",
    dark=True,
    variables={"chart-past": "#6c6c6c", "chart-current": "#5fafff", "chart-boundary": "#3a3a3a",
               "chart-eval": "#d787ff"},
)

GRAFTLINE_LIGHT = Theme(
    name="graftline-light",
    primary="#005faf",
    secondary="#5f8787",
    accent="#af5f00",
    warning="#af8700",
    error="#d70000",
    success="#008700",
    foreground="#1c1c1c",
    background="#f5f5f5",
    surface="#eeeeee",
    panel="#e4e4e4",
    dark=False,
    variables={"chart-past": "#9e9e9e", "chart-current": "#005faf", "chart-boundary": "#c6c6c6",
               "chart-eval": "#af00af"},
)

# Sixteen ANSI colours only: plain terminals, `TERM=screen`, serial consoles.
GRAFTLINE_LOW = Theme(
    name="graftline-low",
    ansi=True,
    primary="ansi_blue",
    secondary="ansi_cyan",
    warning="ansi_yellow",
    error="ansi_red",
    success="ansi_green",
    accent="ansi_magenta",
    foreground="ansi_default",
    background="ansi_default",
    surface="ansi_default",
    panel="ansi_default",
    boost="ansi_default",
    dark=True,
    variables={
        "ansi-background": "ansi_black",
        "ansi-foreground": "ansi_white",
        "border-blurred": "ansi_black",
        "input-cursor-background": "ansi_black",
        "input-cursor-foreground": "ansi_bright_white",
        "input-cursor-text-style": "none",
        "input-selection-background": "ansi_bright_blue",
        "input-selection-foreground": "ansi_black",
        "screen-selection-background": "ansi_bright_blue",
        "screen-selection-foreground": "ansi_black",
        "block-cursor-background": "ansi_blue",
        "block-cursor-foreground": "ansi_white",
        "footer-key-foreground": "ansi_cyan",
        "chart-past": "ansi_white",
        "chart-current": "ansi_cyan",
        "chart-boundary": "ansi_bright_black",
        "chart-eval": "ansi_magenta",
    },
)

BUILTIN: tuple[Theme, ...] = (GRAFTLINE_DARK, GRAFTLINE_LIGHT, GRAFTLINE_LOW)
ALIASES = {"dark": "graftline-dark", "light": "graftline-light", "low": "graftline-low",
           "low-colour": "graftline-low", "low-color": "graftline-low"}
_THEME_FIELDS = {f.name for f in fields(Theme)}


def load_user_themes(folder: Path) -> tuple[list[Theme], list[str]]:
    """Every `*.toml` theme in `folder`, and one problem line per file that could not be read."""
    themes: list[Theme] = []
    problems: list[str] = []
    if not folder.is_dir():
        return themes, problems
    for path in sorted(folder.glob("*.toml")):
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            unknown = sorted(set(raw) - _THEME_FIELDS)
            if unknown:
                raise ValueError(f"unknown keys {unknown}; allowed: {sorted(_THEME_FIELDS)}")
            if "primary" not in raw:
                raise ValueError("`primary` is required (a colour such as \"#5fafff\")")
            raw.setdefault("name", path.stem)
            theme = Theme(**raw)
            theme.to_color_system()  # parse every colour now, not at the first redraw
            themes.append(theme)
        except Exception as exc:  # a user's typo must not stop the console
            problems.append(f"{path.name}: {exc}")
    return themes, problems
