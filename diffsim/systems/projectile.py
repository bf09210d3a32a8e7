"""Batched point-mass projectile: gravity, quadratic drag, wind, ground impact, bounces.

Equations (per cannon b, y up, ground at y = 0):
    dv/dt = -g·ŷ - k·|v - w|·(v - w),   dp/dt = v
k = drag [1/m] (quadratic drag per unit mass), w = wind [m/s] (horizontal: x and z).
Launch from (x0, h, z0) with speed [m/s], elevation ``angle`` [rad] above the
horizontal and ``azimuth`` [rad] from +x towards +z (3D only).

Ground impact is an event located *inside* the step where y changes sign: the impact
fraction s ∈ [0, 1] is the root of the cubic Hermite interpolant of y through the step's
end points and velocities (exact when acceleration is constant, e.g. RK4 without drag),
found by Newton iterations from the linear guess. Impact point, time and velocity are
smooth functions of the state, so landing distance and flight time are differentiable
in every parameter. A bounce reflects the vertical impact velocity with restitution e
and spends the rest of the step moving away from the ground. After ``bounces`` bounces
the next impact is the *landing*: the cannon stops and its landing point and time are
the outputs. Derivatives are by Taichi's reverse-mode AD of these kernels.

The time loop is fused into one kernel launch per segment of at most
``runtime.MAX_FUSED_STEPS`` steps, parallel over the batch; segment boundary states are
stored, and the reverse pass runs the segments' gradient kernels backwards.
"""

import math

import numpy as np
import taichi as ti

from .. import runtime
from ..errors import DiffsimError, SimulationError

INTEGRATORS = ("symplectic_euler", "euler", "rk4")

#: per-cannon inputs that carry gradients, in this order everywhere
INPUTS = ("x0", "height", "z0", "speed", "angle", "azimuth",
          "gravity", "drag", "wind_x", "wind_z", "restitution", "target_x", "target_z")
#: per-cannon outputs
OUTPUTS = ("land_x", "land_z", "land_t")
OBJECTIVES = ("miss", "range", "flight_time")
# Row of each name in the packed input/output fields (inp[I_SPEED, b], out_f[O_LAND_X, b]).
(I_X0, I_HEIGHT, I_Z0, I_SPEED, I_ANGLE, I_AZIMUTH, I_GRAVITY, I_DRAG, I_WIND_X, I_WIND_Z,
 I_RESTITUTION, I_TARGET_X, I_TARGET_Z) = range(len(INPUTS))
O_LAND_X, O_LAND_Z, O_LAND_T = range(len(OUTPUTS))
_NEWTON = 4


