"""GPU memory per device and for the engine, or "no GPU" and RAM; CPU; free disk vs forecast."""

from __future__ import annotations

from rich.text import Text

from graftline.console.formats import gpu_reason_label, human_bytes
from graftline.console.run_view import RunModel
from graftline.console.widgets.quiet_static import QuietStatic
from graftline.engine.common import Telemetry


def gauge(used: float | None, total: float | None, width: int, ascii_only: bool) -> Text:
    if used is None or not total:
        return Text("?".center(width), style="dim")
    fraction = max(0.0, min(1.0, used / total))
    filled = round(fraction * width)
    style = "red" if fraction > 0.9 else "yellow" if fraction > 0.75 else "green"
    full, empty = ("#", "-") if ascii_only else ("█", "░")
    return Text.assemble((full * filled, style), (empty * (width - filled), "dim"))


class ResourceGauges(QuietStatic):
    DEFAULT_CSS = """
    ResourceGauges { height: auto; border: round $panel-lighten-2; padding: 0 1; }
    """

    def __init__(self, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.ascii_only = ascii_only
        self.border_title = "resources"

    def update_from(self, model: RunModel) -> None:
        live = model.run_status() in ("running", "paused", "waiting")
        self.show(self.render_telemetry(model.telemetry, live=live))

    def _rank_line(self, rank: dict) -> Text:
        alive = bool(rank.get("alive"))
        mark = ("o" if alive else "x") if self.ascii_only else ("●" if alive else "✗")
        line = Text.assemble((mark, "green" if alive else "bold red"),
                             f" rank {rank.get('rank', '?')} pid {rank.get('pid', '?')}")
        if alive:
            line.append(f"  RSS {human_bytes(rank.get('rss'))}")
            if rank.get("gpu_bytes") is not None:
                line.append(f"  VRAM {human_bytes(rank['gpu_bytes'])}")
        else:
            line.append("  dead", style="bold red")
        return line

    def render_telemetry(self, tel: Telemetry | None, *, live: bool = True) -> Text:
        if tel is None:
            return Text("no telemetry yet", style="dim")
        if not live:
            # the engine has exited: its last CPU and memory sample would read as current
            last = f"disk free {human_bytes(tel.disk_free)} (last sample)"
            return Text.assemble(("engine not running", "dim"), "\n", (last, "dim"))
        bar = 10
        lines: list[Text] = []
        if tel.gpus:
            for gpu in tel.gpus:
                used, total = gpu.get("used"), gpu.get("total")
                lines.append(Text.assemble(
                    f"GPU{gpu.get('index', '?')} ", gauge(used, total, bar, self.ascii_only),
                    f" {human_bytes(used)}/{human_bytes(total)}"))
            if tel.proc_gpu_bytes is not None:
                lines.append(Text(f"engine VRAM {human_bytes(tel.proc_gpu_bytes)}"))
        else:
            lines.append(Text(f"no GPU ({gpu_reason_label(tel.gpu_reason)}), RAM shown",
                              style="yellow", no_wrap=True, overflow="ellipsis"))
        lines.append(Text.assemble("RAM  ", gauge(tel.ram_used, tel.ram_total, bar,
                                                  self.ascii_only),
                                   f" {human_bytes(tel.ram_used)}/{human_bytes(tel.ram_total)}"))
        cpu_text = f"{tel.cpu_percent:.0f}%" if tel.cpu_percent is not None else "—"
        lines.append(Text(f"engine CPU {cpu_text}  RSS {human_bytes(tel.rss)}"))
        for rank in tel.ranks or []:  # a distributed stage's processes on this host
            lines.append(self._rank_line(rank))
        disk = Text(f"disk free {human_bytes(tel.disk_free)}")
        if tel.forecast_bytes is not None:
            short = tel.disk_free is not None and tel.forecast_bytes > tel.disk_free
            disk.append(f", needs {human_bytes(tel.forecast_bytes)}",
                        style="bold red" if short else "")
        lines.append(disk)
        return Text("\n").join(lines)
