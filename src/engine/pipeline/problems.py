"""Problems found in a pipeline file: each names the file, line, stage and field, and a fix."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from graftline.engine.common.errors import GraftlineError


@dataclass(frozen=True)
class Problem:
    message: str
    file: str
    line: int | None = None
    stage: str | None = None
    field: str | None = None
    fix: str | None = None
    severity: Literal["error", "warning"] = "error"
    # A stable name for problems that code reacts to (e.g. "disk_forecast"); never parse `message`.
    code: str | None = None

    @property
    def where(self) -> str:
        place = self.file + (f":{self.line}" if self.line else "")
        parts = [place]
        if self.stage:
            parts.append(f"stage '{self.stage}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ", ".join(parts)

    def __str__(self) -> str:
        text = f"{self.where}: {self.severity}: {self.message}"
        return text + (f"\n    fix: {self.fix}" if self.fix else "")


class FixableError(GraftlineError):
    """An error that knows its fix: what went wrong, and what the user should do about it."""

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class PipelineError(GraftlineError):
    """A pipeline file cannot be used. Carries every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        text = "\n".join(str(p) for p in problems)
        super().__init__(text, "each problem above names its own fix", text=text)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else f"expected one of: {', '.join(choices)}"
