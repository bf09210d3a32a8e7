"""Hand-written reverse (adjoint) sweep of the cannon (:class:`~diffsim.systems.projectile.Projectile`).

Why. Taichi's reverse of the fused time loop replays the forward loop to fill its autodiff
stacks, then re-evaluates each step's body backwards: about 1 + 1 + 3 forward-equivalents
(docs/taichi-notes.md 37). This module computes the same gradient, d objective / d inputs,
with one kernel launch and no autodiff stack: per cannon and per horizon segment (from
the last one the cannon flew in back to the first), it recomputes the segment from the
checkpoint the forward pass stored (``Projectile.state[c][k, b]``), keeping the velocity at
the start of every step in a small buffer, then runs the step's adjoint by hand backwards.

Math (per cannon; ``a(v) = -g·ŷ - k·|r|·r``, ``r = v - w``; semi-implicit Euler
``v' = v + dt·a(v)``, ``p' = p + dt·v'``). With adjoints Λp, Λv of the step's end state:

    μ = Λv + dt·Λp ;  ā = dt·μ ;  λp = Λp ;  λv = μ + Jᵀā,  Jᵀā = -k·(|r|·ā + r·(r·ā)/|r|)
    λg -= ā_y ;  λk -= |r|·(r·ā) ;  λw -= Jᵀā

Every integrator likewise: the step's adjoint is built from the integrator's tableau
(:meth:`diffsim.ode.solvers.Partitioned.adjoint`: the stages recomputed from v, then
reversed), the same tableau the forward step is built from. The acceleration depends on the velocity only, so the buffer holds
velocities alone. The landing step (the first whose end is below ground) maps its start and end states to the
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

Events (the impacts: bounces and the landing) are rare, so the hot loops only detect
them; one cold routine per direction, compiled once, handles them: event_forward replays
the forward pass's impact (Hermite root, impact point and velocity, the rest of the step
from the reflected velocity), event_adjoint differentiates it (the impact fraction by
the implicit function theorem, the rest of the step's length (1 - s)·dt included).

Covered: every integrator of the cannon (projectile.INTEGRATORS), 2D and 3D, objectives miss /
range / flight_time, landings, bounces and cannons still flying at the horizon, any
batch. Taichi's autodiff is used instead (:func:`backward` returns None) when the sweep is
turned off (:func:`use`) or its buffer would exceed the memory limit.
"""

import numpy as np

from ..backend import ti
from .. import runtime
from ..errors import DiffsimError
from ..ode.solvers import components
from . import projectile as P

#: cannons interleaved per group: GROUP for batches of at least GROUP_MIN_BATCH (module
#: docstring), 2 from PAIR_MIN_BATCH, 1 below. Measured (2-core CPU, 2D, 1,000 steps,
#: semi-implicit Euler): reverse 385 / 133 / 85 ms for 1 / 2 / 4 lanes at B = 16,384
#: (forward ~130-200 ms), 13 / 6 ms for 2 / 4 lanes at B = 1,024 (forward ~8 ms); but
#: the kernel's first compile grows with the lanes (empty offline cache, 2D: 1.2 / 2.1 /
#: 4.9 s for 1 / 2 / 4 lanes, 3D 4 lanes 7.3 s; Taichi's reverse kernel 0.7-1 s). At
#: B = 16 (1,000 steps of 5 ms) one lane against two: first backward 1.4 / 2.9 s
#: (semi-implicit Euler) and 3.1 / 5.4 s (RK4, a bounce), then 0.22 / 0.13 ms and
#: 1.2 / 0.8 ms per backward: a scene's whole optimisation costs less than the second
#: lane's compile, so the small batches of scenes and tests take one lane.
GROUP = 4
GROUP_MIN_BATCH = 256
PAIR_MIN_BATCH = 64
#: most parallel slots (each owns a buffer of G × steps-per-segment × dims reals)
MAX_SLOTS = 64


def use(sim, on=True, *, group=None, slots=None):
    """Turn the hand-written reverse sweep of ``sim`` on (default) or off (Taichi's
    autodiff then computes every gradient, as before this module existed). group, slots:
    cannons interleaved per group and parallel slots (default: GROUP and MAX_SLOTS at
    most); giving either rebuilds the kernel (tests, tuning)."""
    sim.__dict__["_hand_reverse_on"] = bool(on)
    if on and (group or slots):
        sim.__dict__["_hand_reverse"] = _Reverse(sim, group=group, slots=slots)


