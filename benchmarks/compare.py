"""diffsim next to JAX (jit + scan + vmap) and Warp (one kernel launch per step, wp.Tape)
on the same workloads, in the same run, float64 in all three; prints the ratios.

Workloads (each implemented identically in the three tools, same float64 arithmetic):

* cannon: B cannons (speed 20..60 m/s, elevation 0.2..1.2 rad), 1,000 steps of
  dt = 0.005 s, semi-implicit Euler, quadratic drag k = 0.002 1/m relative to a head wind of
  -3 m/s, gravity 9.81 m/s². The landing is the event inside the first step whose end is
  below ground: all three tools locate it the way diffsim's Projectile does (root of the
  cubic Hermite interpolant of y over the step by 4 Newton iterations from the linear
  guess; landing x = the Hermite interpolant of x at that fraction); a cannon still flying
  at the horizon lands where it is. Loss Σ_b ½ (x_land,b - 100 m)²; gradient with respect
  to every cannon's speed and elevation.
* cloth: diffsim's bodies.cloth (n × n masses, horizontal + vertical springs, k = 1e4
  N/m, spring damping 0.5 N·s/m, two top corners pinned, total mass 1 kg), semi-implicit
  Euler, dt = 1e-4 s, gravity -9.81 m/s², no ground. Loss: mean height of the masses at
  the end; gradient with respect to every spring stiffness and initial velocity.

How each peer is written (their idiomatic fast path on CPU): JAX jit-compiles
value_and_grad of a lax.scan over the steps (vmap over the cannons; springs vectorised
with .at[].add), without rematerialisation, so like diffsim it stores every step; the
cannon's scan carries the landing step's end points and locates the landing once after
it (with the event inside every step, as an earlier version of this file had it, JAX
measured 5-150x slower: a weakened peer). Warp
launches one kernel per step (cloth: springs with atomic adds, then masses) into per-step
arrays and differentiates with wp.Tape (CUDA graph capture, which removes Warp's launch
overhead, does not exist on CPU).

Times are warm best-of-N (the first call, which compiles, is reported separately as
"first s"). The losses and gradients of JAX and Warp are compared with diffsim's
(relative difference: max |peer - diffsim| / max |diffsim| over the vector), since a
speed table of different computations would be worthless. Peers that are not installed
(`pip install diffsim[bench]`) show "not installed". The issue's targets are printed next
to the measurements with met / not met.

    PYTHONPATH=. python benchmarks/compare.py [--quick] [--only cannon|cloth] [--repeats N]
        [--backend taichi|quadrants]
"""
import argparse
import time
import traceback

import numpy as np

STEPS, DT, DRAG, WIND, G, TARGET = 1000, 0.005, 0.002, -3.0, 9.81, 100.0
NEWTON = 4          # diffsim.systems.projectile._NEWTON
AGREE_TOL = 1e-8    # relative difference below which two float64 results "agree"


# -- helpers ---------------------------------------------------------------------------
def best_of(fn, repeats):
    """(seconds of the first call (compiles), best warm seconds of ``repeats`` calls)."""
    t = time.perf_counter(); fn(); first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return first, best


def rel_diff(a, ref):
    a, ref = np.asarray(a, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    return float(np.max(np.abs(a - ref)) / max(np.max(np.abs(ref)), 1e-300))


def run_peer(name, fn, *args):
    """A peer's result dict, or {'status': 'not installed' / 'failed: ...'}; never raises."""
    try:
        return fn(*args)
    except ImportError as e:
        return {"status": f"not installed ({e.name})"}
    except Exception as e:  # a peer's failure is reported in its row, not a crash
        traceback.print_exc()
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:60]}"}


def import_jax():
    import jax
    jax.config.update("jax_enable_x64", True)
    return jax


def import_warp():
    import logging
    import warp as wp
    wp.config.log_level = logging.WARNING   # no banner or per-module load lines in the tables
    wp.init()
    return wp


# -- cannon ----------------------------------------------------------------------------
def cannon_inputs(B):
    return np.linspace(20.0, 60.0, B), np.linspace(0.2, 1.2, B)


