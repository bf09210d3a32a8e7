"""Hand-written reverse (adjoint) sweep of the cannon (:class:`~diffsim.systems.projectile.Projectile`).

Why. Taichi's reverse of the fused time loop replays the forward loop to fill its autodiff
stacks, then re-evaluates each step's body backwards: about 1 + 1 + 3 forward-equivalents
(docs/taichi-notes.md 37). This module computes the same gradient, d objective / d inputs,
with one kernel launch and no autodiff stack: per cannon and per horizon segment (from
the last one the cannon flew in back to the first), it recomputes the segment from the
checkpoint the forward pass stored (``Projectile.state[c][k, b]``), keeping the velocity at
the start of every step in a small buffer, then runs the step's adjoint by hand backwards.

Math (per cannon; symplectic Euler ``v' = v + dt·a(v)``, ``p' = p + dt·v'``; Euler
``p' = p + dt·v``; ``a(v) = -g·ŷ - k·|r|·r``, ``r = v - w``). With adjoints Λp, Λv of the
step's end state:

    μ = Λv + dt·Λp (symplectic Euler) ;  ν = dt·μ   (Euler: ν = dt·Λv)
    λp = Λp ;  λv = μ + Jᵀν  (Euler: Λv + dt·Λp + Jᵀν),  Jᵀν = -k·(|r|·ν + r·(r·ν)/|r|)
    λg -= ν_y ;  λk -= |r|·(r·ν) ;  λw -= Jᵀν

The acceleration depends on the velocity only, so the buffer holds velocities alone. The
landing step (the first whose end is below ground) maps its start and end states to the
landing point and time: x_land = H(x0, x1, dt·vx0, dt·vx1; s) (cubic Hermite), t_land =
(step + s)·dt, with s the root of the Hermite cubic of y found by Newton in the forward
pass. Its derivative is by the implicit function theorem, ds/dθ = -(∂y/∂θ)/(∂y/∂s) at the
converged root, which equals autodiff of the converged Newton iterate to round-off
(tests/test_projectile_reverse.py compares with Taichi's autodiff of the real kernel). A
cannon still flying at the horizon "lands" at its position there (t_land = steps·dt).

Cannons are processed in groups of ``G`` whose steps are interleaved in one loop body:
each cannon's time loop is a chain of dependent operations (latency-bound), and
independent chains side by side let the CPU overlap them. Groups are spread over ``NS``
slots (the parallel loop), each with its own buffer, so the buffer is
NS × G × (steps per segment) × dims reals whatever the batch.

Covered: integrators symplectic_euler and euler, 2D and 3D, objectives miss / range /
flight_time, landings and cannons still flying at the horizon, any batch. Not covered,
left to Taichi's autodiff (:func:`backward` returns None): rk4, and a forward pass in
which any cannon bounced.
"""

import math

import numpy as np

from ..backend import ti
from .. import runtime
from ..errors import DiffsimError
from . import projectile as P

#: integrators whose step adjoint is written here
INTEGRATORS = ("symplectic_euler", "euler")
#: cannons interleaved per group (see module docstring); measured in benchmarks/projectile.py
GROUP = 4
#: most parallel slots (each owns a buffer of G × steps-per-segment × dims reals)
MAX_SLOTS = 64


def use(sim, on=True):
    """Turn the hand-written reverse sweep of ``sim`` on (default) or off (Taichi's
    autodiff then computes every gradient, as before this module existed)."""
    sim.__dict__["_hand_reverse_on"] = bool(on)


def reason_not_used(sim):
    """None when :func:`backward` computes ``sim``'s gradient after its last forward pass,
    else a sentence saying why Taichi's autodiff does instead."""
    if not sim.__dict__.get("_hand_reverse_on", True):
        return "turned off (projectile_reverse.use(sim, False))"
    if sim.integrator not in INTEGRATORS:
        return f"integrator {sim.integrator!r} has no hand-written adjoint (only {', '.join(INTEGRATORS)})"
    summary = sim._summary
    if summary is None:
        return "no forward-pass summary"
    if summary[P.R_BOUNCES].any():
        return "a cannon bounced in the last forward pass (bounces are not covered)"
    rev = sim.__dict__.get("_hand_reverse")
    if rev is False:
        return "its buffer would be too large (runtime.check_memory)"
    return None


