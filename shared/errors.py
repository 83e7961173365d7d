"""The one exception type for problems with what a user gave (a file, a folder, a value), as opposed to bugs.

Raise :class:`InputError` with a message that names the file or knob, says what is wrong and what to do. The command
lines report it as one line; any other exception is a bug and keeps its traceback.
"""

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with the user's input, reported as one actionable line."""