def cannon_diffsim(B, steps, repeats):
    from diffsim.systems.projectile import Projectile
    speed, angle = cannon_inputs(B)
    t = time.perf_counter()
    sim = Projectile(B, steps=steps, dt=DT, integrator="semi_implicit_euler")
    sim.set_inputs(speed=speed, angle=angle, drag=DRAG, wind_x=WIND, gravity=G, target_x=TARGET)
    # not strict: the slowest cannons are still flying at the fixed horizon (a cost benchmark)
    fwd = lambda: sim.forward("miss", strict=False)
    fb = lambda: (sim.forward("miss", strict=False), sim.backward())
    fb()
    first = time.perf_counter() - t
    _, f = best_of(fwd, repeats)
    _, b = best_of(fb, repeats)
    loss = fwd()
    g = sim.backward()
    return {"first": first, "fwd": f, "fb": b, "loss": loss, "grad": np.concatenate([g["speed"], g["angle"]])}


def cannon_jax(B, steps, repeats):
    jax = import_jax()
    import jax.numpy as jnp
    where = jnp.where

    def impact_fraction(y0, y1, m0, m1):
        # diffsim's Projectile impact_fraction, branch for branch
        c3 = 2 * y0 + m0 - 2 * y1 + m1
        c2 = -3 * y0 - 2 * m0 + 3 * y1 - m1
        grounded, up = y0 <= 0.0, m0 > 0.0
        a3 = where(grounded, 0.0, c3)
        a2 = where(grounded, where(up, c3, 0.0), c2)
        a1 = where(grounded, where(up, c2, 1.0), m0)
        a0 = where(grounded, where(up, m0, 0.0), y0)
        s = a0 / (a0 - y1)
        for _ in range(NEWTON):
            f = ((a3 * s + a2) * s + a1) * s + a0
            df = (3 * a3 * s + 2 * a2) * s + a1
            s = jnp.clip(s - f / df, 0.0, 1.0)
        return s

    def one(speed, angle):
        # The scan carries the landing step's end points; the event (Hermite root by
        # Newton, landing x) is computed once after it. A JAX user writes it this way:
        # the same event inside every step (as diffsim's and Warp's kernels branch to
        # it) made JAX's forward + backward 5x (B = 1,024) to 150x (B = 1) slower.
        def step(c, _):
            px, py, vx, vy, live, ev = c
            rx, ry = vx - WIND, vy
            sp = jnp.sqrt(rx * rx + ry * ry)
            nvx = vx + DT * (-DRAG * sp * rx)
            nvy = vy + DT * (-G - DRAG * sp * ry)
            nx, ny = px + DT * nvx, py + DT * nvy
            hit = live & (ny < 0.0)
            ev = where(hit, jnp.stack([px, py, vx, vy, nx, ny, nvx, nvy]), ev)
            go = live & ~hit      # a landed cannon stops
            return (where(go, nx, px), where(go, ny, py), where(go, nvx, vx),
                    where(go, nvy, vy), go, ev), None
        # harmless end points until a landing replaces them (no inf/NaN in the unselected
        # branch of the final `where`, which the gradient also differentiates)
        c0 = (jnp.zeros(()), jnp.zeros(()), speed * jnp.cos(angle), speed * jnp.sin(angle),
              jnp.array(True), jnp.array([0.0, 1.0, 0.0, -1.0, 0.0, -1.0, 0.0, -1.0]))
        (px, _, _, _, live, ev), _ = jax.lax.scan(step, c0, None, length=steps)
        x0, y0, vx0, vy0, x1, y1, vx1, vy1 = ev
        s = impact_fraction(y0, y1, DT * vy0, DT * vy1)
        d3 = 2 * (x0 - x1) + DT * vx0 + DT * vx1
        d2 = 3 * (x1 - x0) - 2 * DT * vx0 - DT * vx1
        hx = ((d3 * s + d2) * s + DT * vx0) * s + x0
        land = where(live, px, hx)     # still flying at the horizon: lands where it is
        return 0.5 * (land - TARGET) ** 2

    def loss(speed, angle):
        return jnp.sum(jax.vmap(one)(speed, angle))

    fwd_j = jax.jit(loss)
    fb_j = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    speed, angle = (jnp.asarray(a) for a in cannon_inputs(B))
    fwd = lambda: fwd_j(speed, angle).block_until_ready()
    fb = lambda: jax.block_until_ready(fb_j(speed, angle))
    first_f, f = best_of(fwd, repeats)
    first_b, b = best_of(fb, repeats)
    val, (gs, ga) = fb_j(speed, angle)
    return {"first": first_f + first_b, "fwd": f, "fb": b, "loss": float(val),
            "grad": np.concatenate([np.asarray(gs), np.asarray(ga)])}


