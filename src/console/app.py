"""The graftline console: a Textual app over run directories.

It reads runs through `graftline.engine.run` and the event log, and changes them only through
the control channel (stop/pause), the cleanup executor and the exporter — each behind a confirm.
`q` detaches: the engine is a separate process session and keeps training.
"""

from __future__ import annotations

import importlib.util
import locale
import os
import site
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import ClassVar

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme

from graftline.console.config import save as save_config
from graftline.console.config import saved_theme
from graftline.console.messages import OpenRun, ShowLaunch, ShowRuns

REPO = Path(__file__).resolve().parents[2]


def bundled_themes() -> Path:
    """The shipped themes/: beside the source in a checkout or an editable install; a wheel
    installs the same files under <prefix>/share/graftline/themes (pyproject's data-files)."""
    checkout = REPO / "themes"
    if (checkout / "graftline.tcss").is_file():
        return checkout
    installed = [Path(base) / "share" / "graftline" / "themes"
                 for base in (sys.prefix, site.getuserbase())]  # a venv, or `pip install --user`
    return next((p for p in installed if (p / "graftline.tcss").is_file()), installed[0])


def themes_dir() -> Path:
    return Path(os.environ.get("GRAFTLINE_THEMES") or bundled_themes())


def _load_theme_module() -> ModuleType | None:
    """themes/themes.py lives outside the package (users edit it); load it by path."""
    path = bundled_themes() / "themes.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("graftline_themes", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_ascii() -> bool:
    """Plain glyphs where the terminal cannot draw braille and box characters."""
    if os.environ.get("GRAFTLINE_ASCII"):
        return os.environ["GRAFTLINE_ASCII"] not in ("0", "")
    encoding = (sys.stdout.encoding or locale.getpreferredencoding(False) or "").lower()
    return os.environ.get("TERM") in ("linux", "dumb", "vt100") or "utf" not in encoding


