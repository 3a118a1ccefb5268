"""The errors convpipe expects, each mapped to an exit status by the CLI (README, "Commands and exit status")."""

from __future__ import annotations


class ConvpipeError(Exception):
    """A failure the user can act on: shown as one line, never as a traceback."""

    exit_code = 1


class ConfigError(ConvpipeError):
    """Bad usage or a bad config: exit 2, before anything is written."""

    exit_code = 2


class RunError(ConvpipeError):
    """Something went wrong reading, computing or writing: exit 1."""

    exit_code = 1


class ParamError(ValueError):
    """A filter key with a bad value, raised where the step's position is not known yet."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