_WARP = {}


def warp_kernels():
    """Warp kernels, defined once (lazily: warp is optional)."""
    if _WARP:
        return _WARP
    wp = import_warp()
    f64 = wp.float64

    @wp.kernel
    def cannon_launch(speed: wp.array(dtype=f64), angle: wp.array(dtype=f64),
                      px: wp.array2d(dtype=f64), py: wp.array2d(dtype=f64),
                      vx: wp.array2d(dtype=f64), vy: wp.array2d(dtype=f64),
                      lx: wp.array2d(dtype=f64), live: wp.array2d(dtype=wp.int32)):
        b = wp.tid()
        px[0, b] = f64(0.0)
        py[0, b] = f64(0.0)
        vx[0, b] = speed[b] * wp.cos(angle[b])
        vy[0, b] = speed[b] * wp.sin(angle[b])
        lx[0, b] = f64(0.0)
        live[0, b] = 1

    @wp.kernel
    def cannon_step(t: int, dt: f64, k: f64, w: f64, g: f64,
                    px: wp.array2d(dtype=f64), py: wp.array2d(dtype=f64),
                    vx: wp.array2d(dtype=f64), vy: wp.array2d(dtype=f64),
                    lx: wp.array2d(dtype=f64), live: wp.array2d(dtype=wp.int32)):
        b = wp.tid()
        x0 = px[t, b]
        y0 = py[t, b]
        u0 = vx[t, b]
        w0 = vy[t, b]
        rx = u0 - w
        sp = wp.sqrt(rx * rx + w0 * w0)
        nvx = u0 + dt * (-k * sp * rx)
        nvy = w0 + dt * (-g - k * sp * w0)
        nx = x0 + dt * nvx
        ny = y0 + dt * nvy
        land = f64(0.0)
        alive = live[t, b]
        if alive == 1 and ny < f64(0.0):
            # diffsim's impact_fraction (a launch from y = 0 going up never lands in
            # its first step here, so only the y0 > 0 branch is reachable; kept exact)
            m0 = dt * w0
            m1 = dt * nvy
            c3 = f64(2.0) * y0 + m0 - f64(2.0) * ny + m1
            c2 = f64(-3.0) * y0 - f64(2.0) * m0 + f64(3.0) * ny - m1
            a3 = c3
            a2 = c2
            a1 = m0
            a0 = y0
            if y0 <= f64(0.0):
                a3 = f64(0.0)
                if m0 > f64(0.0):
                    a2 = c3
                    a1 = c2
                    a0 = m0
                else:
                    a2 = f64(0.0)
                    a1 = f64(1.0)
                    a0 = f64(0.0)
            s = a0 / (a0 - ny)
            for _i in range(4):
                fs = ((a3 * s + a2) * s + a1) * s + a0
                dfs = (f64(3.0) * a3 * s + f64(2.0) * a2) * s + a1
                s = wp.min(wp.max(s - fs / dfs, f64(0.0)), f64(1.0))
            d3 = f64(2.0) * (x0 - nx) + dt * u0 + dt * nvx
            d2 = f64(3.0) * (nx - x0) - f64(2.0) * dt * u0 - dt * nvx
            land = ((d3 * s + d2) * s + dt * u0) * s + x0
            px[t + 1, b] = land
            py[t + 1, b] = f64(0.0)
            vx[t + 1, b] = f64(0.0)
            vy[t + 1, b] = f64(0.0)
            live[t + 1, b] = 0
        elif alive == 1:
            px[t + 1, b] = nx
            py[t + 1, b] = ny
            vx[t + 1, b] = nvx
            vy[t + 1, b] = nvy
            live[t + 1, b] = 1
        else:
            px[t + 1, b] = x0
            py[t + 1, b] = y0
            vx[t + 1, b] = u0
            vy[t + 1, b] = w0
            live[t + 1, b] = 0
        lx[t + 1, b] = lx[t, b] + land

    @wp.kernel
    def cannon_loss(T: int, target: f64, px: wp.array2d(dtype=f64), lx: wp.array2d(dtype=f64),
                    live: wp.array2d(dtype=wp.int32), loss: wp.array(dtype=f64)):
        b = wp.tid()
        land = lx[T, b]
        if live[T, b] == 1:
            land = land + px[T, b]
        d = land - target
        wp.atomic_add(loss, 0, f64(0.5) * d * d)

    @wp.kernel
    def cloth_start(x0: wp.array(dtype=f64), y0: wp.array(dtype=f64), vx0: wp.array(dtype=f64),
                    vy0: wp.array(dtype=f64), xs: wp.array2d(dtype=f64), ys: wp.array2d(dtype=f64),
                    vxs: wp.array2d(dtype=f64), vys: wp.array2d(dtype=f64)):
        i = wp.tid()
        xs[0, i] = x0[i]
        ys[0, i] = y0[i]
        vxs[0, i] = vx0[i]
        vys[0, i] = vy0[i]

    @wp.kernel
    def cloth_springs(t: int, sa: wp.array(dtype=wp.int32), sb: wp.array(dtype=wp.int32),
                      k: wp.array(dtype=f64), c: wp.array(dtype=f64), rest: wp.array(dtype=f64),
                      xs: wp.array2d(dtype=f64), ys: wp.array2d(dtype=f64),
                      vxs: wp.array2d(dtype=f64), vys: wp.array2d(dtype=f64),
                      fx: wp.array2d(dtype=f64), fy: wp.array2d(dtype=f64)):
        s = wp.tid()
        i = sa[s]
        j = sb[s]
        dx = xs[t, i] - xs[t, j]
        dy = ys[t, i] - ys[t, j]
        l = wp.sqrt(dx * dx + dy * dy)
        nx = dx / l
        ny = dy / l
        vrel = (vxs[t, i] - vxs[t, j]) * nx + (vys[t, i] - vys[t, j]) * ny
        F = k[s] * (l - rest[s]) + c[s] * vrel
        wp.atomic_add(fx, t, i, -F * nx)
        wp.atomic_add(fy, t, i, -F * ny)
        wp.atomic_add(fx, t, j, F * nx)
        wp.atomic_add(fy, t, j, F * ny)

    @wp.kernel
    def cloth_masses(t: int, dt: f64, g: f64, inv_m: wp.array(dtype=f64), pin: wp.array(dtype=wp.int32),
                     xs: wp.array2d(dtype=f64), ys: wp.array2d(dtype=f64),
                     vxs: wp.array2d(dtype=f64), vys: wp.array2d(dtype=f64),
                     fx: wp.array2d(dtype=f64), fy: wp.array2d(dtype=f64)):
        i = wp.tid()
        if pin[i] != 0:
            xs[t + 1, i] = xs[t, i]
            ys[t + 1, i] = ys[t, i]
            vxs[t + 1, i] = f64(0.0)
            vys[t + 1, i] = f64(0.0)
        else:
            nvx = vxs[t, i] + dt * fx[t, i] * inv_m[i]
            nvy = vys[t, i] + dt * (g + fy[t, i] * inv_m[i])
            xs[t + 1, i] = xs[t, i] + dt * nvx
            ys[t + 1, i] = ys[t, i] + dt * nvy
            vxs[t + 1, i] = nvx
            vys[t + 1, i] = nvy

    @wp.kernel
    def cloth_height(T: int, inv_n: f64, ys: wp.array2d(dtype=f64), loss: wp.array(dtype=f64)):
        i = wp.tid()
        wp.atomic_add(loss, 0, ys[T, i] * inv_n)

    _WARP.update(wp=wp, cannon_launch=cannon_launch, cannon_step=cannon_step,
                 cannon_loss=cannon_loss, cloth_start=cloth_start, cloth_springs=cloth_springs,
                 cloth_masses=cloth_masses, cloth_height=cloth_height)
    return _WARP


