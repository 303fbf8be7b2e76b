"""metrics.csv (one row per log or evaluation) and the loss-curve PNG drawn from it."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["MetricsLog", "plot_losses", "COLUMNS"]

log = logging.getLogger(__name__)

COLUMNS = ("step", "time_s", "tokens", "lr", "loss", "val_loss", "tokens_per_s")


class MetricsLog:
    """Append-only CSV of one run. A fresh run starts it empty (rows left by an earlier run that was killed
    before its first checkpoint are dropped); a resumed run keeps the rows up to the resumed step and drops
    the rest, so the curve has each step once and stays exact. Rows that cannot be read back (a damaged
    file) are dropped with a warning, never a traceback."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        rows = self._rows_up_to(resume_step) if resume_step is not None else []
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)          # (a link named metrics.csv is replaced, not written through)

    def _rows_up_to(self, step: int) -> list[dict[str, str]]:
        """The readable rows of the existing file whose step is at most `step`."""
        if not self.path.is_file():
            return []
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                table = list(csv.reader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            log.warning("%s cannot be read (%s); it starts again from step %d", self.path, e, step)
            return []
        if not table or tuple(table[0]) != COLUMNS:
            log.warning("%s does not start with genloom's header (%s); it starts again from step %d", self.path,
                        ",".join(COLUMNS), step)
            return []
        rows, unreadable = [], 0
        for values in table[1:]:
            row = dict(zip(COLUMNS, values)) if len(values) == len(COLUMNS) else None
            if row is None or not _readable(row):
                unreadable += 1
            elif int(row["step"]) <= step:
                rows.append(row)
        if unreadable:
            log.warning("%s: %d unreadable row(s) left out", self.path, unreadable)
        return rows

    def write(self, **values: float | int | None) -> None:
        row = {k: ("" if values.get(k) is None else _format(values[k])) for k in COLUMNS}
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=COLUMNS).writerow(row)

    @staticmethod
    def read(path: Path) -> list[dict[str, str]]:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))


def _readable(row: dict[str, str]) -> bool:
    """A row as `write` writes it: a whole step number, every other field empty or a number."""
    try:
        if int(row["step"]) < 0:
            return False
        for column in COLUMNS[1:]:
            if row[column] != "":
                float(row[column])
    except ValueError:
        return False
    return True


def _format(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))  # full precision: resumed curves are compared exactly


def _series(rows: list[dict[str, str]], column: str) -> list[tuple[float, float]]:
    return [(float(r["step"]), float(r[column])) for r in rows if r.get(column) not in ("", None)
            and math.isfinite(float(r[column]))]


def _nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` round tick values (1, 2, 2.5 or 5 times a power of ten apart) within [low, high]."""
    span = max(high - low, 1e-9)
    magnitude = 10 ** math.floor(math.log10(span / count))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10)), key=lambda s: abs(span / s - count))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def plot_losses(csv_path: Path, png_path: Path, title: str = "loss") -> None:
    """Draw training and validation loss against step as a PNG (no plotting library needed)."""
    rows = MetricsLog.read(csv_path)
    series = {"train": (_series(rows, "loss"), (31, 119, 180)), "val": (_series(rows, "val_loss"), (214, 39, 40))}
    points = [p for s, _ in series.values() for p in s]
    if not points:
        return
    width, height, left, right, top, bottom = 800, 480, 70, 20, 40, 50
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    if x_high == x_low:
        x_high = x_low + 1
    pad = (y_high - y_low) * 0.05 or 0.5
    y_low, y_high = y_low - pad, y_high + pad
    font = ImageFont.load_default()
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_low) / (x_high - x_low) * (width - left - right),
                top + (y_high - y) / (y_high - y_low) * (height - top - bottom))

    for y in _nice_ticks(y_low, y_high):
        _, py = to_px(x_low, y)
        draw.line([(left, py), (width - right, py)], fill=(230, 230, 230))
        draw.text((5, py - 6), f"{y:.3g}", fill="black", font=font)
    for x in _nice_ticks(x_low, x_high):
        px, _ = to_px(x, y_low)
        draw.line([(px, top), (px, height - bottom)], fill=(230, 230, 230))
        draw.text((px - 10, height - bottom + 5), f"{x:g}", fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((width // 2 - 15, height - 20), "step", fill="black", font=font)
    draw.text((left, 12), title, fill="black", font=font)
    for i, (name, (data, colour)) in enumerate(series.items()):
        if len(data) > 1:
            draw.line([to_px(x, y) for x, y in data], fill=colour, width=2)
        for x, y in data if len(data) <= 50 else []:
            px, py = to_px(x, y)
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        lx = width - right - 120 + 60 * i
        draw.line([(lx, 20), (lx + 20, 20)], fill=colour, width=3)
        draw.text((lx + 24, 14), name, fill="black", font=font)
    tmp = png_path.with_name(f".{png_path.name}.tmp.png")
    image.save(tmp)
    tmp.replace(png_path)