def reason_not_used(sim):
    """None when :func:`backward` computes ``sim``'s gradient after its last forward pass,
    else a sentence saying why Taichi's autodiff does instead."""
    if not sim.__dict__.get("_hand_reverse_on", True):
        return "turned off (projectile_reverse.use(sim, False))"
    if sim._summary is None:
        return "no forward-pass summary"
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


# Per-lane scratch (lane[slot, j, ...]): what the cold parts of the kernel (objective,
# events, launch; one loop over the group's lanes at a run-time index, compiled once)
# hand to the hot time loops (unrolled over lanes) and back.
L_LP, L_LV, L_PAR, L_LPAR, L_SEED, L_DIR, L_Q, L_E = 0, 3, 6, 10, 14, 17, 21, 27
N_LANE = 28
# lanei[slot, j, ...]: last segment flown (-1: padding lane), landed (else flying at the
# horizon), bounces made so far, events recorded in this segment, still flying
I_LASTK, I_LANDED, I_NB, I_NEV, I_LIVE = 0, 1, 2, 3, 4
# evt[slot, j, m, ...]: event m of the segment: step index, bounce (1) or landing (0),
# state at the start of its step (6)
E_STEP, E_BOUNCE, E_STATE = 0, 1, 2


class _Reverse:
    """The buffer and the reverse kernel of one Projectile (they close over its fields)."""

    def __init__(self, sim, group=None, slots=None):
        B = sim.B
        G = int(group or (GROUP if B >= GROUP_MIN_BATCH else 2 if B >= PAIR_MIN_BATCH else 1))
        NG = -(-B // G)
        NS = 1 if sim.serial else int(slots or min(NG, MAX_SLOTS))
        C = 3 if sim.dims == 3 else 2
        NMAX = max(n for _, n in sim.segs)
        NE = sim.bounces + 1
        itemsize = np.dtype(sim.np_real).itemsize
        runtime.check_memory(NS * G * (NMAX * C + N_LANE + NE * 8) * itemsize,
                             what=f"the hand-written reverse sweep's buffer ({NS} × {NMAX} × {G * C})")
        self.G, self.NS = G, NS
        self.buf = ti.field(sim.real, (NS, NMAX, G * C))
        self.lane = ti.field(sim.real, (NS, G, N_LANE))
        self.lanei = ti.field(ti.i32, (NS, G, 5))
        self.evt = ti.field(sim.real, (NS, G, NE, 8))
        self.seg = ti.field(ti.i32, (len(sim.segs), 2))
        self.seg.from_numpy(np.asarray(sim.segs, dtype=np.int32).reshape(-1, 2))
        self.kernel = _compile(sim, self, G, NS, NG, C)


def _compile(sim, rev, G, NS, NG, C):
    dims3 = sim.dims == 3
    integ = sim.integrator
    inp, out_f, S, alive, nbf, weight = sim.inp, sim.out, sim.state, sim.alive, sim.nbounce, sim.weight
    buf, lane, lanei, evt, seg = rev.buf, rev.lane, rev.lanei, rev.evt, rev.seg
    B, K, dt, serial = sim.B, len(sim.segs), sim.dt, sim.serial
    max_bounce = sim.bounces
    newton = P._NEWTON
    tiny = 1e-300 if np.dtype(sim.np_real).itemsize == 8 else 1e-30

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

    # the forward kernels' own step (same operations, so the recomputed states and
    # events are the forward pass's bit for bit)
    accel, advance, tab, _ = P.step_functions(integ)

    @ti.func
    def accel_adjoint(ux, uy, uz, ax, ay, az, k, wx, wz):
        """(Jᵀā (3), |r|·(r·ā)) at velocity u, J = ∂a/∂u = -k·(|r|·I + r rᵀ/|r|),
        r = u - w: the adjoint of u, and minus those of the wind and of the drag. J is
        symmetric, so the first three are also J·ā (a tangent)."""
        rx, ry, rz = ux - wx, uy, uz - wz
        sp = ti.sqrt(rx * rx + ry * ry + rz * rz)
        rn = rx * ax + ry * ay + rz * az
        q = rn / ti.max(sp, tiny)      # r = 0 makes rn = 0: no 0/0
        return ti.Vector([-k * (sp * ax + rx * q), -k * (sp * ay + ry * q),
                          -k * (sp * az + rz * q), sp * rn])

    # the step's reverse mode and d/dh, from the same tableau as ``advance``
    # (diffsim.ode.solvers.Partitioned): a depends on v only, so no position stages
    def accel_of(t, q, v, g, k, wx, wz):
        return accel(v[0], v[1], v[2], g, k, wx, wz)

    def accel_vjp(t, q, v, ab, g, k, wx, wz):
        j = components(accel_adjoint(v[0], v[1], v[2], ab[0], ab[1], ab[2], k, wx, wz), 4)
        # a = -g·ŷ - k·|r|·r, r = v - w: ∂a/∂w = -∂a/∂v, ∂a/∂g = -ŷ, ∂a/∂k = -|r|·r
        return None, j[:3], [-ab[1], -j[3], -j[0], -j[2]]

    def accel_jvp(t, q, v, dt, dq, dv, g, k, wx, wz):
        if dv is None:
            return None
        return components(accel_adjoint(v[0], v[1], v[2], dv[0], dv[1], dv[2], k, wx, wz), 4)[:3]

    @ti.func
    def step_adjoint(vx, vy, vz, apx, apy, apz, avx, avy, avz, g, k, wx, wz, h):
        """Adjoint of one step of h seconds from start velocity v, given the adjoints Ap,
        Av of its end position and velocity: (λv (3), then the step's terms of λ gravity,
        drag, wind_x, wind_z); λp = Ap (the step is a translation in p)."""
        _, lv, lp = ti.static(tab.adjoint(accel_of, accel_vjp, None, None, [vx, vy, vz], h,
                                          (g, k, wx, wz), [apx, apy, apz], [avx, avy, avz]))
        return ti.Vector(lv + lp)

    @ti.func
    def step_dh(vx, vy, vz, g, k, wx, wz, h):
        """d/dh of advance(v, h): (position increment (3), end velocity (3))."""
        ddq, dv = ti.static(tab.dh(accel_of, accel_jvp, None, None, [vx, vy, vz], h,
                                   (g, k, wx, wz)))
        return ti.Vector(ddq + dv)

    @ti.func
    def hermite(x0, x1, m0, m1, s):
        """Cubic Hermite through (x0, slope m0) at s = 0 and (x1, m1) at s = 1: its value,
        d/ds and d²/ds² (projectile.hermite, same operations for the first two)."""
        d3 = 2 * (x0 - x1) + m0 + m1
        d2 = 3 * (x1 - x0) - 2 * m0 - m1
        return ti.Vector([((d3 * s + d2) * s + m0) * s + x0, (3 * d3 * s + 2 * d2) * s + m0,
                          6 * d3 * s + 2 * d2])

    @ti.func
    def seed_lane(slot, j, b, kind, sign):
        """Objective adjoint of cannon b into lane j: land_x/z/t seeds, direct terms,
        parameters, the last segment it flew in; a cannon still flying at the horizon
        gets its seeds on the final position."""
        for c in ti.static(range(N_LANE)):
            lane[slot, j, c] = 0.0
        lk = K - 1
        for kk in range(K):
            if alive[kk, b] == 1 and alive[kk + 1, b] == 0:
                lk = kk
        lanei[slot, j, I_LASTK] = lk
        lanei[slot, j, I_LANDED] = 1 - alive[K, b]
        lane[slot, j, L_PAR + 0] = inp[P.I_GRAVITY, b]
        lane[slot, j, L_PAR + 1] = inp[P.I_DRAG, b]
        lane[slot, j, L_PAR + 2] = inp[P.I_WIND_X, b]
        if ti.static(dims3):
            lane[slot, j, L_PAR + 3] = inp[P.I_WIND_Z, b]
        cw = sign * weight[b]
        lx, lz = out_f[P.O_LAND_X, b], out_f[P.O_LAND_Z, b]
        sx, sz, st = 0.0, 0.0, 0.0
        if kind == 0:
            dx, dz = lx - inp[P.I_TARGET_X, b], lz - inp[P.I_TARGET_Z, b]
            sx, sz = cw * dx, cw * dz
            lane[slot, j, L_DIR + 2], lane[slot, j, L_DIR + 3] = -sx, -sz
        elif kind == 1:
            dx, dz = lx - inp[P.I_X0, b], lz - inp[P.I_Z0, b]
            if ti.static(dims3):
                r = ti.sqrt(dx * dx + dz * dz)
                if r > 0.0:
                    sx, sz = cw * dx / r, cw * dz / r
            else:
                sx = cw
            lane[slot, j, L_DIR + 0], lane[slot, j, L_DIR + 1] = -sx, -sz
        else:
            st = cw
        lane[slot, j, L_SEED + 0], lane[slot, j, L_SEED + 1], lane[slot, j, L_SEED + 2] = sx, sz, st
        if alive[K, b] == 1:
            # still flying at the horizon: land_x, land_z = its position there, land_t =
            # steps·dt (a constant)
            lane[slot, j, L_LP + 0] = sx
            if ti.static(dims3):
                lane[slot, j, L_LP + 2] = sz
            else:
                lane[slot, j, L_DIR + 1] += sz   # 2D: z stays z0 throughout

    @ti.func
    def event_forward(slot, j, b, i):
        """The impact in step i of lane j, from the step's start state in lane Q (the
        forward pass's segment kernel, same operations): recorded in evt; a bounce puts
        the state after the step back into lane Q, a landing stops the lane."""
        px, py, pz = lane[slot, j, L_Q + 0], lane[slot, j, L_Q + 1], lane[slot, j, L_Q + 2]
        vx, vy, vz = lane[slot, j, L_Q + 3], lane[slot, j, L_Q + 4], lane[slot, j, L_Q + 5]
        g, kd, wx, wz = (lane[slot, j, L_PAR + 0], lane[slot, j, L_PAR + 1],
                         lane[slot, j, L_PAR + 2], lane[slot, j, L_PAR + 3])
        m = lanei[slot, j, I_NEV]
        lanei[slot, j, I_NEV] = m + 1
        evt[slot, j, m, E_STEP] = i
        for c in ti.static(range(6)):
            evt[slot, j, m, E_STATE + c] = lane[slot, j, L_Q + c]
        evt[slot, j, m, E_BOUNCE] = 0.0
        lanei[slot, j, I_LIVE] = 0
        if ti.static(max_bounce > 0):
            e = inp[P.I_RESTITUTION, b]
            bounced = lanei[slot, j, I_NB]
            if bounced < max_bounce and e > 0.0:
                evt[slot, j, m, E_BOUNCE] = 1.0
                lanei[slot, j, I_LIVE] = 1
                lanei[slot, j, I_NB] = bounced + 1
                st = advance(vx, vy, vz, g, kd, wx, wz, dt)
                nx, ny, nz = px + st[0], py + st[1], pz + st[2]
                nvx, nvy, nvz = st[3], st[4], st[5]
                s, _ds = impact(py, ny, dt * vy, dt * nvy)
                hx = hermite(px, nx, dt * vx, dt * nvx, s)
                ix, iz = hx[0], pz
                ivx = vx + s * (nvx - vx)
                ivz = vz + s * (nvz - vz)
                ivy = vy + s * (nvy - vy)
                if ti.static(integ == "rk4"):
                    ivx = hx[1] / dt
                    ivy = hermite(py, ny, dt * vy, dt * nvy, s)[1] / dt
                if ti.static(dims3):
                    hz = hermite(pz, nz, dt * vz, dt * nvz, s)
                    iz = hz[0]
                    if ti.static(integ == "rk4"):
                        ivz = hz[1] / dt
                r = (1.0 - s) * dt
                q2 = advance(ivx, -e * ivy, ivz, g, kd, wx, wz, r)
                lane[slot, j, L_Q + 0] = ix + q2[0]
                lane[slot, j, L_Q + 1] = ti.max(0.0 + q2[1], 0.0)
                lane[slot, j, L_Q + 3] = q2[3]
                lane[slot, j, L_Q + 4] = q2[4]
                if ti.static(dims3):
                    lane[slot, j, L_Q + 2] = iz + q2[2]
                    lane[slot, j, L_Q + 5] = q2[5]

    @ti.func
    def event_adjoint(slot, j, b, m):
        """Adjoint of event m of lane j's segment (a bounce or the landing): from the
        adjoints of the state after its step (lane LP, LV; zero after a landing, whose
        seeds are land_x/z/t's) to those of the state at the step's start (into LP, LV),
        its parameter terms into LPAR and restitution's into E."""
        px, py, pz = evt[slot, j, m, E_STATE + 0], evt[slot, j, m, E_STATE + 1], evt[slot, j, m, E_STATE + 2]
        vx, vy, vz = evt[slot, j, m, E_STATE + 3], evt[slot, j, m, E_STATE + 4], evt[slot, j, m, E_STATE + 5]
        g, kd, wx, wz = (lane[slot, j, L_PAR + 0], lane[slot, j, L_PAR + 1],
                         lane[slot, j, L_PAR + 2], lane[slot, j, L_PAR + 3])
        st = advance(vx, vy, vz, g, kd, wx, wz, dt)
        nx, ny, nz = px + st[0], py + st[1], pz + st[2]
        nvx, nvy, nvz = st[3], st[4], st[5]
        s, ds = impact(py, ny, dt * vy, dt * nvy)
        s2 = s * s
        h00, h01 = (2 * s - 3) * s2 + 1, (3 - 2 * s) * s2
        h10, h11 = ((s - 2) * s + 1) * s, (s - 1) * s2
        hx = hermite(px, nx, dt * vx, dt * nvx, s)
        hy = hermite(py, ny, dt * vy, dt * nvy, s)
        hz = hermite(pz, nz, dt * vz, dt * nvz, s)
        # adjoints of the step's start (D) and end (A) states and of s
        Dp = ti.Vector([0.0, 0.0, 0.0])
        Dv = ti.Vector([0.0, 0.0, 0.0])
        Ap = ti.Vector([0.0, 0.0, 0.0])
        Av = ti.Vector([0.0, 0.0, 0.0])
        dpar = ti.Vector([0.0, 0.0, 0.0, 0.0])
        # the landing: land_x = H_x(s), land_z = H_z(s) (3D), land_t = (step + s)·dt
        lix, ls = lane[slot, j, L_SEED + 0], dt * lane[slot, j, L_SEED + 2]
        liz = lane[slot, j, L_SEED + 1] if ti.static(dims3) else 0.0
        # (bounces = 0: no bounce code at all, a third of the compile time)
        if ti.static(max_bounce > 0):
            if evt[slot, j, m, E_BOUNCE] != 0.0:
                e = inp[P.I_RESTITUTION, b]
                # the impact point and velocity, then the rest of the step from there
                ix, iz = hx[0], pz
                ivx, ivy, ivz = vx + s * (nvx - vx), vy + s * (nvy - vy), vz + s * (nvz - vz)
                if ti.static(integ == "rk4"):
                    ivx, ivy = hx[1] / dt, hy[1] / dt
                if ti.static(dims3):
                    iz = hz[0]
                    if ti.static(integ == "rk4"):
                        ivz = hz[1] / dt
                r = (1.0 - s) * dt
                q2 = advance(ivx, -e * ivy, ivz, g, kd, wx, wz, r)
                lpx, lpy, lpz = lane[slot, j, L_LP + 0], lane[slot, j, L_LP + 1], lane[slot, j, L_LP + 2]
                lvx, lvy, lvz = lane[slot, j, L_LV + 0], lane[slot, j, L_LV + 1], lane[slot, j, L_LV + 2]
                if not (0.0 + q2[1] > 0.0):
                    lpy = 0.0            # y = max(q2_y, 0) clamped: no gradient (as autodiff)
                if ti.static(not dims3):
                    lpz, lvz = 0.0, 0.0
                a = step_adjoint(ivx, -e * ivy, ivz, lpx, lpy, lpz, lvx, lvy, lvz, g, kd, wx, wz, r)
                tq = step_dh(ivx, -e * ivy, ivz, g, kd, wx, wz, r)
                lr = lpx * tq[0] + lpy * tq[1] + lpz * tq[2] + lvx * tq[3] + lvy * tq[4] + lvz * tq[5]
                ls = -dt * lr
                for c in ti.static(range(4)):
                    dpar[c] = a[3 + c]
                lix = lpx
                if ti.static(dims3):
                    liz = lpz
                liv = ti.Vector([a[0], -e * a[1], a[2]])
                lane[slot, j, L_E] += -ivy * a[1]
                # impact velocity: a linear blend of the step's end velocities (Euler
                # methods), the Hermite cubic's derivative / dt (RK4)
                for c in ti.static(range(3)):
                    if ti.static(c < 2 or dims3):
                        v0 = ti.Vector([vx, vy, vz])[c]
                        v1 = ti.Vector([nvx, nvy, nvz])[c]
                        hc = ti.Vector([hx[2], hy[2], hz[2]])[c]
                        if ti.static(integ == "rk4"):
                            Dp[c] += (6 * s2 - 6 * s) / dt * liv[c]
                            Ap[c] += (6 * s - 6 * s2) / dt * liv[c]
                            Dv[c] += (3 * s2 - 4 * s + 1) * liv[c]
                            Av[c] += (3 * s2 - 2 * s) * liv[c]
                            ls += hc / dt * liv[c]
                        else:
                            Dv[c] += (1.0 - s) * liv[c]
                            Av[c] += s * liv[c]
                            ls += (v1 - v0) * liv[c]
        # the impact point: H_x(s) (and H_z(s) in 3D)
        Dp[0] += h00 * lix
        Ap[0] += h01 * lix
        Dv[0] += h10 * dt * lix
        Av[0] += h11 * dt * lix
        ls += hx[1] * lix
        if ti.static(dims3):
            Dp[2] += h00 * liz
            Ap[2] += h01 * liz
            Dv[2] += h10 * dt * liz
            Av[2] += h11 * dt * liz
            ls += hz[1] * liz
        # the impact fraction (implicit function theorem)
        Dp[1] += ls * ds[0]
        Ap[1] += ls * ds[1]
        Dv[1] += ls * ds[2] * dt
        Av[1] += ls * ds[3] * dt
        # the full step from the start state to (n·)
        sa = step_adjoint(vx, vy, vz, Ap[0], Ap[1], Ap[2], Av[0], Av[1], Av[2], g, kd, wx, wz, dt)
        for c in ti.static(range(3)):
            lane[slot, j, L_LP + c] = Ap[c] + Dp[c]
            lane[slot, j, L_LV + c] = sa[c] + Dv[c]
        for c in ti.static(range(4)):
            lane[slot, j, L_LPAR + c] = dpar[c] + sa[3 + c]

    @ti.func
    def launch_lane(slot, j, b, gout: ti.template()):
        """Adjoint of the launch (initial state from the inputs); every input's
        derivative of cannon b into gout[:, b]."""
        sp, el = inp[P.I_SPEED, b], inp[P.I_ANGLE, b]
        az = 0.0
        if ti.static(dims3):
            az = inp[P.I_AZIMUTH, b]
        ce, se, ca, sa = ti.cos(el), ti.sin(el), ti.cos(az), ti.sin(az)
        lvx, lvy, lvz = lane[slot, j, L_LV + 0], lane[slot, j, L_LV + 1], lane[slot, j, L_LV + 2]
        for r in ti.static(range(len(P.INPUTS))):
            gout[r, b] = 0.0
        gout[P.I_X0, b] = lane[slot, j, L_LP + 0] + lane[slot, j, L_DIR + 0]
        gout[P.I_HEIGHT, b] = lane[slot, j, L_LP + 1]
        gout[P.I_Z0, b] = lane[slot, j, L_LP + 2] + lane[slot, j, L_DIR + 1]
        gout[P.I_SPEED, b] = lvx * ce * ca + lvy * se + lvz * ce * sa
        gout[P.I_ANGLE, b] = sp * (-lvx * se * ca + lvy * ce - lvz * se * sa)
        gout[P.I_GRAVITY, b] = lane[slot, j, L_LPAR + 0]
        gout[P.I_DRAG, b] = lane[slot, j, L_LPAR + 1]
        gout[P.I_WIND_X, b] = lane[slot, j, L_LPAR + 2]
        if ti.static(dims3):
            gout[P.I_AZIMUTH, b] = sp * ce * (-lvx * sa + lvz * ca)
            gout[P.I_WIND_Z, b] = lane[slot, j, L_LPAR + 3]
        gout[P.I_RESTITUTION, b] = lane[slot, j, L_E]
        gout[P.I_TARGET_X, b] = lane[slot, j, L_DIR + 2]
        gout[P.I_TARGET_Z, b] = lane[slot, j, L_DIR + 3]

    NP = 4 if dims3 else 3  # parameters with adjoints carried: gravity, drag, wind_x(, wind_z)

    # Lanes and the lane fields. Taichi 1.7.4's cache_loop_invariant_global_vars pass
    # (on by default) keeps a field element accessed at a loop-invariant index in a
    # register inside the loop, and misses accesses to the same field at a run-time
    # index there: a load at a constant lane index after a store at lane `jj` read the
    # old value (docs/taichi-notes.md 42). So the lane fields are only ever accessed at
    # the run-time index `jj`, and values move between them and the hot locals (constant
    # lane indices) through `if jj == j` ladders.
    @ti.kernel
    def reverse(kind: ti.i32, sign: ti.f64, gout: ti.types.ndarray(dtype=ti.f64, ndim=2)):
        ti.loop_config(serialize=serial, block_dim=1)
        for slot in range(NS):
            for rnd in range((NG - 1 - slot) // NS + 1):
                grp = slot + rnd * NS
                # hot per-lane locals (constant lane indices: registers)
                lastk = ti.Vector([-1] * G)
                par = ti.Matrix([[0.0] * 4] * G)
                Lp = ti.Matrix([[0.0] * C] * G)
                Lv = ti.Matrix([[0.0] * C] * G)
                Lpar = ti.Matrix([[0.0] * NP] * G)
                for jj in range(G):
                    lanei[slot, jj, I_LASTK] = -1
                    if grp * G + jj < B:
                        seed_lane(slot, jj, grp * G + jj, kind, sign)
                    for j in ti.static(range(G)):
                        if jj == j:
                            lastk[j] = lanei[slot, jj, I_LASTK]
                            for c in ti.static(range(4)):
                                par[j, c] = lane[slot, jj, L_PAR + c]
                            for c in ti.static(range(C)):
                                Lp[j, c] = lane[slot, jj, L_LP + c]
                for kk in range(K):
                    k = K - 1 - kk
                    n = seg[k, 1]
                    # -- recompute the segment from its checkpoint, velocities into buf --
                    live = ti.Vector([0] * G)
                    ev = ti.Vector([0] * G)
                    p = ti.Matrix([[0.0] * C] * G)
                    v = ti.Matrix([[0.0] * C] * G)
                    for jj in range(G):
                        b = ti.min(grp * G + jj, B - 1)
                        lanei[slot, jj, I_NEV] = 0
                        lanei[slot, jj, I_NB] = nbf[k, b]
                        for j in ti.static(range(G)):
                            if jj == j and k <= lastk[j]:
                                live[j] = 1
                                for c in ti.static(range(C)):
                                    p[j, c] = S[c][k, b]
                                    v[j, c] = S[3 + c][k, b]
                                # z and vz as launched in 2D (the events read them)
                                lane[slot, jj, L_Q + 2] = S[2][k, b]
                                lane[slot, jj, L_Q + 5] = S[5][k, b]
                    for i in range(n):
                        anyev = 0
                        for j in ti.static(range(G)):
                            if live[j] == 1:
                                for c in ti.static(range(C)):
                                    buf[slot, i, j * C + c] = v[j, c]
                                vz = v[j, 2] if ti.static(dims3) else 0.0
                                wz = par[j, 3] if ti.static(dims3) else 0.0
                                st = advance(v[j, 0], v[j, 1], vz, par[j, 0], par[j, 1],
                                             par[j, 2], wz, dt)
                                if p[j, 1] + st[1] < 0.0:   # an impact: the cold part below
                                    ev[j] = 1
                                    anyev = 1
                                else:
                                    for c in ti.static(range(C)):
                                        p[j, c] = p[j, c] + st[c]
                                        v[j, c] = st[3 + c]
                        if anyev == 1:
                            for jj in range(G):
                                this = 0
                                for j in ti.static(range(G)):
                                    if jj == j and ev[j] == 1:
                                        this = 1
                                        for c in ti.static(range(C)):
                                            lane[slot, jj, L_Q + c] = p[j, c]
                                            lane[slot, jj, L_Q + 3 + c] = v[j, c]
                                if this == 1:
                                    event_forward(slot, jj, grp * G + jj, i)
                                    for j in ti.static(range(G)):
                                        if jj == j:
                                            ev[j] = 0
                                            live[j] = lanei[slot, jj, I_LIVE]
                                            for c in ti.static(range(C)):
                                                p[j, c] = lane[slot, jj, L_Q + c]
                                                v[j, c] = lane[slot, jj, L_Q + 3 + c]
                    # -- the adjoint, backwards through the segment (λp is constant
                    # between events; events in the cold part) --
                    iend = ti.Vector([-1] * G)   # last step to reverse
                    nev = ti.Vector([-1] * G)    # the next event to reverse, its step
                    evi = ti.Vector([-1] * G)
                    for jj in range(G):
                        m = lanei[slot, jj, I_NEV] - 1
                        for j in ti.static(range(G)):
                            if jj == j and k <= lastk[j]:
                                iend[j] = n - 1
                                nev[j] = m
                                if m >= 0:
                                    evi[j] = ti.cast(evt[slot, jj, m, E_STEP], ti.i32)
                                    if evt[slot, jj, m, E_BOUNCE] == 0.0:
                                        iend[j] = evi[j]   # the landing: nothing after it
                    for ii in range(n):
                        i = n - 1 - ii
                        anyev = 0
                        for j in ti.static(range(G)):
                            if i == evi[j]:
                                ev[j] = 1
                                anyev = 1
                            elif i <= iend[j]:
                                vz, wz, apz, avz = 0.0, 0.0, 0.0, 0.0
                                if ti.static(dims3):
                                    vz, wz = buf[slot, i, j * C + 2], par[j, 3]
                                    apz, avz = Lp[j, 2], Lv[j, 2]
                                a = step_adjoint(buf[slot, i, j * C], buf[slot, i, j * C + 1], vz,
                                                 Lp[j, 0], Lp[j, 1], apz, Lv[j, 0], Lv[j, 1], avz,
                                                 par[j, 0], par[j, 1], par[j, 2], wz, dt)
                                for c in ti.static(range(C)):
                                    Lv[j, c] = a[c]
                                for c in ti.static(range(NP)):
                                    Lpar[j, c] += a[3 + c]
                        if anyev == 1:
                            for jj in range(G):
                                this, m = 0, 0
                                for j in ti.static(range(G)):
                                    if jj == j and ev[j] == 1:
                                        this, m = 1, nev[j]
                                        for c in ti.static(range(C)):
                                            lane[slot, jj, L_LP + c] = Lp[j, c]
                                            lane[slot, jj, L_LV + c] = Lv[j, c]
                                if this == 1:
                                    event_adjoint(slot, jj, grp * G + jj, m)
                                    nxt = -1
                                    if m >= 1:
                                        nxt = ti.cast(evt[slot, jj, m - 1, E_STEP], ti.i32)
                                    for j in ti.static(range(G)):
                                        if jj == j:
                                            ev[j] = 0
                                            nev[j] = m - 1
                                            evi[j] = nxt
                                            for c in ti.static(range(C)):
                                                Lp[j, c] = lane[slot, jj, L_LP + c]
                                                Lv[j, c] = lane[slot, jj, L_LV + c]
                                            for c in ti.static(range(NP)):
                                                Lpar[j, c] += lane[slot, jj, L_LPAR + c]
                # -- the launch, and the results --
                for jj in range(G):
                    for j in ti.static(range(G)):
                        if jj == j:
                            for c in ti.static(range(C)):
                                lane[slot, jj, L_LP + c] = Lp[j, c]
                                lane[slot, jj, L_LV + c] = Lv[j, c]
                            for c in ti.static(range(NP)):
                                lane[slot, jj, L_LPAR + c] = Lpar[j, c]
                    if grp * G + jj < B:
                        launch_lane(slot, jj, grp * G + jj, gout)

    return reverse
