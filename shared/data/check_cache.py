"""Memory of NIfTI files already found valid, so that re-validating an unchanged dataset does not re-read it.

Validating KiTS19 or LiTS reads every volume (a truncated gzip shows only when the whole stream is read): minutes
for the real datasets, at every bundle start. A file set found clean is remembered by its fingerprint (absolute
path, size, modification time) in ``$XDG_CACHE_HOME/ct-attention-bundles/valid_nifti.json`` (default
``~/.cache``). Problems are never remembered, so they are checked and reported every time. The cache is only an
optimisation: an unreadable or unwritable cache file is ignored.
"""

import json
import os
from pathlib import Path

from shared.data.atomic import atomic_path


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ct-attention-bundles" / "valid_nifti.json"


class CheckCache:
    """Fingerprints of passed checks: ``key(...)`` before checking, ``add(key)`` if clean, ``save()`` at the end."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path else default_path()
        try:
            self._entries: dict[str, list[str]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._entries = {}
        self._changed = False

    @staticmethod
    def key(*files: Path, check: str) -> str | None:
        """Fingerprint of ``check`` on ``files`` (None if a file cannot be stat'ed)."""
        try:
            stats = [(str(Path(f).resolve()), Path(f).stat()) for f in files]
        except OSError:
            return None
        return json.dumps([check, [[name, st.st_size, st.st_mtime_ns] for name, st in stats]])

    def __contains__(self, key: str | None) -> bool:
        return key is not None and key in self._entries

    def add(self, key: str | None) -> None:
        if key is not None and key not in self._entries:
            self._entries[key] = [name for name, _, _ in json.loads(key)[1]]
            self._changed = True

    def save(self) -> None:
        """Write the cache (entries of deleted files dropped); never raises."""
        if not self._changed:
            return
        entries = {k: v for k, v in self._entries.items() if all(Path(name).exists() for name in v)}
        try:
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(entries))
        except OSError:
            pass
