"""Exception types for errors the user can fix, and the one place that turns them into an exit code.

Stage scripts (:func:`cli_main`) and the ``cola`` CLI (:func:`user_errors`) print these as one ``error: ...``
line on stderr and exit with code 2 instead of dumping a traceback: they describe the user's setup, not a bug
in cola. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class ColaError(Exception):
    """Base class for expected, user-facing errors. The message must be a single, self-contained line."""


class ParamsError(ColaError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


class TrackingError(ColaError):
    """The MLflow tracking store cannot be read (raised by queries; logging only warns)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Report a user error (a `ColaError`, or a missing input file) as one `error:` line and exit with 2.

    ``FileNotFoundError`` counts as a user error: it is nearly always an upstream stage that has not run.
    Ctrl-C exits with 130 and one line.
    """
    try:
        yield
    except ColaError as exc:
        message = str(exc)
    except FileNotFoundError as exc:
        message = f"{exc.filename}: file not found" if exc.filename else str(exc)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    else:
        return
    print("error: " + " ".join(message.split()), file=sys.stderr)
    raise SystemExit(2)


def cli_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run `fn` (a stage's ``main``) under :func:`user_errors` and return its value."""
    with user_errors():
        return fn(*args, **kwargs)
    raise AssertionError("unreachable")  # user_errors either returns or exits
