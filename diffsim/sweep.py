"""Parameter sweeps and multi-start optimisation, in-process or on a Dask cluster.

A sweep evaluates one scene at many *points*. A point sets some inputs and runs one
evaluation: ``run`` (the scene's summary, as `diffsim run`), ``grad`` (objective and
gradient, as `diffsim grad`) or ``optimize`` (as `diffsim optimize`, from the point's start).
Inputs are

* grid axes ``KEY=LO:HI:N`` (N evenly spaced values, ends included) or ``KEY=v1,v2,…``;
  several axes give their Cartesian product;
* random axes ``KEY=LO:HI`` sampled uniformly and jointly ``samples`` times (seeded);
* multi-starts: ``multistart`` start points drawn uniformly inside the bounds of the
  scene's optimisable parameters (seeded), each optimised.

KEY is a parameter name of the scene's Problem (``angle``, ``wind_x``, ``angle[1]``; the
names `diffsim grad --all` prints), optionally behind its section (``physics.wind_x``), or
a scene key (``physics.drag``, ``sim.dt``). A parameter is varied on one built Problem per
worker process, so its kernels compile once for the whole sweep. A scene key rebuilds the
Problem for each distinct value (Taichi then compiles its kernels again: about a second
each); when a scene key also names a parameter (``physics.drag`` and ``drag``) the
parameter is the fast way, and the two differ only where the scene derives other settings
from the key's value (the cannon's horizon t_max from launch.speed and gravity).

Engines. ``client=None, workers=0``: a plain loop in this process. Otherwise points go in
chunks to a Dask ``distributed`` client: an embedded ``LocalCluster`` of single-threaded
worker processes (started by spawn, never fork: Taichi in a forked process is unsafe), or
any cluster given by its scheduler address. Each worker process initialises Taichi once
and keeps its built Problems between chunks and sweeps.

Nothing is lost. Every finished point is appended to ``points.jsonl`` in ``out`` as it
arrives (one JSON object a line, flushed at once); ``resume=True`` reads it and runs only
the missing points. A point whose evaluation raises is recorded with ``status = "failed"``
and the reason in ``error``; a chunk whose worker dies is resubmitted (Dask retries it on
another worker; a cancelled one, e.g. by ``client.restart()``, is resubmitted here), and a
point that kills its worker three times is recorded as failed. The table (one row per
point, ordered by point) is the same in serial and distributed runs for the same seed,
apart from the ``worker`` and ``seconds`` columns.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import pathlib
import sys
import threading
import time

import numpy as np

from .errors import DiffsimError, SceneError

EVALUATIONS = ("run", "grad", "optimize")
#: leading columns of every table, in this order (inputs follow ``point``)
LEAD = ("point",)
TAIL_FIRST = ("status", "objective", "error", "warnings")
TAIL_LAST = ("seconds", "worker")
#: arrays in a summary/report with at most this many entries become columns name[i]
MAX_ARRAY_COLUMNS = 8
#: gradients recorded per point: every parameter when there are at most this many, else
#: the swept and the optimisable ones (and always the 2-norm)
MAX_GRAD_COLUMNS = 16
JOURNAL = "points.jsonl"
FORMAT = 1


# -- axes -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept input: ``key`` as the user wrote it (the table's column), ``target`` the
    parameter name or scene key it sets, ``kind`` "param" or "scene", and its values."""

    key: str
    target: str
    kind: str
    values: tuple
    arg: str   # the argument it came from, for messages


def _number(text, arg, what="value"):
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise DiffsimError(f"{arg}: {what} {text!r} is not a number") from None
    if not math.isfinite(v):
        raise DiffsimError(f"{arg}: {what} {text!r} must be a finite number")
    return v


def parse_grid(text: str, flag: str = "--grid") -> tuple[str, list]:
    """'KEY=LO:HI:N' -> (KEY, N evenly spaced floats from LO to HI); 'KEY=v1,v2,…' ->
    (KEY, the values, each read as TOML like --set: numbers, or strings such as rk4).
    A malformed text raises DiffsimError naming the argument."""
    from .scene import parse_override
    arg = f"{flag} {text!r}"
    if "=" not in text:
        raise DiffsimError(f"{arg}: expected KEY=LO:HI:N or KEY=v1,v2,… "
                           "(e.g. --grid physics.wind_x=-10:10:21)")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key:
        raise DiffsimError(f"{arg}: the key is empty; expected KEY=LO:HI:N")
    if not raw:
        raise DiffsimError(f"{arg}: zero points (no values after '=')")
    if ":" in raw:
        parts = raw.split(":")
        if len(parts) != 3:
            raise DiffsimError(f"{arg}: a range is LO:HI:N (three parts, N the number of "
                               f"points), got {len(parts)} part(s)")
        lo, hi = _number(parts[0], arg, "LO"), _number(parts[1], arg, "HI")
        try:
            n = int(parts[2])
        except ValueError:
            raise DiffsimError(f"{arg}: N {parts[2]!r} must be a whole number of points") from None
        if n < 1:
            raise DiffsimError(f"{arg}: zero points (N = {n}); N must be at least 1")
        if n > 10_000_000:
            raise DiffsimError(f"{arg}: N = {n} points on one axis is more than 10⁷")
        return key, [lo] if n == 1 else np.linspace(lo, hi, n).tolist()
    items = [s.strip() for s in raw.split(",")]
    if any(not s for s in items):
        raise DiffsimError(f"{arg}: an empty value in the list; write KEY=v1,v2,…")
    vals = [parse_override(f"v={s}")[1] for s in items]
    for s, v in zip(items, vals):
        if isinstance(v, float) and not math.isfinite(v):
            raise DiffsimError(f"{arg}: value {s!r} must be a finite number")
    return key, vals


