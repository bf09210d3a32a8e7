"""Hessian-vector products and dense Hessians (diffsim.hessian) against closed forms and
against independent finite differences, and the `diffsim hessian` verb."""
import json
import math

import numpy as np
import pytest

from diffsim import build, load
from diffsim.cli import main
from diffsim.errors import DiffsimError
from diffsim.hessian import hessian, hvp
from diffsim.problem import Param, Parameters, Problem


class Smooth(Problem):
    """f = ½xᵀAx + Σ exp(c_i x_i) + x0²·x1³: Hessian A + diag(c² e^{cx}) + the cubic's."""

    name = "smooth"

    def __init__(self, x0=(0.3, -0.7, 1.1), bounds=None):
        lo, hi = bounds or (-math.inf, math.inf)
        self.params = Parameters([Param(f"x{i}", v, lo, hi, True) for i, v in enumerate(x0)])
        rng = np.random.default_rng(1)
        M = rng.standard_normal((3, 3))
        self.A = M @ M.T + np.diag([1.0, 2.0, 3.0])
        self.c = np.array([0.5, -1.2, 0.8])

    def _objective(self, x):
        return float(0.5 * x @ self.A @ x + np.sum(np.exp(self.c * x)) + x[0] ** 2 * x[1] ** 3)

    def _value_and_grad(self, x, method):
        g = self.A @ x + self.c * np.exp(self.c * x)
        g[0] += 2 * x[0] * x[1] ** 3
        g[1] += 3 * x[0] ** 2 * x[1] ** 2
        return self._objective(x), g

    def exact(self, x):
        H = self.A + np.diag(self.c ** 2 * np.exp(self.c * x))
        H[0, 0] += 2 * x[1] ** 3
        H[1, 1] += 6 * x[0] ** 2 * x[1]
        H[0, 1] += 6 * x[0] * x[1] ** 2
        H[1, 0] += 6 * x[0] * x[1] ** 2
        return H


class WithExactHVP(Smooth):
    def exact_hvp(self, x, v, method):
        return self.exact(x) @ v


