"""User-facing errors.

Every mistake a user can make in a spec, a command line or a data folder raises :class:`LitmusError`
with a one-line message that names the problem and the fix. The CLI prints it as ``litmus: error: ...``
and exits with status 2, before any trial starts.
"""

from __future__ import annotations


class LitmusError(Exception):
    """A user error: bad spec, bad data path, bad command line. Exit status 2 in the CLI."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep the message on one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))


class SpecError(LitmusError):
    """A study spec that cannot run. ``key`` is the dotted path of the offending entry."""

    def __init__(self, key: str | None, message: str):
        self.key = key
        self.message = " ".join(str(message).split())
        super().__init__(f"{key}: {self.message}" if key else self.message)


class DataError(LitmusError):
    """A data folder that is missing or does not hold the expected format."""


class DivergedError(RuntimeError):
    """Raised inside a training step when a loss or gradient is not finite.

    The trial loop catches it and ends the trial with status ``diverged`` (no retry: a retry from the
    same checkpoint with the same seed would diverge again).
    """

    def __init__(self, what: str, epoch: int, step: int):
        self.what, self.epoch, self.step = what, epoch, step
        super().__init__(f"non-finite {what} at epoch {epoch}, step {step}")
