"""A bundle run that stops on the user's input ends with one line, not a chained traceback.

MONAI wraps an error raised while building a config item in ``RuntimeError``s, so the message of an
:class:`~shared.errors.InputError` ends up in the middle of a long traceback. Importing this module installs
:func:`excepthook` (every bundle config lists ``"$import shared.engines.user_errors"`` in ``imports``, and MONAI runs
the config's imports before it builds any item): an uncaught exception caused by an ``InputError`` prints
``<prog>: <message>`` on stderr and the process exits 1; any other exception is a bug and keeps the full traceback.
"""

import sys
from pathlib import Path

from shared.errors import InputError

__all__ = ["excepthook", "find_input_error", "install", "program_name"]


def find_input_error(error: BaseException | None) -> InputError | None:
    """The first :class:`InputError` in the chain Python would print for ``error`` (causes, then contexts), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, InputError):
            return error
        seen.add(id(error))
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__
    return None


def program_name() -> str:
    """The command as the user typed it, up to its subcommand: ``python -m monai.bundle run``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = f"python -m {spec.name.removesuffix('.__main__')}" if spec is not None else Path(sys.argv[0]).name
    return " ".join([program, *sys.argv[1:2]])


def excepthook(kind, error, trace) -> None:
    """``sys.excepthook``: one line for an input error (the interpreter then exits 1), else the previous hook."""
    found = find_input_error(error)
    if found is None:
        _previous(kind, error, trace)
    else:
        print(f"{program_name()}: {found}", file=sys.stderr, flush=True)


def install() -> None:
    """Make :func:`excepthook` the process's ``sys.excepthook`` (once; the hook it replaces handles bugs)."""
    global _previous
    if sys.excepthook is not excepthook:
        _previous = sys.excepthook
        sys.excepthook = excepthook


_previous = sys.__excepthook__
install()
