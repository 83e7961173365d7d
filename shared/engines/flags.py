"""Boolean knobs of a bundle config, read as the user typed them.

``python -m monai.bundle run ... --resume false`` hands the config the string ``'false'`` (fire turns only
``False``/``True`` into booleans), and any non-empty string is true in Python. :func:`as_bool` reads such a value as
meant, or stops naming the knob.
"""

from shared.errors import InputError

__all__ = ["as_bool"]

_WORDS = {"true": True, "1": True, "false": False, "0": False}


def as_bool(value: bool | int | str, name: str) -> bool:
    """``value`` as a boolean: True/False, 1/0 or the strings true/false/1/0 (any case), else InputError naming it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _WORDS:
        return _WORDS[value.strip().lower()]
    raise InputError(f"{name}: expected true or false (or 1 / 0), got {value!r}; pass --{name} true or --{name} false")