def parse_range(text: str, flag: str = "--random") -> tuple[str, float, float]:
    """'KEY=LO:HI' -> (KEY, LO, HI) with LO < HI (a uniform random axis, or bounds)."""
    arg = f"{flag} {text!r}"
    if "=" not in text or text.count(":") != 1:
        raise DiffsimError(f"{arg}: expected KEY=LO:HI (e.g. {flag} physics.wind_x=-10:10)")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key:
        raise DiffsimError(f"{arg}: the key is empty; expected KEY=LO:HI")
    lo, hi = (_number(s.strip(), arg, w) for s, w in zip(raw.split(":"), ("LO", "HI")))
    if not lo < hi:
        raise DiffsimError(f"{arg}: LO must be below HI")
    return key, lo, hi


def _schema(sc):
    from .scene import COMMON, kind_module
    return {**COMMON, **kind_module(sc.kind, sc.path).SCHEMA}


def resolve_axis(key, values, sc, params, arg) -> Axis:
    """Decide what ``key`` sets: a parameter of ``params`` (a Parameters) or a key of the
    scene ``sc``; check every value (numbers inside a parameter's bounds; a scene value
    by validating the scene with it). DiffsimError naming ``arg`` otherwise."""
    schema = _schema(sc)
    parts = key.split(".")
    in_schema = (len(parts) >= 2 and isinstance(schema.get(parts[0]), dict)
                 and parts[1] in schema[parts[0]])
    if key in params.index:
        kind, target = "param", key
    elif in_schema:
        kind, target = "scene", key
    elif len(parts) == 2 and parts[0] in schema and parts[1] in params.index:
        kind, target = "param", parts[1]          # physics.wind_x -> the parameter wind_x
    else:
        names = params.names
        shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
        raise DiffsimError(f"{arg}: unknown key {key!r}: neither a parameter of this scene "
                           f"({shown}) nor a scene key (section.name, e.g. "
                           f"{next((f'{s}.{k}' for s, v in schema.items() if isinstance(v, dict) for k in v), 'sim.dt')})")
    if kind == "param":
        p = params[target]
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise DiffsimError(f"{arg}: value {v!r} is not a number (parameter {target!r})")
            if not p.lower <= v <= p.upper:
                raise DiffsimError(f"{arg}: value {v!r} is outside the bounds "
                                   f"[{p.lower:g}, {p.upper:g}] of parameter {target!r}; widen "
                                   "them in the scene's [optimize] bounds (--set) if the model "
                                   "allows it")
            out.append(float(v))
        return Axis(key, target, kind, tuple(out), arg)
    for v in dict.fromkeys(map(repr, values)):    # each distinct value once
        try:
            scene_with(sc, {target: _unrepr(v, values)})
        except SceneError as e:
            raise DiffsimError(f"{arg}: {e}") from None
    return Axis(key, target, kind, tuple(values), arg)


def _unrepr(r, values):
    return next(v for v in values if repr(v) == r)


def scene_with(sc, overrides: dict):
    """A copy of the validated Scene ``sc`` with ``overrides`` (key -> value) applied and
    validated again as `--set` would (SceneError naming the file, key and value)."""
    from .scene import Scene, _apply_override, kind_module, validate
    if not overrides:
        return sc
    raw = copy.deepcopy(sc.data)
    for k, v in overrides.items():
        _apply_override(raw, k, v, sc.path)
    data = validate(raw, _schema(sc), sc.path)
    new = Scene(kind=sc.kind, name=sc.name, path=sc.path, description=data["description"], data=data)
    mod = kind_module(sc.kind, sc.path)
    if hasattr(mod, "check_scene"):
        try:
            mod.check_scene(new)
        except SceneError:
            raise
        except DiffsimError as e:
            raise SceneError(str(e), file=sc.path) from None
    return new


# -- the sweep's description, shipped to every worker -------------------------------------
@dataclasses.dataclass
class Spec:
    """Everything a worker needs to evaluate points (picklable: no Taichi objects)."""

    scene: object            # a validated diffsim.scene.Scene
    evaluation: str
    method: str | None
    iterations: int | None
    seed: int | None
    arch: str
    precision: str
    grad_names: list         # parameters whose gradient entries become columns
    free: list               # optimisable parameter names (optimize: their optima)
    warnings: bool = True

    def cache_key(self, scene) -> str:
        """Problems are shared between points whose scenes are equal after overrides."""
        blob = json.dumps([scene.data, self.arch, self.precision], sort_keys=True, default=repr)
        return hashlib.sha1(blob.encode()).hexdigest()


