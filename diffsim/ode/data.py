"""Observation files: CSV with a header ``t,<state names...>`` and one row per time."""
import csv
import math
import pathlib

import numpy as np

from ..errors import DiffsimError

#: largest data file read (bytes): reading stops there, so /dev/zero or a runaway file
#: cannot fill memory
MAX_BYTES = 32 << 20
#: most data rows (observation times) in one file
MAX_ROWS = 1_000_000


def read_csv(path, state_names, with_lines=False):
    """Read (times (J,), values (J, n)) from ``path``; empty cells are NaN (unobserved).

    The header must be ``t`` then the state names in order; times strictly increasing;
    at least two data rows; values finite (``inf``/``nan`` spelled out are refused:
    leave the cell empty for an unobserved value). The file must be UTF-8 text of at
    most MAX_BYTES bytes and MAX_ROWS rows. Errors name the file and line.
    with_lines: also return the file line of each row (J,), for later messages.
    """
    p = pathlib.Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as e:
        raise DiffsimError(f"cannot read data file {p}: {e.strerror or e}") from None
    if len(raw) > MAX_BYTES:
        raise DiffsimError(f"{p}: data file is larger than {MAX_BYTES >> 20} MiB (read stopped "
                           "there); is this the right file? Split or thin the observations")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DiffsimError(f"{p}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                           f"{e.start}); a data file is a CSV text file 't,<states>'") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise DiffsimError(f"{p}:{line}: NUL byte: this is a binary file, not a CSV text file")
    lines = text.splitlines()
    if len(lines) > MAX_ROWS + 1:
        raise DiffsimError(f"{p}: {len(lines)} lines, more than the {MAX_ROWS} data rows allowed")
    rows = list(csv.reader(lines))
    want = ["t", *state_names]
    if not rows or [c.strip() for c in rows[0]] != want:
        got = ",".join(rows[0])[:200] if rows else "(empty file)"
        raise DiffsimError(f"{p}:1: the header must be {','.join(want)}, got {got}")
    ts, ys, where = [], [], []
    for i, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(want):
            raise DiffsimError(f"{p}:{i}: expected {len(want)} columns ({','.join(want)}), got {len(row)}")
        try:
            vals = [float(c) if c.strip() else float("nan") for c in row]
        except ValueError:
            raise DiffsimError(f"{p}:{i}: not a number in {','.join(row)[:200]!r}") from None
        for name, c, v in zip(want, row, vals):
            if c.strip() and not math.isfinite(v):
                raise DiffsimError(f"{p}:{i}: {name} = {c.strip()!r} is not a finite number; "
                                   "leave the cell empty for an unobserved value")
        if not np.isfinite(vals[0]) or (ts and vals[0] <= ts[-1]):
            raise DiffsimError(f"{p}:{i}: time {row[0]!r} must be given and increasing")
        ts.append(vals[0])
        ys.append(vals[1:])
        where.append(i)
    if len(ts) < 2:
        raise DiffsimError(f"{p}: {len(ts)} data row(s) after the header; a fit needs "
                           "observations at two or more times")
    if with_lines:
        return np.array(ts), np.array(ys), np.array(where)
    return np.array(ts), np.array(ys)


def write_csv(path, ts, ys, state_names):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["t", *state_names])
        for t, y in zip(ts, ys):
            w.writerow([f"{t:.6g}", *(f"{v:.10g}" for v in y)])
