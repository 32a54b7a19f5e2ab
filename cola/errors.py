"""Exception types for errors the user can fix (bad params, missing inputs, unusable tracking store).

Stage scripts run under :func:`cola.params.cli_main`, which prints these as one ``error: ...`` line and exits
with code 2 instead of dumping a traceback: they describe the user's setup, not a bug in cola.
"""

from __future__ import annotations


class ColaError(Exception):
    """Base class for expected, user-facing errors. The message must be a single, self-contained line."""


class ParamsError(ColaError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


class TrackingError(ColaError):
    """The MLflow tracking store cannot be read (raised by queries; logging only warns)."""