def backward(sim):
    """d objective / d input of ``sim``'s last forward pass, as ``Projectile.backward``
    returns it ({name: (B,) array}), or None where this sweep does not apply
    (:func:`reason_not_used`). The caller has checked that the forward pass is current."""
    if reason_not_used(sim) is not None:
        return None
    rev = sim.__dict__.get("_hand_reverse")
    if rev is None:
        try:
            rev = _Reverse(sim)
        except DiffsimError:      # buffer over the memory limit: Taichi's autodiff instead
            sim.__dict__["_hand_reverse"] = False
            return None
        sim.__dict__["_hand_reverse"] = rev
    kind, sign = sim._objective_args
    rev.kernel(kind, float(sign), sim._grad)
    g = sim._grad.copy()
    return {n: g[j] for j, n in enumerate(P.INPUTS)}


class _Reverse:
    """The buffer and the reverse kernel of one Projectile (they close over its fields)."""

    def __init__(self, sim, group=None, slots=None):
        B = sim.B
        G = int(group or min(GROUP, B))
        NG = -(-B // G)
        NS = 1 if sim.serial else int(slots or min(NG, MAX_SLOTS))
        C = 3 if sim.dims == 3 else 2
        NMAX = max(n for _, n in sim.segs)
        itemsize = np.dtype(sim.np_real).itemsize
        runtime.check_memory(NS * NMAX * G * C * itemsize,
                             what=f"the hand-written reverse sweep's buffer ({NS} × {NMAX} × {G * C})")
        self.G, self.NS = G, NS
        self.buf = ti.field(sim.real, (NS, NMAX, G * C))
        self.seg = ti.field(ti.i32, (len(sim.segs), 2))
        self.seg.from_numpy(np.asarray(sim.segs, dtype=np.int32).reshape(-1, 2))
        self.kernel = _compile(sim, self.buf, self.seg, G, NS, NG, C)


def _compile(sim, buf, seg, G, NS, NG, C):
    dims3 = sim.dims == 3
    symplectic = sim.integrator == "symplectic_euler"
    inp, out_f, S, alive, weight = sim.inp, sim.out, sim.state, sim.alive, sim.weight
    B, K, dt, serial = sim.B, len(sim.segs), sim.dt, sim.serial
    newton = P._NEWTON

    @ti.func
    def impact(y0, y1, m0, m1):
        """The forward pass's impact fraction s (projectile.impact_fraction, same
        operations) and ds/d(y0, y1, m0, m1) by the implicit function theorem."""
        c3 = 2 * y0 + m0 - 2 * y1 + m1
        c2 = -3 * y0 - 2 * m0 + 3 * y1 - m1
        a3, a2, a1, a0, num = c3, c2, m0, y0, y0
        mode = 0
        if y0 <= 0.0:
            if m0 > 0.0:
                a3, a2, a1, a0, num = 0.0, c3, c2, m0, m0
                mode = 1
            else:
                a3, a2, a1, a0, num = 0.0, 0.0, 1.0, 0.0, 0.0
                mode = 2
        s = num / (num - y1)
        clamped = 0
        for _ in ti.static(range(newton)):
            f = ((a3 * s + a2) * s + a1) * s + a0
            df = (3 * a3 * s + 2 * a2) * s + a1
            u = s - f / df
            s = ti.min(ti.max(u, 0.0), 1.0)
            clamped = 1 if u != s else 0
        d = ti.Vector([0.0, 0.0, 0.0, 0.0])
        if mode != 2 and clamped == 0:
            dp = (3 * a3 * s + 2 * a2) * s + a1
            s2 = s * s
            if mode == 0:   # p = the Hermite cubic of y: dp/dθ = its basis functions
                d = ti.Vector([(2 * s - 3) * s2 + 1, (3 - 2 * s) * s2,
                               ((s - 2) * s + 1) * s, (s - 1) * s2])
            else:           # p = the deflated cubic y(s)/s
                d = ti.Vector([(2 * s - 3) * s, (3 - 2 * s) * s, (s - 2) * s + 1, (s - 1) * s])
            d = -d / dp
        return s, d

    @ti.func
    def jt(rx, ry, rz, nx, ny, nz, k):
        """(Jᵀν (3), |r|·(r·ν)) for the drag acceleration -k|r|r, J = ∂a/∂v."""
        sp = ti.sqrt(rx * rx + ry * ry + rz * rz)
        rn = rx * nx + ry * ny + rz * nz
        q = 0.0
        if sp > 0.0:
            q = rn / sp
        return ti.Vector([-k * (sp * nx + rx * q), -k * (sp * ny + ry * q),
                          -k * (sp * nz + rz * q), sp * rn])

    @ti.func
    def step(vx, vy, vz, g, k, wx, wz):
        """End velocity of one step (the forward pass's integrate, same operations)."""
        rx, ry, rz = vx - wx, vy, vz - wz
        sp = ti.sqrt(rx * rx + ry * ry + rz * rz)
        ax, ay, az = -k * sp * rx, -g - k * sp * ry, -k * sp * rz
        return ti.Vector([vx + dt * ax, vy + dt * ay, vz + dt * az])

    @ti.kernel
    def reverse(kind: ti.i32, sign: ti.f64, gout: ti.types.ndarray(dtype=ti.f64, ndim=2)):
        ti.loop_config(serialize=serial, block_dim=1)
        for slot in range(NS):
            for rnd in range((NG - 1 - slot) // NS + 1):
                grp = slot + rnd * NS
                # per-cannon locals of the group, one lane each (static indices only)
                lastk = ti.Vector([-1] * G)
                Lp = ti.Matrix([[0.0] * 3] * G)   # adjoint of the position (row j = cannon j)
                Lv = ti.Matrix([[0.0] * 3] * G)
                Lpar = ti.Matrix([[0.0] * 4] * G)  # gravity, drag, wind_x, wind_z
                Lland = ti.Matrix([[0.0] * 3] * G)  # seeds of land_x, land_z, land_t
                Ldir = ti.Matrix([[0.0] * 4] * G)  # direct: x0, z0, target_x, target_z
                par = ti.Matrix([[0.0] * 4] * G)
                for j in ti.static(range(G)):
                    b = grp * G + j
                    if b < B:
                        lk = K - 1
                        for kk in range(K):
                            if alive[kk, b] == 1 and alive[kk + 1, b] == 0:
                                lk = kk
                        lastk[j] = lk
                        wz = 0.0
                        if ti.static(dims3):
                            wz = inp[P.I_WIND_Z, b]
                        par[j, 0], par[j, 1], par[j, 2], par[j, 3] = (
                            inp[P.I_GRAVITY, b], inp[P.I_DRAG, b], inp[P.I_WIND_X, b], wz)
                        cw = sign * weight[b]
                        lx, lz = out_f[P.O_LAND_X, b], out_f[P.O_LAND_Z, b]
                        if kind == 0:
                            dx, dz = lx - inp[P.I_TARGET_X, b], lz - inp[P.I_TARGET_Z, b]
                            Lland[j, 0], Lland[j, 1] = cw * dx, cw * dz
                            Ldir[j, 2], Ldir[j, 3] = -cw * dx, -cw * dz
                        elif kind == 1:
                            dx, dz = lx - inp[P.I_X0, b], lz - inp[P.I_Z0, b]
                            if ti.static(dims3):
                                r = ti.sqrt(dx * dx + dz * dz)
                                if r > 0.0:
                                    Lland[j, 0], Lland[j, 1] = cw * dx / r, cw * dz / r
                            else:
                                Lland[j, 0] = cw
                            Ldir[j, 0], Ldir[j, 1] = -Lland[j, 0], -Lland[j, 1]
                        else:
                            Lland[j, 2] = cw
                        if alive[K, b] == 1:
                            # still flying at the horizon: land_x, land_z = its position
                            # there, land_t = steps·dt (a constant)
                            Lp[j, 0] = Lland[j, 0]
                            if ti.static(dims3):
                                Lp[j, 2] = Lland[j, 1]
                            else:
                                Ldir[j, 1] += Lland[j, 1]  # 2D: z stays z0 throughout
                for kk in range(K):
                    k = K - 1 - kk
                    n = seg[k, 1]
                    # -- recompute the segment from its checkpoint, velocities into buf --
                    live = ti.Vector([0] * G)
                    ilast = ti.Vector([n - 1] * G)
                    land = ti.Vector([0] * G)
                    p = ti.Matrix([[0.0] * 3] * G)
                    v = ti.Matrix([[0.0] * 3] * G)
                    q = ti.Matrix([[0.0] * 6] * G)  # start state of the landing step
                    for j in ti.static(range(G)):
                        b = ti.min(grp * G + j, B - 1)
                        if k <= lastk[j]:
                            live[j] = 1
                            p[j, 0], p[j, 1], p[j, 2] = S[0][k, b], S[1][k, b], S[2][k, b]
                            v[j, 0], v[j, 1], v[j, 2] = S[3][k, b], S[4][k, b], S[5][k, b]
                    for i in range(n):
                        for j in ti.static(range(G)):
                            if live[j] == 1:
                                for c in ti.static(range(C)):
                                    buf[slot, i, j * C + c] = v[j, c]
                                vz = v[j, 2] if ti.static(dims3) else 0.0
                                nv = step(v[j, 0], v[j, 1], vz, par[j, 0], par[j, 1],
                                          par[j, 2], par[j, 3])
                                ny = p[j, 1] + dt * (nv[1] if ti.static(symplectic) else v[j, 1])
                                if ny < 0.0:
                                    ilast[j], land[j], live[j] = i, 1, 0
                                    q[j, 0], q[j, 1], q[j, 2] = p[j, 0], p[j, 1], p[j, 2]
                                    q[j, 3], q[j, 4], q[j, 5] = v[j, 0], v[j, 1], v[j, 2]
                                else:
                                    for c in ti.static(range(C)):
                                        if ti.static(symplectic):
                                            p[j, c] = p[j, c] + dt * nv[c]
                                        else:
                                            p[j, c] = p[j, c] + dt * v[j, c]
                                        v[j, c] = nv[c]
                    # -- the adjoint, backwards through the segment --
                    for ii in range(n):
                        i = n - 1 - ii
                        for j in ti.static(range(G)):
                            if k <= lastk[j] and i <= ilast[j]:
                                vx, vy = buf[slot, i, j * C], buf[slot, i, j * C + 1]
                                vz = buf[slot, i, j * C + 2] if ti.static(dims3) else 0.0
                                g_, kd, wx, wz = par[j, 0], par[j, 1], par[j, 2], par[j, 3]
                                # adjoint of the step's end position / velocity, and the
                                # direct terms of an event on the start state
                                Ap = ti.Vector([Lp[j, 0], Lp[j, 1], Lp[j, 2]])
                                Av = ti.Vector([Lv[j, 0], Lv[j, 1], Lv[j, 2]])
                                Dp = ti.Vector([0.0, 0.0, 0.0])
                                Dv = ti.Vector([0.0, 0.0, 0.0])
                                if land[j] == 1 and i == ilast[j]:
                                    nv = step(vx, vy, vz, g_, kd, wx, wz)
                                    e = ti.Vector([vx, vy, vz])
                                    if ti.static(symplectic):
                                        e = nv
                                    npx, npy, npz = q[j, 0] + dt * e[0], q[j, 1] + dt * e[1], q[j, 2] + dt * e[2]
                                    s, ds = impact(q[j, 1], npy, dt * vy, dt * nv[1])
                                    s2 = s * s
                                    h00, h01 = (2 * s - 3) * s2 + 1, (3 - 2 * s) * s2
                                    h10, h11 = ((s - 2) * s + 1) * s, (s - 1) * s2
                                    lix, liz = Lland[j, 0], 0.0
                                    # dH/ds of x (and z): the landing point moves with s
                                    hsx = ((3 * (2 * (q[j, 0] - npx) + dt * vx + dt * nv[0]) * s
                                            + 2 * (3 * (npx - q[j, 0]) - 2 * dt * vx - dt * nv[0])) * s
                                           + dt * vx)
                                    ls = dt * Lland[j, 2] + lix * hsx
                                    if ti.static(dims3):
                                        liz = Lland[j, 1]
                                        ls += liz * ((3 * (2 * (q[j, 2] - npz) + dt * vz + dt * nv[2]) * s
                                                      + 2 * (3 * (npz - q[j, 2]) - 2 * dt * vz - dt * nv[2])) * s
                                                     + dt * vz)
                                    Ap = ti.Vector([lix * h01, ls * ds[1], liz * h01])
                                    Av = ti.Vector([lix * h11 * dt, ls * ds[3] * dt, liz * h11 * dt])
                                    Dp = ti.Vector([lix * h00, ls * ds[0], liz * h00])
                                    Dv = ti.Vector([lix * h10 * dt, ls * ds[2] * dt, liz * h10 * dt])
                                mu = Av
                                if ti.static(symplectic):
                                    mu = Av + dt * Ap
                                nu = dt * Av
                                if ti.static(symplectic):
                                    nu = dt * mu
                                jn = jt(vx - wx, vy, vz - wz, nu[0], nu[1], nu[2], kd)
                                lv = mu + ti.Vector([jn[0], jn[1], jn[2]]) + Dv
                                if ti.static(not symplectic):
                                    lv += dt * Ap
                                Lpar[j, 0] -= nu[1]
                                Lpar[j, 1] -= jn[3]
                                Lpar[j, 2] -= jn[0]
                                Lpar[j, 3] -= jn[2]
                                for c in ti.static(range(3)):
                                    Lp[j, c] = Ap[c] + Dp[c]
                                    Lv[j, c] = lv[c]
                # -- the launch: initial state from the inputs, and the results --
                for j in ti.static(range(G)):
                    b = grp * G + j
                    if b < B:
                        sp, el = inp[P.I_SPEED, b], inp[P.I_ANGLE, b]
                        az = 0.0
                        if ti.static(dims3):
                            az = inp[P.I_AZIMUTH, b]
                        ce, se, ca, sa = ti.cos(el), ti.sin(el), ti.cos(az), ti.sin(az)
                        for r in ti.static(range(len(P.INPUTS))):
                            gout[r, b] = 0.0
                        gout[P.I_X0, b] = Lp[j, 0] + Ldir[j, 0]
                        gout[P.I_HEIGHT, b] = Lp[j, 1]
                        gout[P.I_Z0, b] = Lp[j, 2] + Ldir[j, 1]
                        gout[P.I_SPEED, b] = Lv[j, 0] * ce * ca + Lv[j, 1] * se + Lv[j, 2] * ce * sa
                        gout[P.I_ANGLE, b] = sp * (-Lv[j, 0] * se * ca + Lv[j, 1] * ce - Lv[j, 2] * se * sa)
                        if ti.static(dims3):
                            gout[P.I_AZIMUTH, b] = sp * ce * (-Lv[j, 0] * sa + Lv[j, 2] * ca)
                            gout[P.I_WIND_Z, b] = Lpar[j, 3]
                        gout[P.I_GRAVITY, b] = Lpar[j, 0]
                        gout[P.I_DRAG, b] = Lpar[j, 1]
                        gout[P.I_WIND_X, b] = Lpar[j, 2]
                        gout[P.I_TARGET_X, b] = Ldir[j, 2]
                        gout[P.I_TARGET_Z, b] = Ldir[j, 3]

    return reverse
