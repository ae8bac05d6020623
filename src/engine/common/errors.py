"""The one error root: every error graftline raises on purpose says what went wrong and the fix.

Callers that want to tell the user something catch `GraftlineError` and print `message` and
`fix`; anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["GraftlineError"]


class GraftlineError(Exception):
    """What went wrong (`message`) and what the user should do about it (`fix`, may be empty).

    `text` overrides how the error prints, for subclasses with a house format of their own. A
    subclass whose errors reach places that print only `str(exc)` (a dataset, a reward, a
    backend: validate's problems, a stage's failure) sets `fix_in_text`, and prints as
    `message (fix: fix)`.
    """

    fix_in_text: ClassVar[bool] = False

    def __init__(self, message: str, fix: str | None = "", *, text: str | None = None) -> None:
        super().__init__(message if text is None else text)
        self.message = message
        self.fix = fix or ""

    def __str__(self) -> str:
        if self.fix_in_text:
            return f"{self.message} (fix: {self.fix})" if self.fix else self.message
        return super().__str__()