def _points(axes, random_axes, samples, starts, seed):
    """Point dicts in a fixed order: the grid product (first axis slowest) × random
    samples × starts."""
    grid = list(itertools.product(*[a.values for a in axes])) if axes else [()]
    rnd = [()]
    if random_axes:
        rng = np.random.default_rng(seed)
        u = rng.random((samples, len(random_axes)))
        rnd = [tuple(float(lo + (hi - lo) * u[i, j]) for j, (_, lo, hi) in enumerate(random_axes))
               for i in range(samples)]
    st = [None] if starts is None else list(enumerate(starts[1]))
    out = []
    for g, r, s in itertools.product(grid, rnd, st):
        inputs, scn, prm = {}, {}, {}
        for a, v in zip(axes + [ax for ax, _, _ in random_axes], g + r):
            inputs[a.key] = v
            (scn if a.kind == "scene" else prm)[a.target] = v
        p = {"index": len(out), "inputs": inputs, "scene": scn, "params": prm}
        if s is not None:
            k, x = s
            p["start"] = {"start": k, **{f"start.{n}": float(v) for n, v in zip(starts[0], x)}}
            p["params"] = {**dict(zip(starts[0], map(float, x))), **prm}
        out.append(p)
    return out


# -- evaluation (runs on the workers, or here for the serial loop) ------------------------
_LOCK = threading.Lock()     # one Taichi runtime per process: one evaluation at a time
_CACHE: dict = {}            # cache key -> (Problem, snapshot); most recent last
_MAX_CACHED = 8


def _snapshot(pb):
    """What a point may change on a Problem: parameter values and bounds (the cannon
    narrows an angle's bounds to its arc) and plain scalar attributes (flags such as
    "arcs prepared"). Restored before every point so its result does not depend on the
    points evaluated before it in the same process."""
    params = [(p.value, p.lower, p.upper, p.optimize) for p in pb.params.items]
    attrs = {k: v for k, v in vars(pb).items()
             if v is None or isinstance(v, (bool, int, float, str))}
    return params, attrs


def _restore(pb, snap):
    params, attrs = snap
    for p, (v, lo, hi, o) in zip(pb.params.items, params):
        p.value, p.lower, p.upper, p.optimize = v, lo, hi, o
    for k, v in attrs.items():
        setattr(pb, k, v)


def _problem(spec: Spec, scene_overrides: dict):
    from . import runtime
    from .scene import build
    runtime.init(arch=spec.arch, precision=spec.precision)
    sc = scene_with(spec.scene, scene_overrides)
    key = spec.cache_key(sc)
    if key in _CACHE:
        _CACHE[key] = _CACHE.pop(key)      # most recently used last
        return _CACHE[key]
    pb = build(sc)
    _CACHE[key] = (pb, _snapshot(pb))
    while len(_CACHE) > _MAX_CACHED:
        _CACHE.pop(next(iter(_CACHE)))
    return _CACHE[key]


def _flatten(d: dict, skip=("params", "history", "plots", "warnings", "message", "scene",
                            "objective", "status")) -> dict:
    """Scalar columns from a summary/report: numbers, bools, short strings, small
    arrays as name[i]; dicts of numbers as name.key; everything else left out."""
    out = {}
    for k, v in d.items():
        if k in skip:
            continue
        if isinstance(v, dict):
            if len(v) <= MAX_ARRAY_COLUMNS and all(isinstance(e, (int, float)) for e in v.values()):
                out.update({f"{k}.{kk}": _scalar(e) for kk, e in v.items()})
            continue
        if isinstance(v, (list, tuple, np.ndarray)):
            a = np.asarray(v)
            if a.ndim == 1 and 0 < a.size <= MAX_ARRAY_COLUMNS and a.dtype.kind in "biuf":
                out.update({(k if a.size == 1 else f"{k}[{i}]"): _scalar(e) for i, e in enumerate(a)})
            continue
        if isinstance(v, (bool, int, float, np.generic)) or (isinstance(v, str) and len(v) <= 80):
            out[k] = _scalar(v)
    return out


