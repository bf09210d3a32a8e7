"""Continuous adjoint of the projectile ODE with impact events (the ``Adjoint`` method).

State y = (x, y, z, vx, vy, vz), f(y) = (v, a(v)), a = -g·ŷ - k·|r|·r with r = v - w,
w = (wx, 0, wz). The objective Φ(y(τ), τ) is evaluated at the landing event τ (the impact
that does not bounce: g(y) = y_2 = 0 with ∂g/∂y = ŷ), or at the horizon T for a cannon
still flying. Parameters p = (gravity, drag, wind_x, wind_z, restitution); launch inputs
enter through y(0).

Backwards in time from the landing (s = -t):

- landing: λ(τ⁻) = c·[Φ_y - (Φ_y·f⁻ + Φ_t)/(ŷ·f⁻)·ŷ]  (c = ±weight; the event-time
  correction: moving the state moves the landing time by -ŷ·δy/(ŷ·f⁻));
- flight: dλ/ds = Jᵀλ, dμ/ds = f_pᵀλ  (J = ∂f/∂y, μ accumulates dL/dp);
- bounce y⁺ = R(y⁻) (vy → -e·vy): λ(τ⁻) = R_yᵀλ⁺ - [λ⁺·(R_y f⁻ - f⁺)/(ŷ·f⁻)]·ŷ and
  dL/de += λ⁺·∂R/∂e = -vy⁻·λ⁺_vy;
- launch: dL/d(speed, angle, ...) = λ(0)·∂y(0)/∂(...).

λ is integrated with the forward's method on the forward's own grid: classic RK4 (RK4
forward, states between grid points from the cubic Hermite interpolant of the recorded
states, as the ODE module's checkpointed adjoint does) or explicit Euler (Euler and
symplectic Euler forwards); an impact splits its step into the part before and after
it. The states and events come from :meth:`Projectile.record_states` (every step kept:
memory O(steps·B)). The result is the gradient of the exact ODE's objective up to this
discretisation error, so it differs from the discrete gradient by O(dt^p);
``CannonProblem.gradient_error`` estimates that by step doubling.

The Jacobians J, f_p are written out here in numpy (closed forms of the drag law);
tests compare the adjoint with finite differences of an independent high-accuracy solve.
"""
import numpy as np

from .. import runtime
from ..errors import DiffsimError
from .projectile import (I_ANGLE, I_AZIMUTH, I_DRAG, I_GRAVITY, I_HEIGHT, I_RESTITUTION,
                         I_SPEED, I_TARGET_X, I_TARGET_Z, I_WIND_X, I_WIND_Z, I_X0, I_Z0,
                         INPUTS, O_LAND_X, O_LAND_Z, OBJECTIVES)

#: the physics parameters μ accumulates, in this order
PHYS = (I_GRAVITY, I_DRAG, I_WIND_X, I_WIND_Z, I_RESTITUTION)


def _rhs_parts(y, g, k, wx, wz):
    """f(y) (..., 6), Da = ∂a/∂v (..., 3, 3) and the relative velocity r, |r|."""
    v = y[..., 3:]
    r = v - np.stack([wx, np.zeros_like(wx), wz], axis=-1)
    rho = np.sqrt(np.sum(r * r, axis=-1))
    safe = np.where(rho > 0, rho, 1.0)
    a = -k[..., None] * rho[..., None] * r
    a[..., 1] -= g
    eye = np.eye(3)
    Da = -k[..., None, None] * (rho[..., None, None] * eye
                                + np.where(rho[..., None, None] > 0,
                                           r[..., :, None] * r[..., None, :] / safe[..., None, None], 0.0))
    return np.concatenate([v, a], axis=-1), Da, r, rho


def _adjoint_ops(y, g, k, wx, wz):
    """A = Jᵀ (..., 6, 6) and C = f_pᵀ (..., 5, 6) at states y (..., 6)."""
    _, Da, r, rho = _rhs_parts(y, g, k, wx, wz)
    sh = y.shape[:-1]
    A = np.zeros(sh + (6, 6))
    A[..., 3:, :3] = np.eye(3)          # (Jᵀλ)_v = λ_x + Daᵀ λ_v (Da symmetric)
    A[..., 3:, 3:] = Da
    C = np.zeros(sh + (5, 6))
    C[..., 0, 4] = -1.0                                 # ∂a/∂gravity = -ŷ
    C[..., 1, 3:] = -rho[..., None] * r                 # ∂a/∂drag = -|r|·r
    C[..., 2, 3:] = -Da[..., :, 0]                      # ∂a/∂w = -Da
    C[..., 3, 3:] = -Da[..., :, 2]
    return A, C


