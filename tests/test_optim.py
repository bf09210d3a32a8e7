"""The one optimisation loop: checkpoints, resume with the best point, divergence guard,
Ctrl-C, and the checkpoint file's validation. Pure-numpy problems: no Taichi needed."""
import json

import numpy as np
import pytest

from diffsim.checkpoint import load_checkpoint, write_json
from diffsim.errors import DiffsimError
from diffsim.optim import LBFGS, Adam, GradientDescent, minimize
from diffsim.problem import Param, Parameters, Problem


class Rosenbrock(Problem):
    """f = Σ 100 (x_{i+1} - x_i²)² + (1 - x_i)², minimum 0 at x = 1; starts at ``start``
    (``odd`` at odd indices when given), bounds [lo, hi]; optional faults at a given
    gradient call (a NaN gradient, Ctrl-C). Shared with test_newton.py."""

    name = "rosenbrock"

    def __init__(self, n=2, nan_at=None, interrupt_at=None, start=-1.0, odd=None, lo=-5.0, hi=5.0):
        self.params = Parameters([Param(f"x{i}", start if i % 2 == 0 or odd is None else odd,
                                        lo, hi, True) for i in range(n)])
        self.calls, self.nan_at, self.interrupt_at = 0, nan_at, interrupt_at

    def _objective(self, x):
        return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))

    def _value_and_grad(self, x, method):
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        if self.nan_at is not None and self.calls >= self.nan_at:
            return float("nan"), np.full_like(x, np.nan)
        g = np.zeros_like(x)
        g[:-1] += -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
        g[1:] += 200 * (x[1:] - x[:-1] ** 2)
        return self._objective(x), g


@pytest.mark.parametrize("opt", [lambda: Adam(lr=0.01), lambda: GradientDescent(lr=1e-4)])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, opt):
    full = minimize(Rosenbrock(), opt(), iterations=30, checkpoint=tmp_path / "a.json")
    minimize(Rosenbrock(), opt(), iterations=12, checkpoint=tmp_path / "b.json")
    res = minimize(Rosenbrock(), opt(), iterations=30, checkpoint=tmp_path / "b.json", resume=True)
    assert res.iterations == 30
    assert res.history.loss == full.history.loss
    np.testing.assert_array_equal(res.x, full.x)


def test_resume_keeps_the_best_point_found_before_the_interruption(tmp_path):
    # Adam with a large step makes the objective rise after a good early point.
    ck = tmp_path / "ck.json"
    first = minimize(Rosenbrock(start=0.9), Adam(lr=0.2), iterations=6, checkpoint=ck)
    best_before = first.objective
    assert best_before == min(first.history.loss)
    res = minimize(Rosenbrock(start=0.9), Adam(lr=0.2), iterations=12, checkpoint=ck, resume=True)
    assert res.objective <= best_before
    assert res.objective == min(res.history.loss)
    assert json.loads(ck.read_text())["best_f"] == res.objective


def test_resume_after_a_finished_run_says_there_is_nothing_to_do(tmp_path):
    ck = tmp_path / "ck.json"
    minimize(Rosenbrock(), Adam(), iterations=5, checkpoint=ck)
    res = minimize(Rosenbrock(), Adam(), iterations=5, checkpoint=ck, resume=True)
    assert res.iterations == 5 and "nothing to do" in res.message and "--iterations" in res.message


def test_nan_midway_stops_as_diverged_and_keeps_the_best_point():
    pb = Rosenbrock(nan_at=6)
    res = minimize(pb, Adam(lr=0.01), iterations=50)
    assert res.status == "diverged" and not res.success
    assert res.iterations == 5 and np.isfinite(res.objective)
    assert res.objective == min(res.history.loss)
    np.testing.assert_array_equal(pb.params.vector, res.x)


def test_gradient_norm_limit_is_a_divergence():
    res = minimize(Rosenbrock(start=-4.0), Adam(), iterations=5, max_grad_norm=10.0)
    assert res.status == "diverged" and "exceeds the limit" in res.message


@pytest.mark.parametrize("at", [1, 4])
def test_ctrl_c_at_any_evaluation_returns_the_best_point(tmp_path, at):
    pb = Rosenbrock(interrupt_at=at)
    res = minimize(pb, Adam(), iterations=50, checkpoint=tmp_path / "ck.json")
    assert res.status == "interrupted" and res.iterations == at - 1
    if at == 1:
        assert np.isnan(res.objective)          # nothing evaluated: no fake value
        np.testing.assert_array_equal(res.x, [-1.0, -1.0])
    else:
        assert res.objective == min(res.history.loss)
    assert load_checkpoint(tmp_path / "ck.json", pb.params.names)["iterations"] == at - 1


def test_lbfgs_converges_only_on_its_gradient_criterion():
    res = minimize(Rosenbrock(), LBFGS(), iterations=500)
    assert res.status == "converged" and res.success
    np.testing.assert_allclose(res.x, [1.0, 1.0], atol=1e-6)
    short = minimize(Rosenbrock(), LBFGS(), iterations=5)
    assert short.status == "max_iterations" and not short.success


def test_budget_without_a_criterion_is_completed_not_converged():
    res = minimize(Rosenbrock(), Adam(), iterations=3)
    assert res.status == "completed" and "no convergence criterion" in res.message


def _good_checkpoint(tmp_path):
    ck = tmp_path / "ck.json"
    minimize(Rosenbrock(), Adam(), iterations=3, checkpoint=ck)
    return ck, json.loads(ck.read_text())


@pytest.mark.parametrize("corrupt,words", [
    (lambda p, d: p.write_text(""), "empty"),
    (lambda p, d: p.write_text(json.dumps(d)[:40]), "not valid JSON"),
    (lambda p, d: p.write_text("[1, 2]"), "JSON object"),
    (lambda p, d: p.write_text(json.dumps({**d, "x": [1.0]})), "'x' must be a list of 2"),
    (lambda p, d: p.write_text(json.dumps({**d, "x": ["a", 1.0]})), "numbers"),
    (lambda p, d: p.write_text(json.dumps({**d, "best_x": [1.0, float("nan")]})), "NaN"),
    (lambda p, d: p.write_text(json.dumps({**d, "iterations": -3})), "iterations"),
    (lambda p, d: p.write_text(json.dumps({**d, "names": ["a", "b"]})), "do not match"),
    (lambda p, d: p.write_text(json.dumps({**d, "version": 99})), "version"),
    (lambda p, d: p.write_text(json.dumps({**d, "history": {"loss": ["x"]}})), "history.loss"),
    (lambda p, d: p.write_text(json.dumps({**d, "optimizer": {"t": "x"}})), "optimiser state"),
    (lambda p, d: (p.unlink(), p.mkdir()), "directory"),
])
def test_a_corrupt_checkpoint_is_refused_naming_the_file(tmp_path, corrupt, words):
    ck, d = _good_checkpoint(tmp_path)
    corrupt(ck, d)
    with pytest.raises(DiffsimError) as e:
        minimize(Rosenbrock(), Adam(), iterations=6, checkpoint=ck, resume=True)
    assert str(ck) in str(e.value) and words in str(e.value)


def test_writes_are_atomic_with_unique_temporary_files(tmp_path, monkeypatch):
    import os
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (seen.append(str(a)), real(a, b)))
    write_json(tmp_path / "f.json", {"a": 1})
    write_json(tmp_path / "f.json", {"a": 2})
    assert len(set(seen)) == 2 and all(".tmp" in s for s in seen)
    assert json.loads((tmp_path / "f.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
