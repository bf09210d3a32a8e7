"""Controlled ODEs: dx/dt = f(t, x, u, p) with the control u(t) a linear spline on N knots.

    sysm = ControlledODE(f, n_state=2, n_control=1, running=L, final=phi, ...)
    tr = transcribe(sysm, (t0, t1), knots=21, constrained=[0, 1])
    sol = tr.solve(q_knots, y0, phys, target, nu, rho, substeps=10, gradient="adjoint")
    pm = tr.pontryagin(sol)       # λ(t), H(t), ∂H/∂u(t) along the solution

Direct single shooting on the existing ODE machinery (:func:`diffsim.ode.solve`, its
solvers and gradient methods); nothing here integrates by itself. The controlled system
becomes an ordinary :class:`~diffsim.ode.ODE` whose parameter vector holds the knot
values and whose state carries the running cost as one extra component:

- control: u_j(t) = Σ_k q_jk·φ_k(t), φ_k the hat function of knot t_k = t0 + k·Δ,
  Δ = (t1 - t0)/(N - 1) (a continuous linear spline; knots lie on the step grid, so every
  RK4 step sees a smooth u and keeps its order). Bounds on the knot values bound u(t)
  everywhere (a convex combination of two knots).
- state y = (x, z) with z' = L(t, x, u, p): the running cost is integrated by the same
  solver as the state (4th order with RK4; a trapezoid sum would be 2nd), and its
  costate is exactly 1.
- terminal cost: z(T) + φ(x(T), p) + Σ_{i∈C} (ν_i c_i + ρ/2·c_i²), c_i = x_i(T) - target_i
  (augmented Lagrangian; ν = 0 gives the quadratic penalty). The task module updates ν
  and ρ between inner minimisations.

The ODE's parameter vector is [p (physical), t0, 1/Δ, target (n_c), ν (n_c), ρ, knots
(n_u·N)]; with the times as parameters one compiled ODE (cached on the ControlledODE per
knot count and constraint set) serves every horizon.
The continuous adjoint of :func:`~diffsim.ode.solve` (``gradient="adjoint"``) integrates
λ' = -(∂f/∂x)ᵀλ - ∂L/∂x from λ(T) = ∂(terminal)/∂x; its trace gives the costate λ(t) of
Pontryagin's principle with H = L + λᵀf, and dJ/dq_jk = ∫ ∂H/∂u_j·φ_k dt.

Why hat sums and not u = q[k(t)]: indexing a local Taichi vector with an index computed
at run time gave wrong reverse-mode gradients inside the fused time loop (measured with
taichi 1.7.4: 0.64 vs 0.04; the same index into a field, or without a loop, was right),
so every knot contributes max(0, 1 - |s - k|) with k unrolled at compile time.
"""
import contextlib
import math
import warnings

import numpy as np
from ..backend import ti

from ..errors import DiffsimError
from .gradients import jacobians
from .solve import solve
from .solvers import RK4, _at, _local, state_as_list
from .system import MAX_STATE, ODE

#: most knots per control (each is an ODE parameter unrolled into the right-hand side:
#: compile time and the continuous adjoint's per-step matrices grow with it)
MAX_KNOTS = 64
#: most control components
MAX_CONTROLS = 4


class ControlledODE:
    """dx/dt = f(t, x, u, p), x ∈ R^n_state, u ∈ R^n_control, p ∈ R^n_params (physical).

    f: ``@ti.func def f(t, x, u, p) -> ti.Vector(n_state)`` written componentwise (see
    :class:`~diffsim.ode.ODE`). running: ``@ti.func def L(t, x, u, p) -> scalar`` (the
    running cost ∫ L dt; None: 0). final: ``@ti.func def phi(x, p) -> scalar`` (terminal
    cost; None: 0). With n_params = 0 the functions still get a vector p of one unused
    entry. autonomous: f and L do not depend on t (then H is constant along an optimal
    solution, a check the task reports). Units are the user's.
    """

    def __init__(self, f, n_state, n_control=1, n_params=0, *, running=None, final=None,
                 state_names=None, control_names=None, param_names=None, autonomous=True,
                 name="control"):
        if not (isinstance(n_state, int) and 1 <= n_state <= MAX_STATE - 1):
            raise DiffsimError(f"n_state must be an integer in 1..{MAX_STATE - 1} (one more "
                               f"component carries the running cost), got {n_state!r}")
        if not (isinstance(n_control, int) and 1 <= n_control <= MAX_CONTROLS):
            raise DiffsimError(f"n_control must be an integer in 1..{MAX_CONTROLS}, got {n_control!r}")
        if not (isinstance(n_params, int) and 0 <= n_params <= 16):
            raise DiffsimError(f"n_params must be an integer in 0..16, got {n_params!r}")
        self.f, self.n, self.nu, self.m = f, n_state, n_control, n_params
        self.running, self.final = running, final
        self.autonomous = bool(autonomous)
        self.state_names = list(state_names or [f"x{i}" for i in range(n_state)])
        self.control_names = list(control_names or [f"u{j}" for j in range(n_control)])
        self.param_names = list(param_names or [f"p{j}" for j in range(n_params)])
        if (len(self.state_names), len(self.control_names), len(self.param_names)) != \
                (n_state, n_control, n_params):
            raise DiffsimError(f"state_names needs {n_state} names, control_names {n_control} "
                               f"and param_names {n_params}")
        self.name = name
        self._cache = {}

    def __repr__(self):
        return f"ControlledODE({self.name!r}, n_state={self.n}, n_control={self.nu})"


