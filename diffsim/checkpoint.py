"""Files that must never be half-written or silently wrong: optimisation checkpoints and
best-parameter files.

Every write goes to a temporary file with a unique name in the same folder, then an
atomic rename (``os.replace``): two runs writing the same ``--out`` never share a
temporary file, and a reader sees the old file or the new one, never a torn one. Every
read checks types and shapes and raises :class:`~diffsim.errors.DiffsimError` (exit 2)
naming the file and what is wrong in it.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import uuid

import numpy as np

from .errors import DiffsimError

#: format version written into checkpoints; a different one is refused with a message
VERSION = 1


def jsonable(o):
    """JSON-able copy: numpy arrays/scalars to lists/floats; NaN/inf kept as strings."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else str(f)
    return o


def write_json(path, obj) -> pathlib.Path:
    """Write ``obj`` as JSON to ``path`` atomically (unique temporary file + rename)."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(jsonable(obj)))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DiffsimError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def read_json(path, what="file") -> dict:
    """Read a JSON object from ``path``; a missing, unreadable, truncated or non-object
    file raises DiffsimError naming it."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise DiffsimError(f"{path}: the {what} is a directory, not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DiffsimError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DiffsimError(f"{path}: cannot read the {what}: {e}") from None
    if not text.strip():
        raise DiffsimError(f"{path}: the {what} is empty (an interrupted write?); delete it "
                           "or use a fresh --out")
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise DiffsimError(f"{path}: the {what} is not valid JSON ({e}); it may be truncated; "
                           "delete it or use a fresh --out") from None
    if not isinstance(obj, dict):
        raise DiffsimError(f"{path}: the {what} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _vector(d, key, n, path, allow_nan=False):
    v = d.get(key)
    if not isinstance(v, list) or len(v) != n:
        got = f"{len(v)} entries" if isinstance(v, list) else type(v).__name__
        raise DiffsimError(f"{path}: '{key}' must be a list of {n} numbers, got {got}")
    try:
        a = np.array([float(e) if not isinstance(e, bool) else math.nan for e in v])
    except (TypeError, ValueError):
        raise DiffsimError(f"{path}: '{key}' must hold numbers only") from None
    if not allow_nan and not np.all(np.isfinite(a)):
        raise DiffsimError(f"{path}: '{key}' holds NaN or infinite values")
    return a


def _numbers(v, key, path) -> list[float]:
    """A history list: numbers, or "nan"/"inf" strings as written by write_json."""
    try:
        if all(isinstance(e, (int, float, str)) and not isinstance(e, bool) for e in v):
            return [float(e) for e in v]
    except ValueError:
        pass
    raise DiffsimError(f"{path}: '{key}' must be a list of numbers")


def load_checkpoint(path, names: list[str] | None) -> dict:
    """Read and validate an optimisation checkpoint written by :func:`diffsim.optim.minimize`
    for a problem whose parameters are ``names``. Returns a dict with x, best_x (arrays),
    best_f (float), iterations (int), history (dict of lists), optimizer (dict or None).
    ``names=None``: the file's own parameter names (a list of strings) are taken, so a file
    can be checked before the problem it belongs to is built (the CLI's --resume does)."""
    d = read_json(path, "checkpoint")
    if d.get("version") != VERSION:
        raise DiffsimError(f"{path}: checkpoint version {d.get('version')!r} is not {VERSION}; "
                           "use a fresh --out")
    got = d.get("names")
    if names is None:
        if not (isinstance(got, list) and all(isinstance(e, str) for e in got)):
            raise DiffsimError(f"{path}: 'names' must be a list of parameter names; use a fresh --out")
        names = got
    if got != list(names):
        n_got = len(got) if isinstance(got, list) else "?"
        raise DiffsimError(f"{path}: the checkpoint holds {n_got} parameters that do not match "
                           f"this scene's {len(names)} ({', '.join(names[:4])}"
                           f"{', …' if len(names) > 4 else ''}); use a fresh --out")
    n = len(names)
    it = d.get("iterations")
    if not isinstance(it, int) or isinstance(it, bool) or it < 0:
        raise DiffsimError(f"{path}: 'iterations' must be a non-negative integer, got {it!r}")
    best_f = d.get("best_f")
    if isinstance(best_f, str):
        best_f = float(best_f) if best_f in ("inf", "nan") else None
    if not isinstance(best_f, (int, float)) or isinstance(best_f, bool):
        raise DiffsimError(f"{path}: 'best_f' must be a number, got {d.get('best_f')!r}")
    hist = d.get("history", {})
    if not (isinstance(hist, dict) and all(isinstance(hist.get(k, []), list)
                                           for k in ("loss", "grad_norm"))):
        raise DiffsimError(f"{path}: 'history' must be an object with lists 'loss' and 'grad_norm'")
    opt = d.get("optimizer")
    if opt is not None and not isinstance(opt, dict):
        raise DiffsimError(f"{path}: 'optimizer' must be an object or null")
    xs = hist.get("x")
    if xs is not None:
        if not (isinstance(xs, list) and len(xs) == len(hist.get("loss", []))):
            raise DiffsimError(f"{path}: 'history.x' must have one entry per iteration")
        xs = [_vector({"x": v}, "x", n, path, allow_nan=True) for v in xs]
    scale = None
    if d.get("scale") is not None:
        scale = _vector(d, "scale", len(d["scale"]) if isinstance(d["scale"], list) else -1, path)
        if not np.all(scale > 0):
            raise DiffsimError(f"{path}: 'scale' must hold positive numbers (the optimiser's "
                               "parameter scales); use a fresh --out")
    return {"x": _vector(d, "x", n, path), "best_x": _vector(d, "best_x", n, path),
            "best_f": float(best_f), "iterations": it, "optimizer": opt,
            "history": {"loss": _numbers(hist.get("loss", []), "history.loss", path),
                        "grad_norm": _numbers(hist.get("grad_norm", []), "history.grad_norm", path),
                        "x": xs},
            "status": d.get("status"), "scale": scale}


def save_params(path, problem, objective=None, extra=None) -> pathlib.Path:
    """Write the problem's current parameters as ``{"params": {name: value}, ...}``: the
    file ``best_params.json`` a user loads with :func:`load_params` or ``json.load``."""
    obj = {"problem": problem.name, "objective": objective,
           "params": problem.params.as_dict(), **(extra or {})}
    return write_json(path, obj)


def load_params(path, problem) -> np.ndarray:
    """Parameter vector from a ``best_params.json`` for ``problem`` (validated)."""
    d = read_json(path, "parameter file")
    p = d.get("params")
    if not isinstance(p, dict):
        raise DiffsimError(f"{path}: 'params' must be an object name -> value")
    x = problem.params.vector
    for k, v in p.items():
        if k not in problem.params.index:
            raise DiffsimError(f"{path}: unknown parameter {k!r} for {problem.name}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DiffsimError(f"{path}: parameter {k!r} must be a finite number, got {v!r}")
        x[problem.params.index[k]] = float(v)
    return x