def _interval_maps(ya, yb, h, rk4, par):
    """Affine maps of λ over [a, b] integrated backwards, for arrays of intervals
    (..., 6) with lengths h (...): λ_a = R λ_b and μ += G λ_b; h = 0 gives R = I, G = 0."""
    g, k, wx, wz = par
    Ab, Cb = _adjoint_ops(yb, g, k, wx, wz)
    eye = np.eye(6)
    hv = h[..., None, None]
    if not rk4:   # explicit Euler in s from b
        return eye + hv * Ab, hv * Cb
    fa = _rhs_parts(ya, g, k, wx, wz)[0]
    fb = _rhs_parts(yb, g, k, wx, wz)[0]
    mid = 0.5 * (ya + yb) + h[..., None] / 8.0 * (fa - fb)   # cubic Hermite midpoint
    Am, Cm = _adjoint_ops(mid, g, k, wx, wz)
    Aa, Ca = _adjoint_ops(ya, g, k, wx, wz)
    M = np.broadcast_to(eye, Ab.shape)
    Rsum = np.zeros_like(Ab)
    Gsum = np.zeros(Ab.shape[:-2] + (5, 6))
    for A, C, w, nxt in ((Ab, Cb, 1.0, 0.5), (Am, Cm, 2.0, 0.5), (Am, Cm, 2.0, 1.0), (Aa, Ca, 1.0, None)):
        K = A @ M                      # stage slope k_q = K λ_b
        Rsum = Rsum + w * K
        Gsum = Gsum + w * (C @ M)
        if nxt is not None:
            M = eye + nxt * hv * K
    return eye + hv / 6.0 * Rsum, hv / 6.0 * Gsum


