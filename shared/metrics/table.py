"""``MetricTable``: per-case rows and a summary, as printed and saved by ``python -m shared evaluate`` and the reports.

MONAI's ``write_metrics_reports`` (``MetricsSaver``) does not fit these tables: it writes one ``<metric>_raw.csv``
per metric, a float column per class plus a class mean, rounded to 4 decimals; the rows here mix Dice with lesion
counts (LiTS) or are key slices (DeepLesion), and ``--out_csv`` names one file.
"""

import csv
import math
import os
from pathlib import Path
from typing import Any

from shared.data.atomic import atomic_path


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _format(value: Any) -> str:
    """Floats with 4 decimals, NaN as ``n/a`` (an empty group, e.g. no large lesion), anything else as ``str``."""
    if _is_nan(value):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


class MetricTable:
    """Per-case metric rows (one dict a case, same keys in every row) and a summary dict (means, pooled values).

    Args:
        rows: one dict per case; the columns are the keys of all rows, in first-seen order.
        summary: name -> value of the summary lines (e.g. ``"tumour_dice_mean": 0.71``).
        title: printed above the table.
    """

    def __init__(self, rows: list[dict[str, Any]], summary: dict[str, Any], title: str = "") -> None:
        self.rows = rows
        self.summary = summary
        self.title = title

    @property
    def columns(self) -> list[str]:
        names: dict[str, None] = {}
        for row in self.rows:
            names.update(dict.fromkeys(row))
        return list(names)

    def to_text(self) -> str:
        """The rows as an aligned text table (numbers right-aligned), then one ``name: value`` line a summary item."""
        columns = self.columns
        cells = [[_format(row.get(c, "")) for c in columns] for row in self.rows]
        widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]
        lines = [self.title] if self.title else []
        if columns:
            lines.append("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
            lines.append("  ".join("-" * w for w in widths))
            for row, line in zip(self.rows, cells):
                parts = [
                    text.ljust(w) if isinstance(row.get(c), str) else text.rjust(w)
                    for c, text, w in zip(columns, line, widths)
                ]
                lines.append("  ".join(parts).rstrip())
        width = max((len(k) for k in self.summary), default=0)
        lines += [f"{key.ljust(width)} : {_format(value)}" for key, value in self.summary.items()]
        return "\n".join(lines)

    def write_csv(self, path: str | os.PathLike) -> Path:
        """Write the rows to ``path`` (CSV with a header; NaN written empty), atomically: temp file, then rename."""
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: "" if _is_nan(v) else v for k, v in row.items()})
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        """``{"title", "rows", "summary"}`` ready for ``json.dumps`` (NaN becomes None)."""

        def clean(d: dict[str, Any]) -> dict[str, Any]:
            return {k: None if _is_nan(v) else v for k, v in d.items()}

        return {"title": self.title, "rows": [clean(r) for r in self.rows], "summary": clean(self.summary)}
