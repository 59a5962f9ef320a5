"""The error tree. The CLI maps these to exit codes and one-line messages; bugs are not caught."""

from __future__ import annotations


class ReconcilerError(Exception):
    """Base of every error the reconciler expects and reports in one line."""


class SpecError(ReconcilerError):
    """A spec file is invalid: names the file, the field path and the problem."""

    def __init__(self, path: str, field: str, message: str) -> None:
        self.path, self.field, self.message = path, field, message
        super().__init__(self.line())

    def reason(self) -> str:
        """The error without the path: `field: message` (or just the message)."""
        return f"{self.field}: {self.message}" if self.field else self.message

    def line(self) -> str:
        return f"{self.path}: {self.reason()}"


class DriverError(ReconcilerError):
    """A driver could not carry out a verb. `transient` errors are retried with backoff;
    permanent ones (command not found, bad user) put the unit into `failed`."""

    def __init__(self, message: str, *, transient: bool = True) -> None:
        self.transient = transient
        super().__init__(message)


class DriverUnavailable(ReconcilerError):
    """The requested driver cannot run on this machine (or is not installed)."""


class LockHeld(ReconcilerError):
    """Another reconciler acts on this state directory."""

    def __init__(self, pid: int | None, path: str) -> None:
        self.pid = pid
        holder = f"pid {pid}" if pid else "another process"
        super().__init__(f"{path}: state directory is locked by {holder}")


class StateError(ReconcilerError):
    """The state directory, or a file the reconciler keeps in it, cannot be used."""


class UsageError(ReconcilerError):
    """Bad command-line input (unknown unit name, bad path)."""