def continuous_adjoint(sim, objective="miss", maximize=False, factor=1):
    """The continuous adjoint of ``sim`` (a Projectile) at its current inputs, integrated
    on steps of dt/factor: (objective at dt/factor, {input name: d objective / d input,
    (B,)}) for every name in INPUTS (module docstring)."""
    kind = OBJECTIVES.index(objective)
    sign = -1.0 if maximize else 1.0
    B, N = sim.B, sim.steps * factor
    h = sim.dt / factor
    runtime.check_memory(8.0 * N * B * (6 * 6 * 8 + 5 * 6 * 4),
                         what=f"the adjoint's step maps of {B} cannons × {N} steps",
                         key="batch × steps", value=(B, N))
    states, events = sim.record_states(factor)
    if factor == 1:
        val = sim.forward(objective, maximize, strict=False)
    else:   # the objective on the same grid as the adjoint
        sim._sweep(factor, (kind, sign))
        val = float(sim._res[-1, 0])
    out = sim.outputs()
    inp = sim._inp_np
    c = sign * sim.weight.to_numpy().astype(np.float64)
    g, k, wx, wz, e = (inp[j] for j in PHYS)
    if sim.dims == 2:
        wz = np.zeros(B)
    par = (g, k, wx, wz)
    rk4 = sim.integrator == "rk4"
    X0, Z0, TX, TZ = inp[I_X0], inp[I_Z0], inp[I_TARGET_X], inp[I_TARGET_Z]

    def phi_y(ypos):
        """∂Φ/∂y (B, 6) at landing positions (B, 3) and direct dΦ/d(x0, z0, tx, tz)."""
        py = np.zeros((B, 6))
        direct = np.zeros((B, 4))
        if kind == 0:
            dx, dz = ypos[:, 0] - TX, ypos[:, 2] - TZ
            py[:, 0], py[:, 2] = dx, dz
            direct[:, 2], direct[:, 3] = -dx, -dz
        elif kind == 1:
            dx, dz = ypos[:, 0] - X0, ypos[:, 2] - Z0
            if sim.dims == 3:
                rho = np.hypot(dx, dz)
                rho = np.where(rho > 0, rho, 1.0)
                py[:, 0], py[:, 2] = dx / rho, dz / rho
            else:
                py[:, 0] = 1.0
            direct[:, 0], direct[:, 1] = -py[:, 0], -py[:, 2]
        return py, direct

    # -- per-step pieces: part A (after an event) then jump then part B (before it) --
    yA_a, yA_b = states[:-1].copy(), states[1:].copy()
    hA = np.full((N, B), h)
    yB_a, yB_b = states[:-1].copy(), states[:-1].copy()
    hB = np.zeros((N, B))
    Jm = np.broadcast_to(np.eye(6), (N, B, 6, 6)).copy()
    Gj = np.zeros((N, B, 5, 6))
    ell = np.zeros((N, B, 6))
    lam = np.zeros((B, 6))
    direct = np.zeros((B, 4))
    last = np.full(B, N)           # first step index after which the cannon is at rest
    py_T, direct_T = phi_y(states[-1, :, :3])
    for b in range(B):
        ev = events[:, b]
        ev = ev[ev[:, 0] >= 0]
        landed = bool(out["landed"][b])
        for j, row in enumerate(ev):
            i, s = int(round(row[0])), row[1]
            ym, yp = row[2:8], row[8:14]
            fm = _rhs_parts(ym[None], g[b:b + 1], k[b:b + 1], wx[b:b + 1], wz[b:b + 1])[0][0]
            vym = ym[4]
            if abs(vym) < 1e-300:
                raise DiffsimError("the continuous adjoint needs a transversal impact (vertical "
                                   "velocity ≠ 0 at the ground); a grazing impact has no "
                                   "differentiable event time: use --method discrete")
            yB_a[i, b], yB_b[i, b], hB[i, b] = states[i, b], ym, s * h
            if landed and j == len(ev) - 1:
                py, dr = phi_y(np.broadcast_to(ym[:3], (B, 3)))
                phit = 1.0 if kind == 2 else 0.0
                lvec = py[b].copy()
                lvec[1] -= (lvec[:3] @ fm[:3] + phit) / vym    # event-time correction
                ell[i, b] = c[b] * lvec
                direct[b] = c[b] * dr[b]
                Jm[i, b] = 0.0
                hA[i, b] = 0.0
                hA[i + 1:, b] = 0.0
                last[b] = i
            else:
                fp = _rhs_parts(yp[None], g[b:b + 1], k[b:b + 1], wx[b:b + 1], wz[b:b + 1])[0][0]
                Ry = np.diag([1.0, 1.0, 1.0, 1.0, -e[b], 1.0])
                d = Ry @ fm - fp
                # λ⁻ = R_yᵀλ⁺ - (λ⁺·d / vy⁻)·ŷ  as a matrix acting on λ⁺
                Jm[i, b] = Ry.T - np.outer(np.eye(6)[1], d) / vym
                Gj[i, b, 4, 4] = -vym                       # dL/de += λ⁺·∂R/∂e
                yA_a[i, b], hA[i, b] = yp, (1.0 - s) * h
        if not landed:      # still flying at the horizon: Φ at y(T), no event
            lam[b] = c[b] * py_T[b]
            direct[b] = c[b] * direct_T[b]

    parb = tuple(np.broadcast_to(q, (N, B)) for q in par)
    RA, GA = _interval_maps(yA_a, yA_b, hA, rk4, parb)
    RB, GB = _interval_maps(yB_a, yB_b, hB, rk4, parb)
    JRA = Jm @ RA
    R = RB @ JRA
    r = np.einsum("nbij,nbj->nbi", RB, ell)
    G = GA + Gj @ RA + GB @ JRA
    gvec = np.einsum("nbij,nbj->nbi", GB, ell)
    mu = np.zeros((B, 5))
    for i in range(int(min(last.max(), N - 1)), -1, -1):
        mu += np.einsum("bij,bj->bi", G[i], lam) + gvec[i]
        lam = np.einsum("bij,bj->bi", R[i], lam) + r[i]

    # -- launch: y(0) = (x0, h, z0, sp·cos el·cos az, sp·sin el, sp·cos el·sin az) --
    sp, el = inp[I_SPEED], inp[I_ANGLE]
    az = inp[I_AZIMUTH] if sim.dims == 3 else np.zeros(B)
    lv = lam[:, 3:]
    grad = {n: np.zeros(B) for n in INPUTS}
    grad["x0"] = lam[:, 0] + direct[:, 0]
    grad["height"] = lam[:, 1]
    grad["z0"] = lam[:, 2] + direct[:, 1]
    grad["speed"] = (lv[:, 0] * np.cos(el) * np.cos(az) + lv[:, 1] * np.sin(el)
                                        + lv[:, 2] * np.cos(el) * np.sin(az))
    grad["angle"] = sp * (-lv[:, 0] * np.sin(el) * np.cos(az) + lv[:, 1] * np.cos(el)
                          - lv[:, 2] * np.sin(el) * np.sin(az))
    if sim.dims == 3:
        grad["azimuth"] = sp * np.cos(el) * (-lv[:, 0] * np.sin(az) + lv[:, 2] * np.cos(az))
    for j, idx in enumerate(PHYS):
        grad[INPUTS[idx]] = mu[:, j]
    if sim.dims == 2:
        grad["wind_z"] = np.zeros(B)
    grad["target_x"], grad["target_z"] = direct[:, 2], direct[:, 3]
    return val, grad
