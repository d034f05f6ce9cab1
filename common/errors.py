"""How a bundle run ends on an error: a user's mistake is one line on stderr, without a traceback.

``monai.bundle run`` evaluates configs through several layers that each wrap an error ("Failed to evaluate
ConfigExpression", "applying transform ..."), so the message that names the file and the fix ends up under 60 to
110 lines of tracebacks. ``report_errors()``, called first in each config's ``run``, installs an exception hook
that prints the innermost cause of a user's mistake (a bad value, a missing or unreadable file, a refused bundle)
as one line and exits with status 1. Any other error (a bug) is printed with its full traceback. Setting the
environment variable ``BUNDLE_DEBUG=1`` prints the full traceback for every error.

Either way the process ends with ``os._exit(1)`` once the message is flushed: outputs are written atomically, so
nothing is left half-written, and the threads of image readers and loaders are not torn down one by one (which
aborted some runs with status 134, "terminate called without an active exception", after the right message).
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

#: the environment variable that shows full tracebacks
DEBUG_ENV = "BUNDLE_DEBUG"
#: errors a user causes with their data, paths or bundle; our own code raises these with a message that names
#: the file, the problem and the fix (``BundleError`` and ``json.JSONDecodeError`` are ``ValueError``s)
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, ImportError)


def causes(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from (``raise ... from ...``, or while handling), outermost first."""
    chain = [error]
    while True:
        inner = chain[-1].__cause__ or (None if chain[-1].__suppress_context__ else chain[-1].__context__)
        if inner is None or any(inner is seen for seen in chain):
            return chain
        chain.append(inner)


def user_error(error: BaseException) -> BaseException | None:
    """The outermost user's mistake in the chain of ``error`` (wrappers such as MONAI's "Failed to evaluate" are
    ``RuntimeError``s and are looked through; our own message comes before the library error it was raised from)."""
    return next((e for e in causes(error) if isinstance(e, USER_ERRORS)), None)


def first_line(error: BaseException) -> str:
    """The first non-empty line of an error's message, or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def one_line(error: BaseException) -> str | None:
    """``error: <message>`` for a user's mistake (the first line of its message), None for anything else."""
    cause = user_error(error)
    return None if cause is None else f"error: {first_line(cause)}"


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    """``sys.excepthook``: one line for a user's mistake, the traceback otherwise; then exit with status 1."""
    if not issubclass(kind, Exception):  # KeyboardInterrupt and the like: Python's own handling
        sys.__excepthook__(kind, error, tb)
        return
    line = None if os.environ.get(DEBUG_ENV) else one_line(error)
    if line is None:
        traceback.print_exception(kind, error, tb)
    else:
        print(f"{line} ({DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)
    exit_now(1)


def exit_now(status: int) -> None:
    """End the process with ``status`` once stdout and stderr are flushed, without tearing its threads down one by
    one (see the module's note on status 134)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def report_errors() -> None:
    """Install the exception hook of this module for the rest of the process (idempotent)."""
    sys.excepthook = _hook