def _scalar(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    return v


def _evaluate(spec: Spec, point: dict, worker: str, problem=None) -> dict:
    """One row: the point's inputs, then status, objective, error, warnings, the
    evaluation's outputs, seconds and worker."""
    t0 = time.perf_counter()
    row = {"point": point["index"], **point["inputs"], **point.get("start", {})}
    fail = None
    try:
        if problem is not None:
            pb, snap = problem
        else:
            pb, snap = _problem(spec, point["scene"])
        _restore(pb, snap)
        x = pb.params.vector
        for n, v in point["params"].items():
            x[pb.params.index[n]] = v
        ws = []
        if spec.evaluation == "run":
            s = pb.summary(x)
            row.update(status="ok", objective=float(s["objective"]))
            ws = list(s.get("warnings", [])) if "warnings" in s else (
                pb.warnings(x) if spec.warnings else [])
            row.update(_flatten(s))
        elif spec.evaluation == "grad":
            f, g = pb.value_and_grad(x, spec.method)
            row.update(status="ok", objective=float(f))
            for n in spec.grad_names:
                row[f"grad.{n}"] = float(g[pb.params.index[n]])
            free = pb.params.free
            row["grad_norm"] = float(np.linalg.norm(g[free] if free.any() else g))
            if spec.warnings:
                ws = pb.warnings(x)
        else:
            pb.set(x)
            r = pb.run_optimization(iterations=spec.iterations, method=spec.method,
                                    seed=spec.seed, out=None, progress=False, plots=False)
            row.update(status=str(r.get("status")), objective=float(r.get("objective", math.nan)))
            if r.get("message"):
                row["message"] = str(r["message"])
            ws = list(r.get("warnings", []))
            row.update(_flatten(r))
            xs = r.get("params", {})
            for n in spec.free:
                if n in xs:
                    row[f"opt.{n}"] = float(xs[n])
        if ws:
            row["warnings"] = " | ".join(map(str, ws))
    except DiffsimError as e:          # a blow-up, a NaN gradient, a bad scene value
        fail = str(e)
    except Exception as e:             # a defect or a Taichi error: record it, drop the
        fail = f"{type(e).__name__}: {e}"   # Problem (its state may be broken)
        if problem is None:
            try:
                _CACHE.pop(spec.cache_key(scene_with(spec.scene, point["scene"])), None)
            except DiffsimError:
                pass
    if fail is not None:
        row = {k: v for k, v in row.items() if k in ("point", *point["inputs"], *point.get("start", {}))}
        row.update(status="failed", objective=math.nan, error=fail)
    row["seconds"] = time.perf_counter() - t0
    row["worker"] = worker
    return row


def run_chunk(spec: Spec, points: list) -> list:
    """Evaluate ``points`` in this (worker) process; the function Dask runs."""
    try:
        from distributed import get_worker
        worker = get_worker().address
    except (ImportError, ValueError):
        worker = f"pid{os.getpid()}"
    with _LOCK:
        return [_evaluate(spec, p, worker) for p in points]


#: set in a process that starts a cluster; a worker forked from it would inherit it
_STARTED_CLUSTER_IN = None


def _worker_state():
    """(pid, the inherited start mark, Taichi runtimes initialised by diffsim) of a worker
    process: a spawned worker has no mark (a forked one would carry the client's) and,
    before its first point, no runtime."""
    from . import runtime
    return os.getpid(), _STARTED_CLUSTER_IN, runtime._generation


# -- results: journal and table ---------------------------------------------------------------
class Journal:
    """``points.jsonl``: a header line (format and the sweep's fingerprint), then one row a
    line, appended and flushed as each point finishes."""

    def __init__(self, folder, fingerprint, n_points, resume):
        self.path = pathlib.Path(folder) / JOURNAL
        self.rows: dict[int, dict] = {}
        header = {"diffsim_sweep": FORMAT, "fingerprint": fingerprint, "points": n_points}
        if self.path.exists() and self.path.stat().st_size:
            if not resume:
                raise DiffsimError(f"{self.path} holds the results of a sweep; pass --resume "
                                   "to run only its missing points, or choose a fresh --out")
            self._read(fingerprint)
            self.fh = open(self.path, "a", encoding="utf-8")
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "w", encoding="utf-8")
            self._write(header)
        self._synced = time.monotonic()

    def _read(self, fingerprint):
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            head = json.loads(lines[0])
        except (json.JSONDecodeError, IndexError):
            head = {}
        if head.get("diffsim_sweep") != FORMAT:
            raise DiffsimError(f"{self.path}: not a diffsim sweep journal (format {FORMAT}); "
                               "choose a fresh --out")
        if head.get("fingerprint") != fingerprint:
            raise DiffsimError(f"{self.path}: these results are from a different sweep (scene, "
                               "axes, evaluation or seed differ); --resume continues only the "
                               "same sweep; choose a fresh --out")
        good = 1
        for i, line in enumerate(lines[1:], 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:      # a row torn by a kill: that point runs again
                    break
                raise DiffsimError(f"{self.path}: line {i + 1} is not valid JSON; the journal "
                                   "is damaged; choose a fresh --out") from None
            self.rows[int(r["point"])] = r
            good = i + 1
        if good < len(lines):                # drop the torn tail before appending
            with open(self.path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(lines[:good]) + "\n")

    def _write(self, obj):
        self.fh.write(json.dumps(obj, allow_nan=True) + "\n")
        self.fh.flush()

    def add(self, row):
        self.rows[int(row["point"])] = row
        self._write(row)
        if time.monotonic() - self._synced > 1.0:    # flushed always; on disk each second
            os.fsync(self.fh.fileno())
            self._synced = time.monotonic()

    def close(self):
        if not self.fh.closed:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()


def _columns(rows, first):
    cols = list(LEAD) + [c for c in first if c not in LEAD]
    seen = set(cols)
    rest = sorted({k for r in rows for k in r} - seen - set(TAIL_FIRST) - set(TAIL_LAST))
    return cols + list(TAIL_FIRST) + rest + list(TAIL_LAST)


def table(rows, first=()):
    """Rows (dicts) -> a pandas.DataFrame ordered by point (columns: point, inputs, status,
    objective, error, warnings, the rest sorted, seconds, worker); a numpy structured
    array when pandas is missing."""
    rows = sorted(rows, key=lambda r: r["point"])
    cols = _columns(rows, first)
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)
        for c in ("error", "warnings"):
            df[c] = df[c].fillna("").astype(str)
        return df
    dtypes = []
    for c in cols:
        vals = [r.get(c) for r in rows]
        present = [v for v in vals if v is not None]
        if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            dtypes.append((c, np.int64 if all(isinstance(v, int) for v in vals) else np.float64))
        elif present and all(isinstance(v, bool) for v in present) and len(present) == len(vals):
            dtypes.append((c, np.bool_))
        else:
            dtypes.append((c, object))
    arr = np.empty(len(rows), dtype=dtypes)
    for c, t in dtypes:
        fill = math.nan if t is np.float64 else ("" if t is object else 0)
        arr[c] = [fill if r.get(c) is None else r.get(c) for r in rows]
    return arr


