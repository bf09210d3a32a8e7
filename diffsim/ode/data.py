"""Observation files: CSV with a header ``t,<state names...>`` and one row per time."""
import csv
import pathlib

import numpy as np

from ..errors import DiffsimError


def read_csv(path, state_names):
    """Read (times (J,), values (J, n)) from ``path``; empty cells are NaN (unobserved).

    The header must be ``t`` then the state names in order. Errors name the file and line.
    """
    p = pathlib.Path(path)
    try:
        rows = list(csv.reader(p.read_text().splitlines()))
    except OSError as e:
        raise DiffsimError(f"cannot read data file {p}: {e}") from None
    want = ["t", *state_names]
    if not rows or [c.strip() for c in rows[0]] != want:
        raise DiffsimError(f"{p}:1: the header must be {','.join(want)}, got "
                           f"{','.join(rows[0]) if rows else '(empty file)'}")
    ts, ys = [], []
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(want):
            raise DiffsimError(f"{p}:{i}: expected {len(want)} columns ({','.join(want)}), got {len(row)}")
        try:
            vals = [float(c) if c.strip() else float("nan") for c in row]
        except ValueError:
            raise DiffsimError(f"{p}:{i}: not a number in {row!r}") from None
        if not np.isfinite(vals[0]) or (ts and vals[0] <= ts[-1]):
            raise DiffsimError(f"{p}:{i}: time {row[0]!r} must be finite and increasing")
        ts.append(vals[0])
        ys.append(vals[1:])
    if not ts:
        raise DiffsimError(f"{p}: no data rows after the header")
    return np.array(ts), np.array(ys)


def write_csv(path, ts, ys, state_names):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", *state_names])
        for t, y in zip(ts, ys):
            w.writerow([f"{t:.6g}", *(f"{v:.10g}" for v in y)])
