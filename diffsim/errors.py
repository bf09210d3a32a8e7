"""Exceptions raised by diffsim.

Every error a user can cause derives from :class:`DiffsimError`; the command line
prints its message and exits with status 2 instead of showing a traceback.
"""
from __future__ import annotations


class DiffsimError(Exception):
    """Base class: a problem with the user's input or request, described in words."""

    exit_code = 2


class SceneError(DiffsimError, ValueError):
    """A scene file or override is malformed: names the file, the key and the value."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None,
                 value=None, has_value: bool = False):
        self.file, self.key, self.value = file, key, value
        where = []
        if file:
            where.append(str(file))
        if key:
            where.append(f"key '{key}'")
        if has_value:
            where.append(f"value {value!r}")
        prefix = ": ".join([", ".join(where)]) if where else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RuntimeStateError(DiffsimError, RuntimeError):
    """An object was used with a Taichi runtime other than the one that created it."""


class SimulationError(DiffsimError, RuntimeError):
    """The simulation produced NaN/inf (blew up) or could not finish as asked."""


class GradientError(DiffsimError, RuntimeError):
    """A gradient was NaN/inf at a valid input: the task failed (exit status 1), the input
    was not at fault."""

    exit_code = 1


class TaskFailed(DiffsimError, RuntimeError):
    """The request was valid but its goal was not met (a fit that did not converge, a
    check that failed, an optimisation that diverged): exit status 1."""

    exit_code = 1