def warp_timed(wp, run, loss, grads, repeats):
    """Time forward (no tape) and forward + wp.Tape backward of ``run()``; returns the dict."""
    def fb():
        tape = wp.Tape()
        with tape:
            run()
        tape.backward(loss=loss)
        out = [g.grad.numpy().copy() for g in grads]
        tape.zero()
        return out
    t = time.perf_counter(); fb(); first = time.perf_counter() - t
    _, f = best_of(lambda: (run(), wp.synchronize()), repeats)
    _, b = best_of(fb, repeats)
    g = fb()
    return {"first": first, "fwd": f, "fb": b, "loss": float(loss.numpy()[0]), "grad": np.concatenate(g)}


def cannon_warp(B, steps, repeats):
    K = warp_kernels()
    wp, f64 = K["wp"], None
    f64 = wp.float64
    speed, angle = cannon_inputs(B)
    speed = wp.array(speed, dtype=f64, requires_grad=True)
    angle = wp.array(angle, dtype=f64, requires_grad=True)
    st = [wp.zeros((steps + 1, B), dtype=f64, requires_grad=True) for _ in range(5)]
    live = wp.zeros((steps + 1, B), dtype=wp.int32)
    loss = wp.zeros(1, dtype=f64, requires_grad=True)
    px, py, vx, vy, lx = st

    def run():
        loss.zero_()
        wp.launch(K["cannon_launch"], B, inputs=[speed, angle, px, py, vx, vy, lx, live])
        for t in range(steps):
            wp.launch(K["cannon_step"], B, inputs=[t, DT, DRAG, WIND, G, px, py, vx, vy, lx, live])
        wp.launch(K["cannon_loss"], B, inputs=[steps, TARGET, px, lx, live, loss])
    return warp_timed(wp, run, loss, [speed, angle], repeats)


