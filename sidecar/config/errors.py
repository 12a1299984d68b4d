"""`ConfigError`: every problem of a config, each with the exact key path it was found at."""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """One or more config problems. `path` and `problem` are the first; `problems` holds them all."""

    def __init__(self, path: str, problem: str, more: Iterable[tuple[str, str]] = ()) -> None:
        self.problems: tuple[tuple[str, str], ...] = ((path, problem), *more)
        self.path = path
        self.problem = problem
        super().__init__("\n".join(f"{p}: {q}" for p, q in self.problems))

    def lines(self) -> list[str]:
        """What the command line prints, one line per problem."""
        return [f"config error: {p}: {q}" for p, q in self.problems]
