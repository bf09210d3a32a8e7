"""Trust-region Newton and Newton-CG in the shared optimisation loop: convergence order,
bounds, negative curvature, statuses, checkpoints and Ctrl-C, and the cannon reaching a
sub-nanometre miss."""
import json

import numpy as np
import pytest

from diffsim import build, load
from diffsim.cli import main
from diffsim.errors import DiffsimError
from diffsim.optim import LBFGS, OPTIMIZERS, Newton, NewtonCG, make_optimizer, minimize
from diffsim.problem import Param, Parameters, Problem
from test_optim import Rosenbrock as _Rosenbrock


def Rosenbrock(**kw):
    """test_optim's Rosenbrock from the classic start (-1.2, 1, -1.2, 1, …)."""
    return _Rosenbrock(**{"start": -1.2, "odd": 1.0, **kw})


@pytest.mark.parametrize("cls", [Newton, NewtonCG])
def test_newton_converges_quadratically_on_rosenbrock(cls):
    pb = Rosenbrock()
    r = minimize(pb, cls(), iterations=100)
    assert r.status == "converged" and r.success
    assert "gtol" in r.message and "fd-of-gradient" in r.message
    np.testing.assert_allclose(r.x, [1.0, 1.0], atol=1e-9)
    # quadratic order at the end: e_{k+1} ≤ C·e_k² over the last accepted steps
    # (history holds every trial point; a Steihaug-CG step limited by the trust radius can
    # leave the error almost unchanged: keep the points that at least halve it)
    tail = []
    for e in (np.linalg.norm(x - 1.0) for x in r.history.x):
        if 1e-12 < e < 1e-2 and (not tail or e < 0.5 * tail[-1]):
            tail.append(e)
    assert len(tail) >= 2
    assert all(b <= 100 * a * a for a, b in zip(tail, tail[1:]))
    assert r.iterations < 40          # L-BFGS needs ~40 evaluations here; Newton far fewer


def test_newton_cg_on_many_parameters_uses_only_hvps():
    pb = Rosenbrock(n=60, start=0.5)
    opt = NewtonCG()
    r = minimize(pb, opt, iterations=200)
    assert r.status == "converged"
    np.testing.assert_allclose(r.x, 1.0, atol=1e-8)
    # a dense Hessian would cost 2·60 gradients per step
    assert opt.hessian_gradients < 2 * 60 * opt.t


def test_newton_holds_a_bound_and_follows_negative_curvature():
    # minimum of Rosenbrock at (1, 1) is outside x0 <= 0.5: the constrained optimum is on it
    pb = Rosenbrock(start=0.0, hi=0.5)
    r = minimize(pb, Newton(), iterations=100)
    assert r.status == "converged"
    assert r.x[0] == pytest.approx(0.5) and r.x[1] == pytest.approx(0.25, abs=1e-8)

    class DoubleWell(Problem):       # f = x⁴ − x²: a maximum at the start point
        name = "double-well"
        params = Parameters([Param("x", 1e-3, -3, 3, True)])

        def _objective(self, x):
            return float(x[0] ** 4 - x[0] ** 2)

        def _value_and_grad(self, x, method):
            return self._objective(x), np.array([4 * x[0] ** 3 - 2 * x[0]])
    r = minimize(DoubleWell(), Newton(), iterations=50)
    assert r.status == "converged" and abs(r.x[0]) == pytest.approx(2 ** -0.5, rel=1e-9)


def test_newton_checkpoint_resume_and_ctrl_c(tmp_path):
    ck = tmp_path / "ck.json"
    r = minimize(Rosenbrock(interrupt_at=15), Newton(), iterations=100, checkpoint=ck)
    assert r.status == "interrupted" and np.isfinite(r.objective)
    saved = json.loads(ck.read_text())
    assert saved["optimizer"]["radius"] > 0 and saved["best_f"] == r.objective
    r2 = minimize(Rosenbrock(), Newton(), iterations=100, checkpoint=ck, resume=True)
    assert r2.status == "converged" and r2.objective <= r.objective
    assert r2.iterations > r.iterations
    bad = json.loads(ck.read_text())
    bad["optimizer"]["radius"] = -1
    ck.write_text(json.dumps(bad))
    with pytest.raises(DiffsimError, match="malformed"):
        minimize(Rosenbrock(), Newton(), iterations=200, checkpoint=ck, resume=True)


def test_budget_and_registry():
    r = minimize(Rosenbrock(), Newton(), iterations=3)
    assert r.status == "max_iterations" and r.iterations == 3 and not r.success
    assert {"newton", "newton-cg"} <= set(OPTIMIZERS)
    assert isinstance(make_optimizer("newton-cg"), NewtonCG)
    with pytest.raises(DiffsimError):
        Newton(radius=0)


