"""Sweep throughput: points per second of `diffsim sweep` in-process and on 1, 2 and 4
local Dask worker processes, with the compile included (first sweep on fresh workers) and
excluded (the same sweep again: every worker has its Problem built and compiled).

The grid is the cannon scene's wind_x × angle (gradient and warnings at each point). The
cluster's start-up (spawning workers, importing Taichi) is timed separately and counted in
neither rate. Serial "cold" is this process's first sweep (Taichi's offline cache on disk
may already hold the kernels, as it does for the workers).

    python benchmarks/sweep.py [--points 400] [--workers 0 1 2 4] [--eval grad] [--chunk N]
"""
import argparse
import os
import time

import importlib

sw = importlib.import_module("diffsim.sweep")   # the module; diffsim.sweep is the function


def grid(points):
    n = max(2, int(round(points ** 0.5)))
    return [f"wind_x=-10:10:{n}", f"angle=0.2:1.2:{max(1, points // n)}"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 4],
                    help="0 is the in-process loop")
    ap.add_argument("--eval", default="grad", choices=["run", "grad", "optimize"])
    ap.add_argument("--iterations", type=int, default=20, help="optimize: iterations per point")
    ap.add_argument("--chunk", type=int, default=None, help="points per Dask task (default: auto)")
    a = ap.parse_args()
    g = grid(a.points)
    kw = dict(evaluation=a.eval, iterations=a.iterations if a.eval == "optimize" else None)
    print(f"cannon sweep, {a.eval}, grid {' × '.join(g)}; {os.cpu_count()} CPU cores here")
    rows = []
    for w in a.workers:
        start = 0.0
        client = cluster = None
        if w:
            t = time.perf_counter()
            cluster, client = sw.local_cluster(w)
            client.wait_for_workers(w)
            start = time.perf_counter() - t
        runs = []
        for _ in range(2):          # cold (compiles), then warm
            rep = {}
            t = time.perf_counter()
            tab = sw.sweep("cannon", g, client=client, chunk=a.chunk, report=rep, **kw)
            runs.append((time.perf_counter() - t, tab))
        n = len(runs[0][1])
        per_point = float(runs[1][1]["seconds"].mean())
        failed = int((runs[1][1]["status"] == "failed").sum())
        rows.append((w, start, n / runs[0][0], n / runs[1][0], per_point, failed))
        if client is not None:
            client.close()
            cluster.close()
    base = next((r[3] for r in rows if r[0] == 1), None)
    print(f"{'engine':<10} {'start s':>8} {'pts/s cold':>11} {'pts/s warm':>11} "
          f"{'ms/pt inside':>13} {'warm vs 1 worker':>17} {'failed':>7}")
    for w, start, cold, warm, pp, failed in rows:
        name = "serial" if w == 0 else f"{w} worker{'s' * (w > 1)}"
        rel = f"{warm / base:.2f}× (ideal {min(w, os.cpu_count() or 1)}×)" if base and w else "-"
        print(f"{name:<10} {start:8.2f} {cold:11.1f} {warm:11.1f} {1e3 * pp:13.2f} {rel:>17} {failed:7d}")
    print("cold: the first sweep on fresh workers (each builds the scene and compiles its "
          "kernels); warm: the same sweep again (compile excluded). ms/pt inside: the mean "
          "evaluation time a worker measured, without scheduling and transfer.")


if __name__ == "__main__":
    main()
