"""Probe for taichi-notes 42: a field accessed in one loop body at a constant index and at
a run-time index reads stale values (forward kernels, no autodiff).

    python docs/probes/taichi_loop_invariant_cache.py {taichi|quadrants} [off]

Two rounds of a serial loop; each round stores f[0, jj] at a run-time index jj and loads
f[0, j] at constant indices j (and the converse into h). Expected: rows 0-1 = [1 2],
[11 12] (loads after run-time stores), rows 2-3 = [2 4], [22 24] (run-time loads after
constant-index stores). Measured: taichi 1.7.4 gives [0 0] in every row; with ``off``
(``ti.init(cache_loop_invariant_global_vars=False)``) it is right; quadrants 1.3.3 is right.
"""
import sys

name = sys.argv[1]
opts = {"cache_loop_invariant_global_vars": False} if "off" in sys.argv[2:] else {}
if name == "taichi":
    import taichi as ti
    ti.init(arch=ti.cpu, default_fp=ti.f64, offline_cache=False, log_level=ti.WARN, **opts)
else:
    import quadrants as ti
    ti.init(arch=ti.cpu, default_fp=ti.f64, offline_cache=False, log_level=ti.WARN, **opts)

G = 2
f = ti.field(ti.i32, (1, G))
h = ti.field(ti.i32, (1, G))
out = ti.field(ti.i32, (4, G))


@ti.kernel
def probe():
    ti.loop_config(serialize=True)
    for slot in range(1):
        for rnd in range(2):
            for jj in range(G):
                f[slot, jj] = 10 * rnd + jj + 1       # store at a run-time index
            loc = ti.Vector([0] * G)
            for j in ti.static(range(G)):
                loc[j] = f[slot, j]                   # load at a constant index
            for j in ti.static(range(G)):
                out[rnd, j] = loc[j]
            for j in ti.static(range(G)):
                h[slot, j] = loc[j] * 2               # store at a constant index
            for jj in range(G):
                out[2 + rnd, jj] = h[slot, jj]        # load at a run-time index


probe()
got = out.to_numpy().tolist()
want = [[1, 2], [11, 12], [2, 4], [22, 24]]
print(got, "right" if got == want else f"WRONG (expected {want})")