# -- cloth -----------------------------------------------------------------------------
def cloth_body(n):
    from diffsim.systems.bodies import cloth
    return cloth(n, 1.0, 1.0, total_mass=1.0, stiffness=1e4, damping=0.5)


def cloth_diffsim(n, steps, repeats):
    from diffsim.systems.mass_spring import MassSpring
    t = time.perf_counter()
    m = MassSpring(cloth_body(n), steps=steps, dt=1e-4, gravity=-9.81, ground=None)
    m.forward("height"); m.backward()
    first = time.perf_counter() - t
    _, f = best_of(lambda: m.forward("height"), repeats)
    _, b = best_of(lambda: (m.forward("height"), m.backward()), repeats)
    loss = m.forward("height")
    g = m.backward()
    return {"first": first, "fwd": f, "fb": b, "loss": loss,
            "grad": np.concatenate([g["stiffness"][0], g["vx0"][0], g["vy0"][0]])}


def cloth_arrays(n):
    body = cloth_body(n)
    S = len(body.springs)
    full = lambda a: np.broadcast_to(np.asarray(a, np.float64), (S,)).copy()
    v = body.v if body.v is not None else np.zeros_like(body.x)
    return dict(sa=body.springs[:, 0].astype(np.int32), sb=body.springs[:, 1].astype(np.int32),
                k=full(body.stiffness), c=full(body.damping), rest=full(body.rest),
                m=np.broadcast_to(np.asarray(body.mass, np.float64), (len(body.x),)).copy(),
                pin=np.asarray(body.pinned, bool), x0=body.x[:, 0].copy(), y0=body.x[:, 1].copy(),
                vx0=v[:, 0].copy(), vy0=v[:, 1].copy())


def cloth_jax(n, steps, repeats, dt=1e-4, g=-9.81):
    jax = import_jax()
    import jax.numpy as jnp
    a = cloth_arrays(n)
    sa, sb, c, rest, pin = (jnp.asarray(a[k]) for k in ("sa", "sb", "c", "rest", "pin"))
    inv_m = jnp.asarray(1.0 / a["m"])
    N = len(a["m"])

    def loss(k, vx0, vy0):
        def step(st, _):
            x, y, vx, vy = st
            dx, dy = x[sa] - x[sb], y[sa] - y[sb]
            l = jnp.sqrt(dx * dx + dy * dy)
            nx, ny = dx / l, dy / l
            vrel = (vx[sa] - vx[sb]) * nx + (vy[sa] - vy[sb]) * ny
            F = k * (l - rest) + c * vrel
            fx = jnp.zeros(N).at[sa].add(-F * nx).at[sb].add(F * nx)
            fy = jnp.zeros(N).at[sa].add(-F * ny).at[sb].add(F * ny)
            nvx = vx + dt * fx * inv_m
            nvy = vy + dt * (g + fy * inv_m)
            return (jnp.where(pin, x, x + dt * nvx), jnp.where(pin, y, y + dt * nvy),
                    jnp.where(pin, 0.0, nvx), jnp.where(pin, 0.0, nvy)), None
        st0 = (jnp.asarray(a["x0"]), jnp.asarray(a["y0"]), vx0, vy0)
        (_, y, _, _), _ = jax.lax.scan(step, st0, None, length=steps)
        return jnp.mean(y)

    fwd_j = jax.jit(loss)
    fb_j = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    k, vx0, vy0 = (jnp.asarray(a[q]) for q in ("k", "vx0", "vy0"))
    first_f, f = best_of(lambda: fwd_j(k, vx0, vy0).block_until_ready(), repeats)
    first_b, b = best_of(lambda: jax.block_until_ready(fb_j(k, vx0, vy0)), repeats)
    val, grads = fb_j(k, vx0, vy0)
    return {"first": first_f + first_b, "fwd": f, "fb": b, "loss": float(val),
            "grad": np.concatenate([np.asarray(q) for q in grads])}