class GraftlineApp(App[str | None]):
    TITLE = "graftline"
    CSS_PATH: ClassVar = [p for p in [bundled_themes() / "graftline.tcss"] if p.is_file()]
    ENABLE_COMMAND_PALETTE = True
    BINDINGS: ClassVar = [
        Binding("q", "detach", "Detach"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("t", "cycle_theme", "Theme"),
    ]

    def __init__(self, run_dir: Path | None, runs_dir: Path, theme: str | None = None, *,
                 ascii_only: bool | None = None, launch_dir: Path | None = None) -> None:
        super().__init__()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.runs_dir = Path(runs_dir)
        self.ascii_only = default_ascii() if ascii_only is None else ascii_only
        self.launch_dir = Path(launch_dir) if launch_dir is not None else Path.cwd()
        self.theme_problems: list[str] = []
        self.cycle: list[str] = []
        self._requested_theme = theme
        self._register_themes()

    # -- themes ------------------------------------------------------------------------------

    def _register_themes(self) -> None:
        module = _load_theme_module()
        themes: list[Theme] = list(module.BUILTIN) if module is not None else []
        aliases: dict[str, str] = dict(module.ALIASES) if module is not None else {}
        if module is not None:
            user, self.theme_problems = module.load_user_themes(themes_dir())
            themes += user
        for theme in themes:
            self.register_theme(theme)
        self.cycle = [t.name for t in themes] or ["textual-dark", "textual-light"]
        saved = saved_theme()
        name = self._requested_theme or os.environ.get("GRAFTLINE_THEME") or saved \
            or self.cycle[0]
        name = aliases.get(name, name)
        if name == saved and name not in self.available_themes:
            name = self.cycle[0]  # a remembered theme file that is gone: quietly the default
        if name not in self.available_themes:
            self.theme_problems.append(
                f"theme {name!r} not found; choose one of {', '.join(self.cycle)}")
            name = self.cycle[0]
        self.theme = name

    def action_cycle_theme(self) -> None:
        names = self.cycle
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        remembered = save_config(theme=self.theme)  # the next console opens with it
        self.notify(f"theme: {self.theme}" + ("" if remembered else " (not remembered: the "
                    "config file cannot be written)"), timeout=1.5)

    # -- screens -----------------------------------------------------------------------------

    def on_mount(self) -> None:
        for problem in self.theme_problems:
            self.notify(problem, severity="warning", timeout=8)
        self.push_screen(self.home_screen())
        from graftline.console import tty_guard

        # only a console that started on a terminal can lose it (headless tests never arm it)
        if not self.is_headless and tty_guard.terminal_alive():
            self.set_interval(tty_guard.CHECK_EVERY, self._leave_if_terminal_gone)

    def _leave_if_terminal_gone(self) -> None:
        from graftline.console import tty_guard

        if not tty_guard.terminal_alive():
            tty_guard.leave(self)

    def home_screen(self) -> Screen[None]:
        if self.run_dir is not None:
            return self.dashboard(self.run_dir)
        from graftline.console.screens.runs import RunsScreen
        from graftline.engine.run import has_runs

        if has_runs(self.runs_dir):
            return RunsScreen(self.runs_dir)
        from graftline.console.screens.launch import LaunchScreen

        return LaunchScreen(self.launch_dir, self.runs_dir)

    def dashboard(self, run_dir: Path) -> Screen[None]:
        from graftline.console.screens.dashboard import DashboardScreen

        return DashboardScreen(run_dir, ascii_only=self.ascii_only)

    def attach(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.push_screen(self.dashboard(self.run_dir))

    # what screens ask (console/messages.py): they bubble here, the app owns the screens
    @on(OpenRun)
    def _open_run(self, message: OpenRun) -> None:
        self.attach(message.run_dir)

    @on(ShowRuns)
    def _show_runs(self) -> None:
        self.action_runs()

    @on(ShowLaunch)
    def _show_launch(self) -> None:
        self.action_launch()

    def action_runs(self) -> None:
        from graftline.console.screens.runs import RunsScreen

        self.push_screen(RunsScreen(self.runs_dir))

    def action_launch(self) -> None:
        from graftline.console.screens.launch import LaunchScreen

        self.push_screen(LaunchScreen(self.launch_dir, self.runs_dir))

    def action_lineage(self) -> None:
        from graftline.console.screens.lineage import LineageScreen

        root = self.run_dir if self.run_dir is not None else self.runs_dir
        self.push_screen(LineageScreen(root, ascii_only=self.ascii_only))

    def action_help(self) -> None:
        from graftline.console.screens.help import HelpScreen

        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.screen))

    def action_detach(self) -> None:
        self.exit(self.detach_message())

    def detach_message(self) -> str:
        from graftline.console.follower import read_engine_state

        if self.run_dir is None:
            return "graftline closed."
        name = self.run_dir.name
        state = read_engine_state(self.run_dir)
        if state is not None and state.status in ("running", "paused", "starting"):
            return (f"Detached from run {name}: training keeps running in the background.\n"
                    f"Re-attach with: graftline attach {name}")
        return f"graftline closed (run {name} is not running)."

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Runs", "Every run with its status; Enter attaches", self.action_runs)
        yield SystemCommand("Launch", "Pick a pipeline file, validate, plan, launch",
                            self.action_launch)
        yield SystemCommand("Lineage", "Checkpoint tree, sizes, cleanup planner",
                            self.action_lineage)
        yield SystemCommand("Cycle theme", "dark → light → low-colour → your themes",
                            self.action_cycle_theme)
        yield SystemCommand("Detach", "Leave the console; training keeps running",
                            self.action_detach)
        from graftline.console.screens.dashboard import DashboardScreen

        if isinstance(screen, DashboardScreen):
            yield SystemCommand("Export", "Export the selected stage's checkpoint",
                                screen.action_export)
            yield SystemCommand("Stop run…", "Stop the engine after a confirmation",
                                screen.action_stop)
            yield SystemCommand("Next chart metric", "loss, margins, reward, KL, lr, grad norm",
                                screen.action_next_metric)


def run_console(run_dir: Path | None, runs_dir: Path, theme: str | None = None) -> None:
    """Open the console (attached to `run_dir`, or on the runs/launch screen) until `q`."""
    app = GraftlineApp(run_dir, runs_dir, theme)
    message = app.run()
    if message:
        print(message)
