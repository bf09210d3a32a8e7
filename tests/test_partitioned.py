"""The second-order step builders of the solver registry (diffsim.ode.solvers.Partitioned),
which the cannon, the mass-spring and the ODE solvers share: the adjoint and the
d/dh they build from each tableau against central differences of the step they build
(float64), on an acceleration that depends on time, positions, velocities and
parameters (the cannon exercises only the velocity-dependent case)."""
import numpy as np
import pytest

from diffsim.backend import ti
from diffsim.ode.solvers import SOLVERS

TABLEAUX = [n for n, S in SOLVERS.items() if getattr(S, "partitioned", None) is not None]
C = 0.3      # coupling of the two components


def accel(t, q, v, p0, p1):
    """a_k = -p0 sin q_k - p1 v_k + C q_(1-k) v_k + t (trace time)."""
    return [-p0 * ti.sin(q[k]) - p1 * v[k] + C * q[1 - k] * v[k] + t for k in range(2)]


def accel_vjp(t, q, v, ab, p0, p1):
    qb = [-p0 * ti.cos(q[0]) * ab[0] + C * v[1] * ab[1],
          -p0 * ti.cos(q[1]) * ab[1] + C * v[0] * ab[0]]
    vb = [(-p1 + C * q[1]) * ab[0], (-p1 + C * q[0]) * ab[1]]
    pb = [-(ti.sin(q[0]) * ab[0] + ti.sin(q[1]) * ab[1]), -(v[0] * ab[0] + v[1] * ab[1])]
    return qb, vb, pb


def accel_jvp(t, q, v, dt, dq, dv, p0, p1):
    out = []
    for k in range(2):
        x = dt * 1.0
        if dq is not None:
            x = x - p0 * ti.cos(q[k]) * dq[k] + C * dq[1 - k] * v[k]
        if dv is not None:
            x = x + (-p1 + C * q[1 - k]) * dv[k]
        out.append(x)
    return out


def _kernels(name):
    tab = SOLVERS[name]().partitioned

    def run(x):
        q, v, h, p, t = [x[0], x[1]], [x[2], x[3]], x[4], (x[5], x[6]), x[7]
        dq, v1 = tab.step(accel, t, q, v, h, p)
        qb, vb, pb = tab.adjoint(accel, accel_vjp, t, q, v, h, p, [x[8], x[9]], [x[10], x[11]])
        ddq, dv = tab.dh(accel, accel_jvp, t, q, v, h, p)
        return tuple(dq + v1 + qb + vb + pb + ddq + dv)

    @ti.kernel
    def k(x: ti.types.ndarray(dtype=ti.f64, ndim=1), out: ti.types.ndarray(dtype=ti.f64, ndim=1)):
        for _ in range(1):
            r = ti.static(run([x[i] for i in range(12)]))
            for i in ti.static(range(len(r))):
                out[i] = r[i]

    def call(x):
        out = np.zeros(18)
        k(np.asarray(x, dtype=np.float64), out)
        return out
    return call


@pytest.mark.parametrize("name", TABLEAUX)
def test_adjoint_and_dh_match_central_differences(name):
    call = _kernels(name)
    x = np.array([0.4, -0.7, 1.3, 0.2, 0.05, 2.0, 0.3, 0.8, 0.9, -1.1, 0.6, 1.7])
    base = call(x)
    # reverse mode: gradient of L = dq_bar·Δq + v_bar·v' in q (2), v (2), p (2)
    want = []
    for i in (0, 1, 2, 3, 5, 6):
        e = 1e-6 * max(1.0, abs(x[i]))
        xp, xm = x.copy(), x.copy()
        xp[i] += e
        xm[i] -= e
        L = lambda o: o[0:2] @ x[8:10] + o[2:4] @ x[10:12]
        want.append((L(call(xp)) - L(call(xm))) / (2 * e))
    np.testing.assert_allclose(base[4:10], want, rtol=1e-7, atol=1e-9, err_msg=name)
    # d/dh of (Δq, v')
    e = 1e-7
    xp, xm = x.copy(), x.copy()
    xp[4] += e
    xm[4] -= e
    fd = (call(xp)[0:4] - call(xm)[0:4]) / (2 * e)
    np.testing.assert_allclose(base[10:14], fd, rtol=1e-7, atol=1e-9, err_msg=name)


def test_unused_stages_are_not_evaluated():
    """Semi-implicit Euler's second stage only carries the kicked velocity into the
    drift: its acceleration is never computed (one force evaluation per step)."""
    from diffsim.ode.solvers import Leapfrog, SemiImplicitEuler
    assert SemiImplicitEuler.partitioned.used == [True, False]
    assert Leapfrog.partitioned.used == [True, True]