class _ShootingODE(ODE):
    """The transcribed system as an ODE. Its parameter count (knots + multipliers) may
    exceed ODE's MAX_PARAMS, which bounds hand-written parameter vectors: every entry
    here is read by generated code, and the count is bounded by MAX_KNOTS instead."""

    def __init__(self, rhs, n_state, n_params, **kw):
        super().__init__(rhs, n_state, 1, **kw)
        self.m = n_params
        self.param_names = [f"q{j}" for j in range(n_params)]


class Transcription:
    """A :class:`ControlledODE` on [t0, t1] with N knots per control and terminal
    constraints on the state components ``constrained`` (indices). See the module doc for
    the parameter layout; the index attributes (i_target, i_nu, i_rho, i_knots) locate
    its parts."""

    def __init__(self, sysm: ControlledODE, t_span, knots, constrained=()):
        t0, t1 = (float(v) for v in t_span)
        if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
            raise DiffsimError(f"t_span must be (t0, t1) with t1 > t0, got {t_span!r}")
        if not (isinstance(knots, int) and 2 <= knots <= MAX_KNOTS):
            raise DiffsimError(f"knots must be an integer in 2..{MAX_KNOTS}, got {knots!r}")
        constrained = [int(c) for c in constrained]
        if any(not 0 <= c < sysm.n for c in constrained) or len(set(constrained)) != len(constrained):
            raise DiffsimError(f"constrained state indices must be distinct and in 0..{sysm.n - 1}, "
                               f"got {constrained}")
        self.sys, self.t0, self.t1, self.N = sysm, t0, t1, knots
        self.constrained = constrained
        n, nu, nc = sysm.n, sysm.nu, len(constrained)
        self.mp = max(sysm.m, 1)
        self.i_time = self.mp             # t0 and 1/Δ: parameters, so that one compiled
        self.i_target = self.mp + 2       # ODE serves every horizon with N knots
        self.i_nu = self.i_target + nc
        self.i_rho = self.i_nu + nc
        self.i_knots = self.i_rho + 1
        self.n_q = self.i_knots + nu * knots
        self.knot_times = t0 + (t1 - t0) * np.arange(knots) / (knots - 1)
        key = ("shooting", knots, tuple(constrained))
        self.ode = sysm._cache.get(key)
        if self.ode is None:
            self.ode = sysm._cache[key] = self._build()

    # -- the ODE -----------------------------------------------------------------------
    def _build(self):
        sysm = self.sys
        f, L, phi = sysm.f, sysm.running, sysm.final
        n, nu, N, mp = sysm.n, sysm.nu, self.N, self.mp
        ik, it, inu, irho, itm = self.i_knots, self.i_target, self.i_nu, self.i_rho, self.i_time
        cons = list(self.constrained)
        nc = len(cons)
        has_L, has_phi = L is not None, phi is not None

        @ti.func
        def controls(t, q):
            s = (t - q[itm]) * q[itm + 1]
            hats = _local(ti.Vector([ti.max(0.0, 1.0 - ti.abs(s - k)) for k in ti.static(range(N))]))
            return _local(ti.Vector([sum([q[ik + j * N + k] * hats[k] for k in ti.static(range(N))])
                                     for j in ti.static(range(nu))]))

        @ti.func
        def phys(q):
            return ti.Vector([q[j] for j in ti.static(range(mp))])

        as_list = state_as_list()

        def state(y):
            # trace time: the physical state, a list of scalars on Quadrants (a vector of
            # the state's components computed with is differentiated wrongly there,
            # solvers.state_as_list), else a vector
            x = [_at(y, c) for c in range(n)]
            return x if as_list else ti.Vector(x)

        @ti.func
        def rhs(t, y, q):
            x = state(y)
            u = controls(t, q)
            p = phys(q)
            fx = _local(f(t, x, u, p))
            lv = 0.0
            if ti.static(has_L):
                lv = L(t, x, u, p)
            return ti.Vector([fx[c] for c in ti.static(range(n))] + [lv])

        @ti.func
        def terminal(y, q):
            tot = y[n]
            if ti.static(has_phi):
                tot += phi(ti.Vector([y[c] for c in ti.static(range(n))]), phys(q))
            for i in ti.static(range(nc)):
                r = y[cons[i]] - q[it + i]
                tot += q[inu + i] * r + 0.5 * q[irho] * r * r
            return tot

        return _ShootingODE(rhs, n + 1, self.n_q, final=terminal, name=f"{sysm.name} (shooting)",
                            state_names=sysm.state_names + ["running_cost"])

    # -- parameter vectors -------------------------------------------------------------
    def q(self, knots, phys=(), target=(), nu=(), rho=0.0) -> np.ndarray:
        """The ODE's parameter vector from knot values (n_u, N) or flat (n_u·N,),
        physical parameters, constraint targets, multipliers ν and penalty ρ."""
        q = np.zeros(self.n_q)
        q[:len(phys)] = phys
        q[self.i_time:self.i_time + 2] = self.t0, (self.N - 1) / (self.t1 - self.t0)
        nc = len(self.constrained)
        q[self.i_target:self.i_target + nc] = np.broadcast_to(np.asarray(target, float), (nc,)) if nc else []
        q[self.i_nu:self.i_nu + nc] = np.broadcast_to(np.asarray(nu, float), (nc,)) if nc else []
        q[self.i_rho] = rho
        q[self.i_knots:] = np.asarray(knots, dtype=np.float64).ravel()
        return q

    def control(self, knots, ts) -> np.ndarray:
        """u(ts) from knot values (n_u, N): shape (len(ts), n_u) (linear interpolation)."""
        k = np.asarray(knots, dtype=np.float64).reshape(self.sys.nu, self.N)
        return np.stack([np.interp(ts, self.knot_times, k[j]) for j in range(self.sys.nu)], axis=1)

    def hat_weights(self) -> np.ndarray:
        """∫ φ_k dt of every knot's hat (N,): Δ inside, Δ/2 at the ends."""
        d = (self.t1 - self.t0) / (self.N - 1)
        w = np.full(self.N, d)
        w[[0, -1]] = d / 2
        return w

    # -- solving -----------------------------------------------------------------------
    def grid(self, substeps):
        """(dt, times of all grid states) for ``substeps`` RK4 steps per knot interval."""
        steps = (self.N - 1) * int(substeps)
        return (self.t1 - self.t0) / steps, self.t0 + (self.t1 - self.t0) * np.arange(steps + 1) / steps

    def solve(self, q, y0, substeps=10, gradient=None, trace=None, solver=None, adjoint=None):
        """Integrate with every grid state saved. y0: (n,) initial state of x (the running
        cost starts at 0). Returns the :class:`~diffsim.ode.Solution` (its ys has n + 1
        components; loss = running + terminal cost incl. the constraint terms). adjoint: an
        :class:`~diffsim.ode.Adjoint` for gradient="adjoint"."""
        dt, ts = self.grid(substeps)
        y = np.concatenate([np.asarray(y0, dtype=np.float64), [0.0]])
        with _quiet_unroll():
            return solve(self.ode, (self.t0, self.t1), y, q, solver=solver or RK4(), dt=dt,
                         saveat=ts, gradient=gradient, adjoint=adjoint, adjoint_trace=trace)

    def pontryagin(self, q, sol, trace):
        """First-order optimality data along a solution solved with gradient="adjoint"
        and ``trace`` filled: dict of t (M,), x (M, n), u (M, n_u), lam (M, n) the costate
        λ(t) = ∂(cost-to-go)/∂x, lam_cost (M,) the running cost's costate (1 up to the
        adjoint's integration error), H (M,) = L + λᵀf, dHdu (M, n_u) = ∂L/∂u + λᵀ∂f/∂u."""
        tl, lam_t = _trace_path(trace)
        ys, ts = sol.ys[0], sol.ts
        if len(tl) == len(ts) and np.allclose(tl, ts, rtol=0, atol=1e-9 * (self.t1 - self.t0)):
            lam = lam_t
        else:     # a trace on other times (e.g. finer backward steps): λ at the saved states
            lam = np.stack([[np.interp(ts, tl, lam_t[:, b, c]) for c in range(lam_t.shape[2])]
                            for b in range(lam_t.shape[1])]).transpose(2, 0, 1)
        n, nu, N, ik = self.sys.n, self.sys.nu, self.N, self.i_knots
        with _quiet_unroll():
            v, _, jq = jacobians(self.ode, RK4(), 1)("rhs", ys[:, None, :], ts, 0.0, q[None, :])
        v, jq = v[:, 0], jq[:, 0]                         # (M, n+1), (M, n+1, n_q)
        # ∂(f, L)/∂q_jk = ∂(f, L)/∂u_j·φ_k(t) and Σ_k φ_k = 1: summing the knot columns
        # of control j gives ∂(f, L)/∂u_j at any t
        du = np.stack([jq[:, :, ik + j * N: ik + (j + 1) * N].sum(axis=2) for j in range(nu)], axis=2)
        lam_aug = lam[:, 0]                               # (M, n+1): (λ_x, λ_z)
        H = np.einsum("mi,mi->m", lam_aug, v)
        dHdu = np.einsum("mi,mij->mj", lam_aug, du)
        knots = q[ik:].reshape(nu, N)
        return {"t": ts, "x": ys[:, :n], "u": self.control(knots, ts), "lam": lam_aug[:, :n],
                "lam_cost": lam_aug[:, n], "H": H, "dHdu": dHdu,
                "f": v[:, :n], "L": v[:, n]}