def write_table(tab, folder) -> list[pathlib.Path]:
    """results.csv (and results.parquet when pyarrow is installed) in ``folder``."""
    folder = pathlib.Path(folder)
    out = [folder / "results.csv"]
    tmp = folder / ".results.csv.tmp"
    if hasattr(tab, "to_csv"):
        tab.to_csv(tmp, index=False)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            pass
        else:
            tab.to_parquet(folder / "results.parquet", index=False)
            out.append(folder / "results.parquet")
    else:
        import csv
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(tab.dtype.names)
            w.writerows(tab.tolist())
    os.replace(tmp, out[0])
    return out


# -- engines -------------------------------------------------------------------------------
class Interrupted(Exception):
    """The sweep stopped early (Ctrl-C, or the scheduler went away): ``reason``; ``table``
    holds the points finished before (they are in the journal too)."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def local_cluster(workers: int):
    """An embedded LocalCluster of ``workers`` single-threaded worker processes, started
    by spawn (a fresh interpreter each, with one Taichi CPU thread: the processes are the
    parallelism). Returns (cluster, client)."""
    import logging
    import dask
    from distributed import Client, LocalCluster
    global _STARTED_CLUSTER_IN
    _STARTED_CLUSTER_IN = os.getpid()
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn",
                          "distributed.scheduler.worker-ttl": None}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR,
                               env={"TI_CPU_MAX_NUM_THREADS": "1",
                                    "ENABLE_TAICHI_HEADER_PRINT": "False"})
        return cluster, Client(cluster)


def connect(address: str, timeout=10):
    """A Client on the scheduler at ``address`` (DiffsimError, exit 2, if unreachable)."""
    from distributed import Client
    try:
        return Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise DiffsimError(f"--scheduler {address}: cannot reach the scheduler ({e}); check "
                           "the address (tcp://HOST:PORT) and that it is running") from None


def _run_serial(spec, todo, record, problem=None):
    for p in todo:
        with _LOCK:
            record(_evaluate(spec, p, "serial", problem))


def _run_dask(spec, todo, record, client, chunk, max_tries=3, gone_after=20.0):
    try:
        _dask_loop(spec, todo, record, client, chunk, max_tries, gone_after)
    except (Interrupted, KeyboardInterrupt):
        raise
    except Exception as e:     # the client or its connection failed (e.g. ClosedClientError)
        raise Interrupted(f"the cluster connection failed ({type(e).__name__}: {e})") from None


def _dask_loop(spec, todo, record, client, chunk, max_tries, gone_after):
    from distributed import wait
    token = hashlib.sha1(os.urandom(8)).hexdigest()[:10]
    # the spec (a few kB) travels with each task: scattered data would be lost with a
    # client.restart() and take every resubmitted task with it
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    pending, tries, serial = {}, {}, itertools.count()

    def submit(pts):
        cid = next(serial)
        f = client.submit(run_chunk, spec, pts, key=f"diffsim-sweep-{token}-{cid}",
                          pure=False, retries=0)
        pending[f] = pts
        return f

    for c in chunks:
        submit(c)
    lost_since = None
    while pending:
        try:
            done, _ = wait(list(pending), timeout=1.0, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = ()
        except Exception:      # wait() raises when futures were cancelled (client.restart)
            done = [f for f in pending if f.status in ("finished", "error", "cancelled", "lost")]
        if client.status != "running":
            # the scheduler is gone (or restarting): tasks it cancelled are not a point's
            # fault; wait for the client to reconnect, resubmit then, or give up
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > gone_after:
                raise Interrupted(f"the scheduler went away (client status {client.status})")
            time.sleep(0.5)
            continue
        lost_since = None
        if not done:
            continue
        for f in done:
            pts = pending.pop(f)
            if f.status == "finished":
                try:
                    rows = f.result()
                except Exception as e:    # the result itself was lost with its worker
                    rows, f_exc = None, e
                if rows is not None:
                    for r in rows:
                        record(r)
                    continue
            else:
                try:
                    f_exc = f.exception()
                except Exception as e:    # cancelled (client.restart): no exception to read
                    f_exc = e
            ids = tuple(p["index"] for p in pts)
            tries[ids] = tries.get(ids, 0) + 1
            if tries[ids] < max_tries:
                if len(pts) > 1 and "KilledWorker" in type(f_exc).__name__:
                    for p in pts:      # one bad point must not take its chunk with it
                        submit([p])
                else:
                    submit(pts)
            else:
                why = f"{type(f_exc).__name__}: {f_exc}"
                for p in pts:
                    record({"point": p["index"], **p["inputs"], **p.get("start", {}),
                            "status": "failed", "objective": math.nan,
                            "error": f"lost {max_tries} times on the cluster ({why})",
                            "seconds": math.nan, "worker": ""})


# -- the public entry point ------------------------------------------------------------------
def sweep(problem_or_scene, grid=None, client=None, *, evaluation="grad", random=None,
          samples=0, multistart=0, bounds=None, method=None, iterations=None, seed=0,
          overrides=None, workers=0, scheduler=None, chunk=None, out=None, resume=False,
          progress=False, warnings=True, arch="cpu", precision="f64", report=None):
    """Evaluate a scene at many points; returns the results table (a pandas.DataFrame,
    or a numpy structured array without pandas), one row per point ordered by point.

    problem_or_scene: a bundled scene name, a .toml path, a loaded Scene, or a built
    Problem (scene-key axes and distributed runs need its ``scene``). grid: a dict
    key -> values, or a list of ``"KEY=LO:HI:N"`` / ``"KEY=v1,v2"`` strings; the product
    of the axes is swept. random: dict key -> (lo, hi) or ``"KEY=LO:HI"`` strings, sampled
    ``samples`` times with ``seed``. multistart: optimise from this many starts drawn in
    the optimisable parameters' bounds (``bounds``: name -> (lo, hi) replaces them).
    evaluation: "run", "grad" (default) or "optimize" (implied by multistart).

    Engine: ``client`` (a distributed.Client), else ``scheduler`` (an address), else
    ``workers`` > 0 local worker processes, else (default) a loop in this process.
    chunk: points per Dask task (default: about four tasks per worker, at most 32 points).
    out: a folder that receives points.jsonl (every finished point, at once) and
    results.csv; resume=True runs only the points it is missing.
    report: a dict that receives facts about the run (points, failed, skipped, engine,
    seconds, files).

    Raises DiffsimError for a malformed grid (naming it) and :class:`Interrupted` (after
    saving every finished point) when stopped by Ctrl-C or a lost scheduler.
    """
    from . import runtime
    from .problem import Problem
    from .scene import Scene, load, parse_override
    report = {} if report is None else report
    if evaluation not in EVALUATIONS:
        raise DiffsimError(f"evaluation={evaluation!r}: use one of {', '.join(EVALUATIONS)}")
    if multistart:
        if evaluation not in ("optimize", "grad"):
            raise DiffsimError(f"--multistart optimises from each start; it cannot be combined "
                               f"with --eval {evaluation}")
        evaluation = "optimize"
    given_pb = None
    if isinstance(problem_or_scene, Problem):
        given_pb = problem_or_scene
        sc = getattr(given_pb, "scene", None)
    elif isinstance(problem_or_scene, Scene):
        sc = problem_or_scene
    else:
        sc = load(problem_or_scene)
    if sc is not None and overrides:
        ov = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
        sc = scene_with(sc, dict(ov))
        given_pb = None
    runtime.init(arch=arch, precision=precision)
    if given_pb is None:
        pb_local = _problem(Spec(sc, evaluation, method, iterations, seed, arch, precision, [], []), {})
    else:
        pb_local = (given_pb, _snapshot(given_pb))
    _restore(*pb_local)      # an earlier sweep's optimisations may have narrowed bounds
    params = pb_local[0].params

    def items(g, parse):
        if g is None:
            return []
        if isinstance(g, dict):
            return [(k, v, f"{k}={v!r}") for k, v in g.items()]
        return [(*parse(t), t) for t in g]

    axes = []
    for key, vals, text in items(grid, parse_grid):
        arg = f"--grid {text!r}"
        vals = list(np.atleast_1d(np.asarray(vals, dtype=object)).tolist()) if not isinstance(vals, list) else vals
        if not vals:
            raise DiffsimError(f"{arg}: zero points")
        if sc is None and key not in params.index:
            raise DiffsimError(f"{arg}: this Problem has no scene; only its parameters "
                               f"({', '.join(params.names)}) can be swept")
        axes.append(resolve_axis(key, vals, sc, params, arg) if sc is not None else
                    Axis(key, key, "param", tuple(map(float, vals)), arg))
    rnd = []
    for item in (random.items() if isinstance(random, dict) else (random or [])):
        if isinstance(item, str):
            key, lo, hi = parse_range(item)
            text = item
        else:
            key, (lo, hi) = item
            text = f"{key}={lo}:{hi}"
        ax = resolve_axis(key, [lo, hi], sc, params, f"--random {text!r}")
        if ax.kind != "param":
            raise DiffsimError(f"--random {text!r}: random axes vary parameters; {key!r} is a "
                               "scene key (each value would compile the scene again); use --grid")
        rnd.append((ax, lo, hi))
    if rnd and not samples:
        raise DiffsimError("--random needs --samples N (how many random points)")
    keys = [a.key for a in axes] + [a.key for a, _, _ in rnd]
    if len(set(keys)) != len(keys):
        raise DiffsimError(f"the key {next(k for k in keys if keys.count(k) > 1)!r} is swept twice")
    free = [n for n, f in zip(params.names, params.free) if f]
    starts = None
    if multistart:
        if not free:
            raise DiffsimError("--multistart: the scene marks no parameter as optimisable "
                               "(optimize.params)")
        los, his = [], []
        bnd = {}
        for item in (bounds.items() if isinstance(bounds, dict) else (bounds or [])):
            k, lo, hi = parse_range(item, "--bounds") if isinstance(item, str) else (item[0], *item[1])
            if k not in free:
                raise DiffsimError(f"--bounds {k}: not an optimisable parameter; those are "
                                   f"{', '.join(free)}")
            bnd[k] = (lo, hi)
        for n in free:
            lo, hi = bnd.get(n, (params[n].lower, params[n].upper))
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise DiffsimError(f"--multistart: parameter {n!r} has no finite bounds to draw "
                                   f"starts in; give them with --bounds {n}=LO:HI")
            los.append(lo), his.append(hi)
        rng = np.random.default_rng(np.random.SeedSequence([seed or 0, 1]))
        lo_a, hi_a = np.array(los), np.array(his)
        starts = (free, lo_a + (hi_a - lo_a) * rng.random((multistart, len(free))))
    swept = [a.target for a in axes if a.kind == "param"] + [a.target for a, _, _ in rnd]
    grad_names = (params.names if len(params) <= MAX_GRAD_COLUMNS else
                  list(dict.fromkeys(swept + free)))
    spec = Spec(sc, evaluation, method, iterations, seed, arch, precision, grad_names, free, warnings)
    points = _points(axes, rnd, samples, starts, seed)
    first = keys + (["start"] + [f"start.{n}" for n in free] if starts is not None else [])
    fingerprint = hashlib.sha1(json.dumps(
        [sc.data if sc is not None else params.names, evaluation, method, iterations, seed,
         [[a.key, list(a.values)] for a in axes], [[a.key, lo, hi] for a, lo, hi in rnd],
         samples, None if starts is None else starts[1].tolist(), grad_names],
        sort_keys=True, default=repr).encode()).hexdigest()
    journal = Journal(out, fingerprint, len(points), resume) if out is not None else None
    rows = dict(journal.rows) if journal else {}
    todo = [p for p in points if p["index"] not in rows]
    report.update(points=len(points), skipped=len(points) - len(todo), axes=keys,
                  evaluation=evaluation, free=free, multistart=multistart,
                  grid=[{"key": a.key, "kind": a.kind, "target": a.target,
                         "values": list(a.values)} for a in axes])
    bar = _Bar(len(points), len(rows), sum(r.get("status") == "failed" for r in rows.values()),
               progress)

    def record(row):
        rows[row["point"]] = row
        if journal:
            journal.add(row)
        bar.update(row.get("status") == "failed")

    own = None
    t0 = time.perf_counter()
    stop = None
    try:
        if client is None and scheduler:
            client = own = connect(scheduler)
        elif client is None and workers:
            cl, client = local_cluster(workers)
            own = (cl, client)
        if client is None:
            report["engine"] = "serial"
            _run_serial(spec, todo, record, None if given_pb is None else pb_local)
        else:
            if sc is None:
                raise DiffsimError("a distributed sweep needs a scene (name, path or Scene), "
                                   "not a bare Problem: workers build their own")
            nw = max(1, len(client.scheduler_info().get("workers", {})))
            report["engine"] = f"dask ({nw} worker{'s' * (nw != 1)})"
            report["workers"] = nw
            ch = chunk or max(1, min(32, len(todo) // (4 * nw)))
            _run_dask(spec, todo, record, client, ch)
    except KeyboardInterrupt:
        stop = "interrupted (Ctrl-C)"
    except Interrupted as e:
        stop = e.reason
    finally:
        bar.close()
        if journal:
            journal.close()
        _restore(*pb_local)
        if own is not None:
            _close(own)
    report["seconds"] = time.perf_counter() - t0
    tab = table(list(rows.values()), first)
    report["done"] = len(rows)
    report["failed"] = int(sum(r.get("status") == "failed" for r in rows.values()))
    if out is not None:
        report["files"] = [str(p) for p in write_table(tab, out)]
    if stop:
        report["stopped"] = stop
        e = Interrupted(stop)
        e.table = tab
        raise e
    return tab


def _close(own):
    try:
        if isinstance(own, tuple):
            own[1].close()
            own[0].close()
        else:
            own.close()
    except Exception:    # a dead scheduler cannot be closed politely; nothing is lost
        pass


class _Bar:
    """Progress on stderr: points done, failed and remaining (tqdm)."""

    def __init__(self, total, done, failed, enabled):
        self.failed, self.bar = failed, None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="pt", file=sys.stderr,
                            dynamic_ncols=True, leave=True)
            self._post()

    def _post(self, coming=0):
        self.bar.set_postfix({"failed": self.failed,
                              "remaining": self.bar.total - self.bar.n - coming}, refresh=False)

    def update(self, failed):
        self.failed += bool(failed)
        if self.bar is not None:
            self._post(1)          # shown by the update's own refresh
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- plots ----------------------------------------------------------------------------------------
def _col(tab, c):
    v = tab[c]
    return v.to_numpy() if hasattr(v, "to_numpy") else np.asarray(v)


def _numeric_axes(rep):
    return [a for a in rep.get("grid", []) if len(a["values"]) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in a["values"])]


def _others_mask(tab, axes, keep):
    """Rows whose grid values on every axis not in ``keep`` are that axis's middle value."""
    m = np.ones(len(tab), dtype=bool)
    for a in axes:
        if a["key"] in keep:
            continue
        mid = a["values"][len(a["values"]) // 2]
        m &= _col(tab, a["key"]) == mid
    return m


def gradient_consistency(x, f, g):
    """Worst disagreement between the gradient ``g`` and the sweep's own central
    differences d_i = (f[i+1] − f[i−1]) / (x[i+1] − x[i−1]) at interior points, as
    max_i |d_i − g_i| / max_i |d_i| (relative to the steepest slope along the axis, so a
    stationary point does not divide by zero). On a fine grid a large value flags a wrong
    gradient or a kink; the grid's own error is O(h² f‴). NaN with fewer than 3 usable points."""
    x, f, g = (np.asarray(v, dtype=float) for v in (x, f, g))
    ok = np.isfinite(f) & np.isfinite(g)
    i = np.arange(1, len(x) - 1)
    i = i[ok[i - 1] & ok[i] & ok[i + 1]] if len(i) else i
    if not len(i):
        return math.nan
    d = (f[i + 1] - f[i - 1]) / (x[i + 1] - x[i - 1])
    scale = max(float(np.max(np.abs(d))), 1e-300)
    return float(np.max(np.abs(d - g[i])) / scale)


def plots(tab, rep, out) -> list:
    """Write the sweep's figures under ``out`` and return their paths:
    sweep_heatmap.png (objective over the first two grid axes; the minimum over any
    other axes), sweep_objective.png (objective along the first parameter axis, the
    gradient drawn as tangent ticks, others at their middle value) and
    sweep_optima.png (multi-start: where the starts went). Sets
    ``rep["gradient_consistency"]`` when gradients are drawn. The arrays come from
    :func:`figure_data`; :mod:`diffsim.plots.sweep` draws them."""
    from .plots import sweep as draw
    return draw.write(figure_data(tab, rep), out)


def figure_data(tab, rep) -> dict:
    """What the sweep's figures show, as arrays (no drawing):
    ``heatmap`` (keys xa, xb, Z (len(xb), len(xa)), a, b, more_axes) when there are
    two numeric axes; ``line`` (key, target, x, f, g or None, worst, others) along the
    first parameter axis; ``optima`` (per free name: starts and optima, the objective
    at the optimum, status counts, n) for a multi-start. Sets
    ``rep["gradient_consistency"]`` when the line has gradients."""
    data = {}
    axes = _numeric_axes(rep)
    f_all = np.asarray(_col(tab, "objective"), dtype=float)
    if len(axes) >= 2:
        a, b = axes[0], axes[1]
        xa, xb = np.asarray(a["values"], float), np.asarray(b["values"], float)
        Z = np.full((len(xb), len(xa)), np.nan)
        ca, cb = _col(tab, a["key"]), _col(tab, b["key"])
        for i, va in enumerate(xa):
            for j, vb in enumerate(xb):
                sel = (ca == va) & (cb == vb) & np.isfinite(f_all)
                if sel.any():
                    Z[j, i] = np.min(f_all[sel])
        data["heatmap"] = dict(xa=xa, xb=xb, Z=Z, a=a["key"], b=b["key"], more_axes=len(axes) > 2)
    line = next((a for a in axes if a["kind"] == "param"), axes[0] if axes else None)
    sel = _others_mask(tab, axes, {line["key"]}) if line is not None else None
    if line is not None and np.sum(np.isfinite(f_all[sel])) < 2:
        line = None              # an interrupted sweep may not have reached this slice
    if line is not None:
        x = np.asarray(_col(tab, line["key"]), float)[sel]
        f = f_all[sel]
        order = np.argsort(x, kind="stable")
        x, f = x[order], f[order]
        gcol = f"grad.{line['target']}"
        g = (np.asarray(_col(tab, gcol), float)[sel][order]
             if line["kind"] == "param" and _has(tab, gcol) else None)
        worst = math.nan
        if g is not None:
            worst = gradient_consistency(x, f, g)
            rep["gradient_consistency"] = {"axis": line["key"], "worst_relative_difference": worst}
        data["line"] = dict(key=line["key"], target=line["target"], x=x, f=f, g=g, worst=worst,
                            others=[a["key"] for a in axes if a["key"] != line["key"]])
    if rep.get("multistart"):
        free = [n for n in rep.get("free", []) if _has(tab, f"opt.{n}")][:4]
        st = _col(tab, "status")
        data["optima"] = dict(
            starts={n: np.asarray(_col(tab, f"start.{n}"), float) for n in free},
            optima={n: np.asarray(_col(tab, f"opt.{n}"), float) for n in free},
            objective=f_all[np.isfinite(f_all)],
            status={k: int(np.sum(st == k)) for k in dict.fromkeys(st.tolist())},
            n=len(tab))
    return data


def _has(tab, c):
    return c in (tab.columns if hasattr(tab, "columns") else tab.dtype.names)