class Projectile(runtime.RuntimeBound):
    """B projectiles integrated together; gradients of a scalar objective by reverse AD.

    batch: number of cannons B. steps: fixed time steps of ``dt`` seconds each (the
    horizon; a cannon that lands earlier stops). dims: 2 (x, y) or 3 (x, y, z).
    integrator: "symplectic_euler" (default), "euler" or "rk4". bounces: impacts that
    bounce before the one that lands.
    """

    def __init__(self, batch=1, *, steps=1000, dt=0.01, dims=2,
                 integrator="symplectic_euler", bounces=0):
        info = self._bind_runtime()
        if not (isinstance(batch, (int, np.integer)) and batch >= 1):
            raise DiffsimError(f"batch must be a positive integer, got {batch!r}")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise DiffsimError(f"dt must be a positive finite number of seconds, got {dt!r}")
        if integrator not in INTEGRATORS:
            raise DiffsimError(f"integrator={integrator!r} is not known; use one of {', '.join(INTEGRATORS)}")
        if dims not in (2, 3):
            raise DiffsimError(f"dims must be 2 or 3, got {dims!r}")
        if not (isinstance(bounces, int) and bounces >= 0):
            raise DiffsimError(f"bounces must be an integer >= 0, got {bounces!r}")
        self.B, self.steps, self.dt, self.dims = int(batch), int(steps), float(dt), dims
        self.integrator, self.bounces = integrator, bounces
        self.segs = runtime.segments(self.steps)
        real = info.real
        self.real, self.np_real = real, info.numpy_dtype
        B, K = self.B, len(self.segs)
        # Inputs and outputs are packed in one 2-D field each, so moving them between
        # numpy and Taichi costs one copy (a kernel launch) instead of one per name.
        self.inp = ti.field(real, (len(INPUTS), B), needs_grad=True)
        self.out = ti.field(real, (len(OUTPUTS), B), needs_grad=True)
        self.state = [ti.field(real, (K + 1, B), needs_grad=True) for _ in range(6)]
        self.alive = ti.field(ti.i32, (K + 1, B))
        self.nbounce = ti.field(ti.i32, (K + 1, B))
        self.weight = ti.field(real, B)
        self.loss = ti.field(real, (), needs_grad=True)
        self._traj = None
        self._dummy = ti.Vector.field(3, real, (1, 1))
        self._objective_kind = None
        self._compile()
        # sensible defaults so a bare Projectile runs
        self.set_inputs(speed=30.0, angle=0.7, gravity=9.81)
        self.weight.fill(1.0)

    # -- kernels ---------------------------------------------------------------------
    def _compile(self):
        dims3 = self.dims == 3
        integ = self.integrator
        inp, out_f, S = self.inp, self.out, self.state
        alive, nb, loss, weight = self.alive, self.nbounce, self.loss, self.weight
        max_bounce = self.bounces
        B = self.B

        @ti.func
        def accel(vx, vy, vz, g, k, wx, wz):
            rx, ry, rz = vx - wx, vy, vz - wz
            sp = ti.sqrt(rx * rx + ry * ry + rz * rz)
            return ti.Vector([-k * sp * rx, -g - k * sp * ry, -k * sp * rz])

        @ti.func
        def integrate(px, py, pz, vx, vy, vz, g, k, wx, wz, dt):
            """One step; returns (x, y, z, vx, vy, vz) at the end of it."""
            out = ti.Vector.zero(float, 6)
            if ti.static(integ == "symplectic_euler"):
                a = accel(vx, vy, vz, g, k, wx, wz)
                nvx, nvy, nvz = vx + dt * a[0], vy + dt * a[1], vz + dt * a[2]
                out = ti.Vector([px + dt * nvx, py + dt * nvy, pz + dt * nvz, nvx, nvy, nvz])
            elif ti.static(integ == "euler"):
                a = accel(vx, vy, vz, g, k, wx, wz)
                out = ti.Vector([px + dt * vx, py + dt * vy, pz + dt * vz,
                                 vx + dt * a[0], vy + dt * a[1], vz + dt * a[2]])
            else:  # classic RK4 (1/6, 1/3, 1/3, 1/6)
                a1 = accel(vx, vy, vz, g, k, wx, wz)
                b2x, b2y, b2z = vx + 0.5 * dt * a1[0], vy + 0.5 * dt * a1[1], vz + 0.5 * dt * a1[2]
                a2 = accel(b2x, b2y, b2z, g, k, wx, wz)
                b3x, b3y, b3z = vx + 0.5 * dt * a2[0], vy + 0.5 * dt * a2[1], vz + 0.5 * dt * a2[2]
                a3 = accel(b3x, b3y, b3z, g, k, wx, wz)
                b4x, b4y, b4z = vx + dt * a3[0], vy + dt * a3[1], vz + dt * a3[2]
                a4 = accel(b4x, b4y, b4z, g, k, wx, wz)
                c = dt / 6.0
                out = ti.Vector([
                    px + c * (vx + 2 * b2x + 2 * b3x + b4x),
                    py + c * (vy + 2 * b2y + 2 * b3y + b4y),
                    pz + c * (vz + 2 * b2z + 2 * b3z + b4z),
                    vx + c * (a1[0] + 2 * a2[0] + 2 * a3[0] + a4[0]),
                    vy + c * (a1[1] + 2 * a2[1] + 2 * a3[1] + a4[1]),
                    vz + c * (a1[2] + 2 * a2[2] + 2 * a3[2] + a4[2])])
            return out

        @ti.func
        def impact_fraction(y0, y1, m0, m1):
            """Root s in [0,1] of the cubic Hermite y(s) with y(0)=y0>=0 > y1=y(1) and
            end slopes m0, m1 (= dt·vy); Newton from the linear guess."""
            s0 = y0 / (y0 - y1)
            s = s0
            for _ in ti.static(range(_NEWTON)):
                s2 = s * s
                s3 = s2 * s
                f = (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * m0 \
                    + (-2 * s3 + 3 * s2) * y1 + (s3 - s2) * m1
                df = (6 * s2 - 6 * s) * y0 + (3 * s2 - 4 * s + 1) * m0 \
                    + (-6 * s2 + 6 * s) * y1 + (3 * s2 - 2 * s) * m1
                s = ti.min(ti.max(s - f / df, 0.0), 1.0)
            return s

        @ti.func
        def hermite(x0, x1, m0, m1, s):
            s2 = s * s
            s3 = s2 * s
            return (2 * s3 - 3 * s2 + 1) * x0 + (s3 - 2 * s2 + s) * m0 \
                + (-2 * s3 + 3 * s2) * x1 + (s3 - s2) * m1

        @ti.kernel
        def launch():
            for b in range(B):
                sp, el = inp[I_SPEED, b], inp[I_ANGLE, b]
                az = 0.0
                if ti.static(dims3):
                    az = inp[I_AZIMUTH, b]
                S[0][0, b] = inp[I_X0, b]
                S[1][0, b] = inp[I_HEIGHT, b]
                S[2][0, b] = inp[I_Z0, b]
                S[3][0, b] = sp * ti.cos(el) * ti.cos(az)
                S[4][0, b] = sp * ti.sin(el)
                S[5][0, b] = sp * ti.cos(el) * ti.sin(az)
                alive[0, b] = 1
                nb[0, b] = 0

        @ti.kernel
        def segment(k: ti.i32, t0: ti.i32, n: ti.i32, dt: ti.template(),
                    traj: ti.template(), record: ti.template()):
            for b in range(B):
                px, py, pz = S[0][k, b], S[1][k, b], S[2][k, b]
                vx, vy, vz = S[3][k, b], S[4][k, b], S[5][k, b]
                live, bounced = alive[k, b], nb[k, b]
                g, kd, e = inp[I_GRAVITY, b], inp[I_DRAG, b], inp[I_RESTITUTION, b]
                wx, wz = inp[I_WIND_X, b], 0.0
                if ti.static(dims3):
                    wz = inp[I_WIND_Z, b]
                lx, lz, lt = 0.0, 0.0, 0.0
                for i in range(n):
                    if live == 1:
                        q = integrate(px, py, pz, vx, vy, vz, g, kd, wx, wz, dt)
                        nx, ny, nz, nvx, nvy, nvz = q[0], q[1], q[2], q[3], q[4], q[5]
                        if ny < 0.0:
                            s = impact_fraction(py, ny, dt * vy, dt * nvy)
                            ix = hermite(px, nx, dt * vx, dt * nvx, s)
                            iz = hermite(pz, nz, dt * vz, dt * nvz, s)
                            ivx = vx + s * (nvx - vx)
                            ivy = vy + s * (nvy - vy)
                            ivz = vz + s * (nvz - vz)
                            if bounced < max_bounce:
                                # The rest of the step starts at the impact with the
                                # reflected velocity, integrated by the same method, so
                                # the state is continuous in the impact phase s (a
                                # remainder without gravity gave a sawtooth objective).
                                r = (1.0 - s) * dt
                                q2 = integrate(ix, 0.0, iz, ivx, -e * ivy, ivz, g, kd, wx, wz, r)
                                nx, ny, nz = q2[0], ti.max(q2[1], 0.0), q2[2]
                                nvx, nvy, nvz = q2[3], q2[4], q2[5]
                                bounced += 1
                            else:
                                lx, lz, lt = ix, iz, (t0 + i + s) * dt
                                nx, ny, nz = ix, 0.0, iz
                                nvx, nvy, nvz = 0.0, 0.0, 0.0
                                live = 0
                        px, py, pz, vx, vy, vz = nx, ny, nz, nvx, nvy, nvz
                    if ti.static(record):
                        traj[t0 + i + 1, b] = ti.Vector([px, py, pz])
                S[0][k + 1, b], S[1][k + 1, b], S[2][k + 1, b] = px, py, pz
                S[3][k + 1, b], S[4][k + 1, b], S[5][k + 1, b] = vx, vy, vz
                alive[k + 1, b], nb[k + 1, b] = live, bounced
                out_f[O_LAND_X, b] += lx
                out_f[O_LAND_Z, b] += lz
                out_f[O_LAND_T, b] += lt

        K = len(self.segs)
        t_end = self.steps * self.dt

        @ti.kernel
        def finish():
            # A cannon still flying at the horizon "lands" where it is, at t_end; the
            # summary flags it (landed = False).
            for b in range(B):
                if alive[K, b] == 1:
                    out_f[O_LAND_X, b] += S[0][K, b]
                    out_f[O_LAND_Z, b] += S[2][K, b]
                    out_f[O_LAND_T, b] += t_end

        @ti.kernel
        def objective(kind: ti.i32, sign: ti.template()):
            for b in range(B):
                val = 0.0
                if kind == 0:
                    dx = out_f[O_LAND_X, b] - inp[I_TARGET_X, b]
                    dz = out_f[O_LAND_Z, b] - inp[I_TARGET_Z, b]
                    val = 0.5 * (dx * dx + dz * dz)
                elif kind == 1:
                    dx = out_f[O_LAND_X, b] - inp[I_X0, b]
                    dz = out_f[O_LAND_Z, b] - inp[I_Z0, b]
                    if ti.static(dims3):
                        val = ti.sqrt(dx * dx + dz * dz)
                    else:
                        val = dx
                else:
                    val = out_f[O_LAND_T, b]
                loss[None] += sign * weight[b] * val

        @ti.kernel
        def clear():
            loss[None] = 0.0
            loss.grad[None] = 0.0
            for b in range(B):
                for j in ti.static(range(len(INPUTS))):
                    inp.grad[j, b] = 0.0
                for j in ti.static(range(len(OUTPUTS))):
                    out_f.grad[j, b] = 0.0
                    out_f[j, b] = 0.0
                for kk in range(K + 1):
                    for f in ti.static(S):
                        f.grad[kk, b] = 0.0

        self._k = dict(launch=launch, segment=segment, finish=finish, objective=objective,
                       clear=clear)

    # -- inputs / outputs ------------------------------------------------------------
    def set_inputs(self, **values) -> None:
        """Set per-cannon inputs by name: a scalar (all cannons) or an array of shape (B,)."""
        self._check_runtime()
        for name in values:
            if name not in INPUTS:
                raise DiffsimError(f"unknown projectile input {name!r}; known: {', '.join(INPUTS)}")
        a = self.inp.to_numpy() if len(values) < len(INPUTS) else np.zeros((len(INPUTS), self.B))
        for name, v in values.items():
            a[INPUTS.index(name)] = np.broadcast_to(np.asarray(v, dtype=np.float64), (self.B,))
        self.inp.from_numpy(a.astype(self.np_real))

    def get_inputs(self):
        """Current inputs: name -> array (B,)."""
        a = self.inp.to_numpy().astype(np.float64)
        return {n: a[j] for j, n in enumerate(INPUTS)}

    def forward(self, objective="miss", maximize=False) -> float:
        """Simulate every cannon; returns the batch objective (sum over cannons).

        objective: "miss" (½·squared distance from landing point to target, m²),
        "range" (horizontal landing distance from the launch point, m) or
        "flight_time" (s); ``maximize`` negates it.
        """
        self._check_runtime()
        if objective not in OBJECTIVES:
            raise DiffsimError(f"objective={objective!r} is not known; use one of {', '.join(OBJECTIVES)}")
        self._check_stability()
        k = self._k
        k["clear"]()
        k["launch"]()
        for i, (t0, n) in enumerate(self.segs):
            k["segment"](i, t0, n, self.dt, self._dummy, False)
        k["finish"]()
        self._objective_args = (OBJECTIVES.index(objective), -1.0 if maximize else 1.0)
        k["objective"](*self._objective_args)
        val = float(self.loss[None])
        if not math.isfinite(val):
            raise SimulationError(
                f"the simulation produced {val} (it blew up): dt={self.dt} s may be too large "
                "for this drag and speed, or a parameter is NaN; lower sim.dt or check the inputs")
        return val

    def _check_stability(self):
        # An explicit step of dv/dt = -k|v|v is stable only for dt·k·|v| < 1; beyond it the
        # speed flips sign and grows every step: finite but meaningless numbers.
        a = self.inp.to_numpy().astype(np.float64)
        k, g = a[I_DRAG], a[I_GRAVITY]
        v = np.abs(a[I_SPEED]) + np.hypot(a[I_WIND_X], a[I_WIND_Z])
        vterm = np.sqrt(np.where(k > 0, g / np.where(k > 0, k, 1.0), 0.0))
        worst = float(np.max(self.dt * k * np.maximum(v, vterm)))
        if worst > 1.0 or not np.all(np.isfinite(a)):
            bad = [n for j, n in enumerate(INPUTS) if not np.all(np.isfinite(a[j]))]
            if bad:
                raise SimulationError(f"input(s) {', '.join(bad)} are NaN or infinite")
            raise SimulationError(
                f"the simulation would blow up: dt·drag·speed = {worst:.3g} > 1 makes the "
                f"explicit step unstable; lower sim.dt below {self.dt / worst:.3g} s or the drag")

    def backward(self):
        """Reverse-mode sweep after :meth:`forward`; returns d objective / d input, each (B,)."""
        self._check_runtime()
        k = self._k
        self.loss.grad[None] = 1.0
        k["objective"].grad(*self._objective_args)
        k["finish"].grad()
        for i in reversed(range(len(self.segs))):
            t0, n = self.segs[i]
            k["segment"].grad(i, t0, n, self.dt, self._dummy, False)
        k["launch"].grad()
        g = self.inp.grad.to_numpy().astype(np.float64)
        return {n: g[j] for j, n in enumerate(INPUTS)}

    def outputs(self):
        """Landing x, z [m], time [s] per cannon, and ``landed`` (False: still flying at
        the horizon), ``bounces`` made."""
        self._check_runtime()
        K = len(self.segs)
        a = self.out.to_numpy().astype(np.float64)
        d = {n: a[j] for j, n in enumerate(OUTPUTS)}
        d["landed"] = self.alive.to_numpy()[K] == 0
        d["bounces"] = self.nbounce.to_numpy()[K]
        return d

    # -- trajectories (forward only, for plots) --------------------------------------
    def trace(self) -> np.ndarray:
        """Positions of every cannon at every step: shape (steps + 1, B, 3), metres
        (x, y up, z). Forward only; after landing a cannon stays at its landing point."""
        self._check_runtime()
        if self._traj is None:
            self._traj = ti.Vector.field(3, self.real, (self.steps + 1, self.B))
        k = self._k
        k["clear"]()
        k["launch"]()
        self._k_first_row()
        for i, (t0, n) in enumerate(self.segs):
            k["segment"](i, t0, n, self.dt, self._traj, True)
        return self._traj.to_numpy().astype(np.float64)

    def _k_first_row(self):
        S, traj = self.state, self._traj
        if not hasattr(self, "_first_row"):
            B = self.B

            @ti.kernel
            def first_row():
                for b in range(B):
                    traj[0, b] = ti.Vector([S[0][0, b], S[1][0, b], S[2][0, b]])
            self._first_row = first_row
        self._first_row()