def cloth_warp(n, steps, repeats, dt=1e-4, g=-9.81):
    K = warp_kernels()
    wp = K["wp"]
    f64 = wp.float64
    a = cloth_arrays(n)
    N, S = len(a["m"]), len(a["sa"])
    arr = lambda v, dtype=f64, grad=False: wp.array(v, dtype=dtype, requires_grad=grad)
    sa, sb = arr(a["sa"], wp.int32), arr(a["sb"], wp.int32)
    k, c, rest = arr(a["k"], grad=True), arr(a["c"], grad=True), arr(a["rest"], grad=True)
    inv_m, pin = arr(1.0 / a["m"], grad=True), arr(a["pin"].astype(np.int32), wp.int32)
    x0, y0 = arr(a["x0"], grad=True), arr(a["y0"], grad=True)
    vx0, vy0 = arr(a["vx0"], grad=True), arr(a["vy0"], grad=True)
    xs, ys, vxs, vys = (wp.zeros((steps + 1, N), dtype=f64, requires_grad=True) for _ in range(4))
    fx, fy = (wp.zeros((steps, N), dtype=f64, requires_grad=True) for _ in range(2))
    loss = wp.zeros(1, dtype=f64, requires_grad=True)

    def run():
        loss.zero_(); fx.zero_(); fy.zero_()
        wp.launch(K["cloth_start"], N, inputs=[x0, y0, vx0, vy0, xs, ys, vxs, vys])
        for t in range(steps):
            wp.launch(K["cloth_springs"], S, inputs=[t, sa, sb, k, c, rest, xs, ys, vxs, vys, fx, fy])
            wp.launch(K["cloth_masses"], N, inputs=[t, dt, g, inv_m, pin, xs, ys, vxs, vys, fx, fy])
        wp.launch(K["cloth_height"], N, inputs=[steps, 1.0 / N, ys, loss])
    return warp_timed(wp, run, loss, [k, vx0, vy0], repeats)


# -- tables ----------------------------------------------------------------------------
def fmt_ms(s):
    return f"{s * 1e3:.3f}" if s < 0.1 else f"{s * 1e3:.1f}"


def print_table(title, results, targets):
    """results: [(tool, dict)], diffsim first. targets: [(text, met or None)]."""
    print(f"\n{title}")
    head = (f"{'tool':<8} {'first s':>8} {'fwd ms':>10} {'fwd+bwd ms':>11} {'grad/fwd':>8} "
            f"{'diffsim/peer fwd':>16} {'diffsim/peer f+b':>16} {'loss rel.diff':>13} {'grad rel.diff':>13}")
    print(head)
    print("-" * len(head))
    ref = results[0][1]
    for tool, r in results:
        if "status" in r:
            print(f"{tool:<8} {r['status']}")
            continue
        row = (f"{tool:<8} {r['first']:>8.2f} {fmt_ms(r['fwd']):>10} {fmt_ms(r['fb']):>11} "
               f"{r['fb'] / r['fwd']:>8.2f} ")
        if tool == "diffsim" or "status" in ref:
            row += f"{'-':>16} {'-':>16} {'-':>13} {'-':>13}"
        else:
            row += (f"{ref['fwd'] / r['fwd']:>16.3f} {ref['fb'] / r['fb']:>16.3f} "
                    f"{rel_diff(r['loss'], ref['loss']):>13.1e} {rel_diff(r['grad'], ref['grad']):>13.1e}")
        print(row)
    for text, met in targets:
        word = "n/a (peer missing)" if met is None else ("met" if met else "NOT MET")
        print(f"  target: {text}: {word}")
    flagged = [tool for tool, r in results[1:] if "status" not in r and "status" not in ref
               and max(rel_diff(r["loss"], ref["loss"]), rel_diff(r["grad"], ref["grad"])) > AGREE_TOL]
    if flagged:
        print(f"  WARNING: {', '.join(flagged)} disagree with diffsim by more than {AGREE_TOL:g} "
              f"(relative): the times above are not of the same computation")
    return flagged


