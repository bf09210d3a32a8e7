"""Sweeps: serial equals distributed, a killed worker loses no point, resume runs only the
missing points, malformed grids are refused naming the argument.

One LocalCluster of 2 worker processes is shared by the module (starting it and importing
Taichi in each worker takes seconds); the test that kills a worker runs last.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

sw = importlib.import_module("diffsim.sweep")   # the module; diffsim.sweep is the function
from diffsim.cli import main               # noqa: E402

GRID = ["wind_x=-10:10:6", "angle=0.2:1.0:4"]
# the cannon's target can be hit on a low and on a high arc: starts split between them
MULTI = dict(multistart=6, overrides=["target.arc=any", "optimize.optimizer=lbfgs",
                                      "optimize.iterations=30"])


def _same(a, b):
    """Tables equal apart from where and how long each point ran."""
    a, b = (t.drop(columns=["seconds", "worker"]) for t in (a, b))
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True),
                                  check_exact=True)


@pytest.fixture(scope="module")
def client():
    cluster, client = sw.local_cluster(2)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_workers_are_spawned_fresh(client):
    """Taichi in a forked process is unsafe: the workers must be fresh interpreters (no
    mark inherited from this process, no Taichi runtime before their first point)."""
    import dask
    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"
    states = client.run(sw._worker_state)
    assert len(states) == 2
    for pid, mark, generation in states.values():
        assert pid != os.getpid()
        assert mark is None             # a fork would carry sw._STARTED_CLUSTER_IN
        assert generation == 0
    assert sw._STARTED_CLUSTER_IN == os.getpid()


def test_distributed_equals_serial(client):
    serial = sw.sweep("cannon", GRID)
    rep = {}
    dist = sw.sweep("cannon", GRID, client=client, chunk=3, report=rep)
    assert rep["engine"] == "dask (2 workers)"
    assert len(dist) == 24 and (dist.status == "ok").all()
    assert dist.worker.nunique() == 2          # both workers took points
    _same(serial, dist)
    # the gradient column is the gradient: central differences along the (smooth) wind
    # axis of the table agree with it to the grid's O(h²)
    for angle in serial.angle.unique():
        s = serial[serial.angle == angle]
        x, f, g = s.wind_x.to_numpy(), s.objective.to_numpy(), s["grad.wind_x"].to_numpy()
        assert sw.gradient_consistency(x, f, g) < 0.03
        assert sw.gradient_consistency(x, f, 1.3 * g) > 0.2     # the check can fail


def test_multistart_distributed_equals_serial(client, tmp_path):
    """Optimisations change their Problem (the cannon narrows the angle's bounds to an
    arc): each point must start from the built state, wherever it runs."""
    serial = sw.sweep("cannon", None, **MULTI)
    dist = sw.sweep("cannon", None, client=client, chunk=1, **MULTI)
    _same(serial, dist)
    # both arcs found: the starts split between the low (0.40 rad) and high (1.09 rad) hits
    assert set(serial.status) == {"converged"}
    assert set(serial["opt.angle"].round(2)) == {0.40, 1.09}
    rep = {"multistart": 6, "free": ["angle", "speed"]}
    d = sw.figure_data(serial, rep)["optima"]
    assert d["n"] == 6 and d["status"] == {"converged": 6}
    np.testing.assert_array_equal(d["optima"]["angle"], serial["opt.angle"])
    assert [p.name for p in sw.plots(serial, rep, tmp_path)] == ["sweep_optima.png"]
    # an optimisation on the low arc narrows this process's Problem's angle bounds to
    # below ~0.77 rad while it runs; the next sweep sees the scene's bounds again
    low = ["optimize.iterations=2"]
    sw.sweep("cannon", None, multistart=1, overrides=low)
    assert list(sw.sweep("cannon", ["angle=1.2"], overrides=low).status) == ["ok"]


def test_resume_runs_only_missing_points(tmp_path, monkeypatch):
    full = sw.sweep("cannon", GRID)
    calls = []
    real = sw._evaluate

    def flaky(spec, point, worker, problem=None):
        calls.append(point["index"])
        if len(calls) == 10:
            raise KeyboardInterrupt      # Ctrl-C in the middle of the sweep
        return real(spec, point, worker, problem)

    monkeypatch.setattr(sw, "_evaluate", flaky)
    out = tmp_path / "s"
    assert main(["sweep", "cannon", *sum((["--grid", g] for g in GRID), []), "--workers", "0",
                 "--out", str(out), "--no-plot", "--json"]) == 130
    rows = (out / sw.JOURNAL).read_text().splitlines()
    assert len(rows) == 1 + 9                     # header + the 9 finished points
    with open(out / sw.JOURNAL, "a") as fh:       # a row torn by a kill: runs again
        fh.write('{"point": 9, "wind_x": ')
    counted = []
    monkeypatch.setattr(sw, "_evaluate", lambda *a, **k: counted.append(a[1]["index"]) or real(*a, **k))
    # without --resume the finished points are not overwritten
    assert main(["sweep", "cannon", *sum((["--grid", g] for g in GRID), []), "--workers", "0",
                 "--out", str(out), "--no-plot"]) == 2
    assert counted == []
    assert main(["sweep", "cannon", *sum((["--grid", g] for g in GRID), []), "--workers", "0",
                 "--out", str(out), "--no-plot", "--resume", "--json"]) == 0
    assert counted == list(range(9, 24))
    counted.clear()
    _same(full, sw.sweep("cannon", GRID, out=out, resume=True))   # all read back, none run
    assert counted == []
    # a different sweep in the same folder is refused, not mixed in
    assert main(["sweep", "cannon", "--grid", "wind_x=0:1:3", "--workers", "0",
                 "--out", str(out), "--no-plot", "--resume"]) == 2


@pytest.mark.parametrize("grid, words", [
    ("wind_x=1:2", "LO:HI:N"),
    ("wind_x=0:1:0", "zero points"),
    ("wind_x=", "zero points"),
    ("physics.nonsense=1:2:3", "unknown key"),
    ("wind_x=abc", "not a number"),
    ("wind_x=1,,2", "empty value"),
    ("physics.drag=-1,0.1", "physics.drag"),       # a scene value out of its range
    ("wind_x=-1e3:0:3", "outside the bounds"),
])
def test_malformed_grid_exit_2(grid, words, capsys):
    assert main(["sweep", "cannon", "--grid", grid, "--workers", "0", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert f"--grid {grid!r}" in err and words in err
    assert "Traceback" not in err


def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """A blow-up (SimulationError) and a defect (any other exception) at one point each:
    both recorded with their reason, the other points run."""
    from diffsim.errors import SimulationError
    from diffsim.tasks.cannon import CannonProblem
    real = CannonProblem._value_and_grad

    def vg(self, x, method):
        a = x[self.params.index["angle"]]
        if a == 0.5:
            raise SimulationError("the flight blew up (NaN) at t = 1.2 s")
        if a == 0.9:
            raise RuntimeError("a defect")
        return real(self, x, method)

    monkeypatch.setattr(CannonProblem, "_value_and_grad", vg)
    rep = {}
    t = sw.sweep("cannon", ["angle=0.3,0.5,0.7,0.9"], out=tmp_path, report=rep)
    assert list(t.status) == ["ok", "failed", "ok", "failed"]
    assert "blew up" in t.error[1] and t.error[3] == "RuntimeError: a defect"
    assert np.isnan(t.objective[[1, 3]]).all() and np.isfinite(t.objective[[0, 2]]).all()
    assert rep["failed"] == 2 and (tmp_path / "results.csv").exists()
    assert rep["done"] == 4


def test_plots_and_numpy_table(tmp_path, monkeypatch):
    rep = {}
    t = sw.sweep("cannon", GRID, report=rep)
    paths = sw.plots(t, rep, tmp_path)
    assert sorted(p.name for p in paths) == ["sweep_heatmap.png", "sweep_objective.png"]
    assert rep["gradient_consistency"]["axis"] == "wind_x"
    monkeypatch.setitem(__import__("sys").modules, "pandas", None)
    arr = sw.table([{"point": 1, "objective": 2.0, "status": "ok"},
                    {"point": 0, "objective": math.nan, "status": "failed", "error": "x"}])
    assert isinstance(arr, np.ndarray) and list(arr["point"]) == [0, 1]
    assert arr.dtype["objective"] == np.float64 and arr["error"][1] == ""


def test_public_api_on_a_problem():
    """diffsim.sweep on a built Problem sweeps its parameters in this process and leaves
    the Problem as it was."""
    import diffsim
    pb = diffsim.build("cannon")
    before = pb.params.vector.copy()
    t = diffsim.sweep(pb, {"wind_x": [-2.0, 0.0, 2.0]}, evaluation="grad")
    assert isinstance(t, pd.DataFrame) and list(t.wind_x) == [-2.0, 0.0, 2.0]
    x = before.copy()
    x[pb.params.index["wind_x"]] = 2.0
    f, g = pb.value_and_grad(x)
    assert t.objective[2] == f and t["grad.angle"][2] == g[pb.params.index["angle"]]
    np.testing.assert_array_equal(pb.params.vector, before)


def test_killed_worker_and_restart_lose_no_point(client, tmp_path):
    """client.restart() (every task cancelled) and then SIGKILL of one worker, both while
    the sweep runs: the points run again elsewhere, none is lost or duplicated."""
    grid = ["wind_x=-10:10:30", "angle=0.2:1.0:10"]
    serial = sw.sweep("cannon", grid)         # also builds the scene in this process
    res = {}

    def run():
        try:
            res["table"] = sw.sweep("cannon", grid, client=client, chunk=1, out=tmp_path)
        except BaseException as e:  # noqa: BLE001 - reported below
            res["error"] = e

    journal = tmp_path / sw.JOURNAL

    def finished():
        return len(journal.read_text().splitlines()) - 1 if journal.exists() else 0

    def worked(addr):
        lines = journal.read_text().splitlines()[1:] if journal.exists() else []
        return any(json.loads(r).get("worker") == addr for r in lines if r.endswith("}"))

    def wait_for(n, worker=None):
        # worker: also wait until that worker has finished a point (on a loaded machine
        # one restarted worker may compile its kernels later and the other take them all)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and th.is_alive() and (
                finished() < n or (worker is not None and not worked(worker))):
            time.sleep(0.005)
        assert th.is_alive(), res.get("error") or "the sweep ended before the disruption"
        return finished()

    th = threading.Thread(target=run)
    th.start()
    at_restart = wait_for(20)
    client.restart()                          # cancels every pending task
    pids = client.run(os.getpid)
    victim_addr, victim = next(iter(pids.items()))
    at_kill = wait_for(at_restart + 10, victim_addr)   # the restarted workers work again
    os.kill(victim, signal.SIGKILL)
    th.join(120)
    assert not th.is_alive() and "error" not in res, res.get("error")
    t = res["table"]
    assert at_restart < at_kill < 300
    assert len(t) == 300 and (t.status == "ok").all() and list(t.point) == list(range(300))
    assert victim_addr in set(t.worker)       # it did work before it died
    lines = journal.read_text().splitlines()[1:]
    assert sorted(json.loads(r)["point"] for r in lines) == list(range(300))
    _same(serial, t)
