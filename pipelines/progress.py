"""How tasks report progress to whoever runs them (the CLI draws it as rich progress bars)."""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[str, int, int | None], None]  # (step, done, total)
_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> None:
    global _reporter
    _reporter = reporter


def report(step: str, done: int, total: int | None = None) -> None:
    if _reporter is not None:
        _reporter(step, done, total)