@contextlib.contextmanager
def _quiet_unroll():
    """Silence Taichi's "You are unrolling more than N iterations" SyntaxWarning: the
    knot sum and the parameter vector are unrolled on purpose (bounded by MAX_KNOTS)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unrolling more than.*")
        yield


def _trace_path(trace):
    """(times (M,), λ (M, B, n)) from solve's adjoint_trace (a list of (times, λ) per
    segment, in any order), sorted in time with segment-boundary duplicates dropped."""
    if not trace:
        raise DiffsimError("internal: no adjoint trace (solve with gradient='adjoint')")
    ts = np.concatenate([np.asarray(t, dtype=np.float64) for t, _ in trace])
    lam = np.concatenate([np.asarray(l, dtype=np.float64) for _, l in trace])
    order = np.argsort(ts, kind="stable")
    ts, lam = ts[order], lam[order]
    keep = np.concatenate([[True], np.diff(ts) > 1e-12 * max(1.0, abs(ts[-1]))])
    return ts[keep], lam[keep]


# -- bundled controlled systems -----------------------------------------------------------
@ti.func
def _di_f(t, x, u, p):          # x = (position [m], velocity [m/s]); u = acceleration [m/s²]
    return ti.Vector([x[1], u[0]])


@ti.func
def _u_squared(t, x, u, p):     # running cost u² [(m/s²)² · s]
    return u[0] * u[0]


@ti.func
def _pend_f(t, x, u, p):        # x = (θ [rad] from hanging, ω [rad/s]); u = torque/(m l²) [1/s²]
    # p = (g [m/s²], length [m], damping [1/s])
    return ti.Vector([x[1], u[0] - p[0] / p[1] * ti.sin(x[0]) - p[2] * x[1]])


@ti.func
def _zer_f(t, x, u, p):         # x = (x, y) [m]; u = heading θ [rad]; p = (speed V [m/s], shear w [1/s])
    return ti.Vector([p[0] * ti.cos(u[0]) + p[1] * x[1], p[0] * ti.sin(u[0])])


@ti.func
def _zer_final(x, p):           # maximise the downstream distance x(T)
    return -x[0]


SYSTEMS = {
    "double_integrator": ControlledODE(
        _di_f, 2, 1, 0, running=_u_squared, name="double_integrator",
        state_names=["x", "v"], control_names=["u"]),
    "pendulum": ControlledODE(
        _pend_f, 2, 1, 3, running=_u_squared, name="pendulum",
        state_names=["theta", "omega"], control_names=["torque"],
        param_names=["g", "length", "damping"]),
    "zermelo": ControlledODE(
        _zer_f, 2, 1, 2, final=_zer_final, name="zermelo",
        state_names=["x", "y"], control_names=["heading"], param_names=["speed", "shear"]),
}