def test_cannon_newton_reaches_a_subnanometre_miss(capsys, tmp_path):
    rc = main(["optimize", "cannon", "--set", 'optimize.optimizer="newton"',
               "--set", "target.tolerance=1e-9", "--json", "--no-plot", "--out", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["status"] == "converged" and out["success"]
    assert out["miss"][0] < 1e-9 and out["miss"][0] + out["model_error"][0] < 1e-9
    assert out["iterations"] <= 8
    assert "fd-of-gradient" in out["message"]
    # quadratic convergence of the miss: m_{k+1} ≲ C·m_k² on the way in
    miss = np.sqrt(2 * np.array(out["history"]["loss"]))
    tail = [m for m in miss if 1e-8 < m < 1.0]
    assert len(tail) >= 2 and all(b < 0.1 * a * a for a, b in zip(tail, tail[1:]))


def test_ode_scene_accepts_newton_in_the_shared_section():
    pb = build(load("oscillator", ['optimize.optimizer="newton"', "optimize.iterations=30"]))
    r = pb.fit(progress=False, plots=False)
    assert r["status"] == "converged", r["message"]
    assert r["params"]["omega"] == pytest.approx(2.0, rel=1e-6)
    with pytest.raises(DiffsimError, match="newton"):
        load("oscillator", ['optimize.optimizer="newtonn"'])
    assert LBFGS  # imported for the registry test's companions


class ExpFit(Problem):
    """Σ (a·e^{−b t} − y)² over 20 times: a least-squares problem with the Gauss–Newton hook."""

    name = "expfit"

    def __init__(self, noise=0.0):
        self.params = Parameters([Param("a", 1.0, 0.0, 10.0, True), Param("b", 0.2, 0.0, 5.0, True)])
        self.t = np.linspace(0, 4, 20)
        self.y = 3.0 * np.exp(-0.7 * self.t) + noise * np.random.default_rng(0).standard_normal(20)

    def _r(self, x):
        return x[0] * np.exp(-x[1] * self.t) - self.y

    def _J(self, x):
        e = np.exp(-x[1] * self.t)
        return np.column_stack([e, -x[0] * self.t * e])

    def _objective(self, x):
        return float(self._r(x) @ self._r(x))

    def _value_and_grad(self, x, method):
        return self._objective(x), 2 * self._J(x).T @ self._r(x)

    def gauss_newton_hessian(self, x):
        return 2 * self._J(x).T @ self._J(x)


def test_gauss_newton_on_residuals():
    from diffsim.optim import GaussNewton
    r = minimize(ExpFit(), GaussNewton(), iterations=50)
    assert r.status == "converged" and "Gauss–Newton" in r.message
    np.testing.assert_allclose(r.x, [3.0, 0.7], rtol=1e-9)
    assert r.iterations <= 15
    noisy = ExpFit(noise=0.05)
    r2 = minimize(noisy, GaussNewton(), iterations=50)
    r3 = minimize(ExpFit(noise=0.05), Newton(), iterations=50)
    assert r2.status == r3.status == "converged"
    np.testing.assert_allclose(r2.x, r3.x, rtol=1e-7)      # the same least-squares optimum
    with pytest.raises(DiffsimError, match="residual Jacobian.*use newton"):
        minimize(Rosenbrock(), GaussNewton(), iterations=5)


def test_ode_fit_with_gauss_newton():
    pb = build(load("oscillator", ['optimize.optimizer="gauss-newton"', "observe.noise=0.02"]))
    r = pb.fit(progress=False, plots=False)
    assert r["status"] == "converged", r["message"]
    lm = build(load("oscillator", ['optimize.optimizer="lm"', "observe.noise=0.02"])).fit(
        progress=False, plots=False)
    for n in ("omega", "zeta"):
        assert r["params"][n] == pytest.approx(lm["params"][n], rel=1e-6)


@pytest.mark.parametrize("k,radius", [(4, 0.05), (4, 50.0), (7, 0.5)])
def test_trust_region_subproblems_meet_the_optimality_conditions(k, radius):
    from diffsim.optim import _tr_cg, _tr_dense
    rng = np.random.default_rng(k)
    M = rng.standard_normal((k, k))
    H = M + M.T                           # indefinite
    g = rng.standard_normal(k)
    p = _tr_dense(g, H, radius)
    # Moré–Sorensen: (H + λI)p = −g with λ ≥ 0, H + λI ⪰ 0, and |p| = radius when λ > 0
    lam = float(np.mean(-(g + H @ p) / p))
    np.testing.assert_allclose((H + lam * np.eye(k)) @ p, -g, atol=1e-8)
    assert lam >= -1e-10 and np.linalg.eigvalsh(H + lam * np.eye(k))[0] >= -1e-8
    assert np.linalg.norm(p) == pytest.approx(radius, rel=1e-9)
    # the model value beats random points of the ball and the CG step
    m = lambda q: g @ q + 0.5 * q @ H @ q    # noqa: E731
    qs = rng.standard_normal((2000, k))
    qs *= radius * rng.random((2000, 1)) ** (1 / k) / np.linalg.norm(qs, axis=1, keepdims=True)
    assert m(p) <= min(m(q) for q in qs) + 1e-12
    pc, mc = _tr_cg(g, lambda d: H @ d, radius, 1e-12, 50)
    assert mc == pytest.approx(m(pc), rel=1e-10, abs=1e-12) and m(p) <= mc + 1e-12
    assert np.linalg.norm(pc) <= radius * (1 + 1e-12)


def test_convergence_example_runs(tmp_path):
    # every example runs in the default suite at a reduced size (~5 s: start-up and plots)
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    out = tmp_path / "c.png"
    r = subprocess.run([sys.executable, str(root / "examples" / "convergence.py"), "--out", str(out),
                        "--iterations", "4"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cannon" in r.stdout and "Newton" in r.stdout and out.stat().st_size > 1000