def test_closed_form_hessian_and_hvp():
    pb = Smooth()
    x = pb.x0()
    H = pb.exact(x)
    res = hessian(pb)
    assert res.method == "fd-of-gradient"
    np.testing.assert_allclose(res.matrix, H, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(res.eigenvalues, np.linalg.eigvalsh(H), rtol=1e-8)
    # the error estimate bounds the actual error and is not absurdly loose
    assert np.all(np.abs(res.matrix - H) <= res.error + 1e-12)
    assert res.error.max() < 1e-5
    assert res.evaluations == 1 + 4 * 3
    v = np.array([0.2, -1.0, 0.5])
    r = hvp(pb, v, error_estimate=True)
    np.testing.assert_allclose(r.value, H @ v, rtol=1e-8)
    assert r.method == "fd-of-gradient" and r.evaluations == 4
    assert np.all(np.abs(r.value - H @ v) <= r.error + 1e-12)


def test_an_exact_hvp_hook_is_used_and_says_so():
    pb = WithExactHVP()
    H = pb.exact(pb.x0())
    res = hessian(pb)
    assert res.method == "exact" and res.note == ""
    np.testing.assert_allclose(res.matrix, H, rtol=1e-14)
    r = hvp(pb, np.ones(3))
    assert r.method == "exact"
    np.testing.assert_allclose(r.value, H @ np.ones(3), rtol=1e-14)


def test_a_parameter_on_its_bound_is_differenced_one_sidedly():
    # x0 = 0 on its lower bound: x0 - t is never evaluated, the result is still right
    pb = Smooth(x0=(0.0, 0.4, 0.9), bounds=(0.0, 5.0))
    seen = []
    orig = pb._value_and_grad
    pb._value_and_grad = lambda x, m: (seen.append(x.copy()), orig(x, m))[1]
    res = hessian(pb)
    assert min(x[0] for x in seen) >= 0.0
    np.testing.assert_allclose(res.matrix, pb.exact(pb.x0()), rtol=1e-7, atol=1e-7)


def _fd_of_grad(pb, x, v, rel=5e-5):
    """Reference: central differences of the problem's gradient along v with steps t and
    2t, Richardson-extrapolated (4·D(t) − D(2t))/3 (error O(t⁴)); a different step and
    formula from diffsim.hessian's."""
    t = rel / np.max(np.abs(v) / np.maximum(np.abs(x), [p.scale for p in pb.params.items]))

    def d(t):
        return (pb.gradient(x + t * v) - pb.gradient(x - t * v)) / (2 * t)
    return (4 * d(t) - d(2 * t)) / 3


def test_cannon_hessian_matches_the_vacuum_closed_form():
    # No drag, RK4: the range is R = v² sin 2θ / g to ~1e-11 m, and f = ½(R − T)²
    pb = build(load("cannon_no_drag", ["target.x=[70.0]", "launch.angle=0.6"]))
    x = pb.x0()
    th, v, g = x[pb.params.index["angle"]], x[pb.params.index["speed"]], x[pb.params.index["gravity"]]
    T = 70.0
    R = v * v * math.sin(2 * th) / g
    dR = np.array([2 * v * v * math.cos(2 * th) / g, 2 * v * math.sin(2 * th) / g])
    d2R = np.array([[-4 * v * v * math.sin(2 * th) / g, 4 * v * math.cos(2 * th) / g],
                    [4 * v * math.cos(2 * th) / g, 2 * math.sin(2 * th) / g]])
    exact = np.outer(dR, dR) + (R - T) * d2R
    res = hessian(pb, names=["angle", "speed"])
    np.testing.assert_allclose(res.matrix, exact, rtol=1e-6)
    # and against an independent difference of the gradient over all parameters
    full = hessian(pb, names=pb.params.names)
    idx = np.arange(len(x))
    for j in (pb.params.index["speed"], pb.params.index["drag"]):
        e = np.zeros(len(x))
        e[j] = 1.0
        np.testing.assert_allclose(full.matrix[:, j], _fd_of_grad(pb, x, e)[idx],
                                   rtol=1e-5, atol=1e-6 * np.abs(full.matrix).max())


def test_ode_hessian_and_hvp_against_differences_of_the_gradient():
    pb = build(load("oscillator"))
    x = pb.x0()
    res = hessian(pb)                       # omega, zeta
    idx = [pb.params.index[n] for n in res.names]
    ref = np.column_stack([_fd_of_grad(pb, x, np.eye(len(x))[j])[idx] for j in idx])
    np.testing.assert_allclose(res.matrix, ref, rtol=1e-6)
    assert res.error.max() < 1e-6 * np.abs(res.matrix).max()
    v = np.array([0.3, -0.8])
    r = hvp(pb, v)
    vf = np.zeros(len(x))
    vf[idx] = v
    np.testing.assert_allclose(r.value, _fd_of_grad(pb, x, vf)[idx], rtol=1e-6)
    np.testing.assert_allclose(r.value, res.matrix @ v, rtol=1e-6)


def test_hvp_rejects_a_wrong_length_and_hessian_a_large_problem():
    pb = Smooth()
    with pytest.raises(DiffsimError, match="3 entries"):
        hvp(pb, np.ones(2))
    with pytest.raises(DiffsimError, match="over 3 parameters.*Hessian-vector products"):
        hessian(pb, max_params=2)


def test_cli_hessian_json(capsys, tmp_path):
    rc = main(["hessian", "cannon", "--json", "--out", str(tmp_path)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "fd-of-gradient" and "forward-over-reverse" in out["note"]
    assert out["names"] == ["angle"] and len(out["eigenvalues"]) == 1
    assert out["hessian"][0][0] == pytest.approx(out["eigenvalues"][0])
    assert (tmp_path / "hessian.png").exists()


def test_cli_hessian_refuses_too_many_parameters(capsys):
    rc = main(["hessian", "cannon", "--all", "--max-params", "3", "--no-plot"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "7 parameters" in err and "Hessian-vector products" in err


def test_fit_reports_gauss_newton_and_hessian_uncertainty():
    pb = build(load("oscillator", ["observe.noise=0.05", 'optimize.optimizer="lm"']))
    r = pb.fit(progress=False, plots=False)
    assert r["status"] == "converged"
    assert r["uncertainty_method"].startswith("gauss-newton")
    hu = r["hessian_uncertainty"]
    assert hu["method"] == "fd-of-gradient" and "2·s²·H⁻¹" in hu["formula"]
    names = list(r["std_errors"])
    gn = np.array([r["std_errors"][n] for n in names])
    he = np.array([hu["std_errors"][n] for n in names])
    assert np.all(gn > 0)
    # small residuals: the Hessian is close to the Gauss–Newton 2JᵀJ, but not equal
    np.testing.assert_allclose(he, gn, rtol=0.05)
    assert not np.allclose(he, gn, rtol=1e-9)
    # the reported covariance is 2s²H⁻¹ of the reported Hessian, its diagonal the errors²
    H = np.array(hu["hessian"])
    mask = np.isfinite(pb.data)
    dof = int(mask.sum()) - len(names)
    cov = 2 * r["loss"] / dof * np.linalg.inv(H)
    np.testing.assert_allclose(np.array(hu["covariance"]["matrix"]), cov, rtol=1e-8)
    np.testing.assert_allclose(np.diag(cov), he ** 2, rtol=1e-10)
    C = np.array(r["covariance"]["matrix"])
    np.testing.assert_allclose(np.sqrt(np.diag(C)), gn, rtol=1e-12)
    assert "Hessian: ±" in pb.report_text(r)