def ok(r):
    return "status" not in r


def cannon(batches, steps, repeats):
    bad = []
    for B in batches:
        res = [("diffsim", cannon_diffsim(B, steps, repeats)),
               ("jax", run_peer("jax", cannon_jax, B, steps, repeats)),
               ("warp", run_peer("warp", cannon_warp, B, steps, repeats))]
        d, j = res[0][1], res[1][1]
        targets = [(f"diffsim grad/fwd ≤ 3 (measured {d['fb'] / d['fwd']:.2f})", d["fb"] / d["fwd"] <= 3)]
        if B == 1:
            targets.insert(0, (f"diffsim fwd+bwd ≤ 0.3 ms at B = 1 (measured {d['fb'] * 1e3:.3f} ms)",
                               d["fb"] <= 0.3e-3))
        else:
            targets.insert(0, ("diffsim fwd+bwd ≤ ½ JAX's" + (
                f" (diffsim/JAX {d['fb'] / j['fb']:.3f})" if ok(j) else ""),
                d["fb"] <= 0.5 * j["fb"] if ok(j) else None))
        bad += print_table(f"cannon, B = {B:,}, {steps} steps, dt = {DT}, float64; best of {repeats} warm runs",
                           res, targets)
    return bad


def cloth_workload(n, steps, repeats):
    res = [("diffsim", cloth_diffsim(n, steps, repeats)),
           ("jax", run_peer("jax", cloth_jax, n, steps, repeats)),
           ("warp", run_peer("warp", cloth_warp, n, steps, repeats))]
    d = res[0][1]
    peers = [r["fb"] for _, r in res[1:] if ok(r)]
    best = min(peers) if peers else None
    targets = [("diffsim fwd+bwd ≤ ½ of the better of JAX and Warp" + (
        f" (diffsim/better {d['fb'] / best:.3f})" if best else ""),
        d["fb"] <= 0.5 * best if best else None)]
    return print_table(f"cloth {n}×{n} ({n * n} masses, {len(cloth_arrays(n)['sa'])} springs), {steps} "
                       f"steps, dt = 1e-4, float64; loss = mean final height; best of {repeats} warm runs",
                       res, targets)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="small sizes (cannon B = 1, 64; cloth 16×16, 100 steps), 1 repeat")
    ap.add_argument("--only", choices=("cannon", "cloth"))
    ap.add_argument("--repeats", type=int, default=None, help="warm runs per timing (default 5; --quick: 1)")
    ap.add_argument("--backend", choices=("taichi", "quadrants"), default=None,
                    help="diffsim's kernel language (default: $DIFFSIM_BACKEND, else taichi)")
    a = ap.parse_args()
    repeats = a.repeats or (1 if a.quick else 5)
    import diffsim
    rt = diffsim.init("cpu", "f64", backend=a.backend)
    print(f"diffsim ({rt.backend}) vs JAX (jit + scan + vmap) vs Warp (per-step launches, wp.Tape), float64, "
          f"arch={rt.arch}. 'first s': first call incl. compile; times: best of {repeats} warm runs; "
          f"diffsim/peer < 1: diffsim faster. rel.diff: max |peer - diffsim| / max |diffsim|.")
    versions = []
    for name, imp in (("jax", import_jax), ("warp", import_warp)):
        try:
            versions.append(f"{name} {imp().__version__}")
        except ImportError:
            versions.append(f"{name} not installed (pip install 'diffsim[bench]')")
    print("peers: " + ", ".join(versions) + " (CPU)")
    bad = []
    if a.only in (None, "cannon"):
        bad += cannon([1, 64] if a.quick else [1, 1024, 16384], STEPS, repeats)
    if a.only in (None, "cloth"):
        bad += cloth_workload(*((16, 100) if a.quick else (64, 500)), repeats)
    if bad:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
