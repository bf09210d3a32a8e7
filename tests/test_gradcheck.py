"""gradcheck: it must fail wrong gradients and pass right ones, per parameter, along random
directions, across events (step ladder) and in float32."""
import json
import subprocess
import sys

import numpy as np
import pytest

from diffsim.gradcheck import gradcheck
from diffsim.problem import Param, Parameters, Problem


class Quadratic(Problem):
    """f = ½ xᵀ diag(d) x + kink·|x0 - c|; the gradient can be made wrong on purpose."""

    name = "quadratic"

    def __init__(self, n, wrong=None, kink=0.0, c=0.0, error=None):
        self.d = np.linspace(1.0, 3.0, n)
        self.params = Parameters([Param(f"x{i}", 0.3 + 0.01 * i, optimize=True) for i in range(n)])
        self.wrong, self.kink, self.c, self.error = wrong, kink, c, error

    def _objective(self, x):
        return float(0.5 * np.sum(self.d * x * x) + self.kink * abs(x[0] - self.c))

    def _value_and_grad(self, x, method):
        g = self.d * x
        g[0] += self.kink * np.sign(x[0] - self.c)
        if self.wrong is not None:
            g[self.wrong] *= 1.001
        return self._objective(x), g

    def gradient_error(self, x, method):
        return self.error


def test_right_gradient_passes_and_a_wrong_entry_fails():
    assert gradcheck(Quadratic(5)).ok
    rep = gradcheck(Quadratic(5, wrong=3))
    assert not rep.ok and [r.name for r in rep.rows if not r.ok] == ["x3"]


def test_many_parameters_are_checked_along_random_directions():
    rep = gradcheck(Quadratic(500))
    assert rep.ok and rep.mode == "directional" and len(rep.rows) == 4
    bad = gradcheck(Quadratic(500, wrong=123))
    assert not bad.ok and bad.mode == "directional"


def test_step_ladder_avoids_a_kink_next_to_the_point():
    # |x0 - c| with c just above x0: a step of 1e-3 straddles the kink, auto does not.
    pb = Quadratic(2, kink=5.0, c=0.3 + 2e-4)
    assert not gradcheck(pb, step=1e-3).ok
    assert gradcheck(pb).ok


def test_method_error_allowance_accepts_a_known_discretisation_error():
    pb = Quadratic(3, wrong=1)
    assert not gradcheck(pb).ok
    pb.error = np.full(3, 2e-3)
    rep = gradcheck(pb)
    assert rep.ok and rep.rows[1].allowance > 0 and "allowance" in rep.note


def test_float32_check_passes_on_a_right_gradient():
    r = subprocess.run([sys.executable, "-m", "diffsim", "check", "cannon", "--precision", "f32",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] and d["precision"] == "f32" and d["rtol"] >= 1e-3


def test_a_parameter_on_its_bound_gets_a_one_sided_difference():
    pb = Quadratic(2)
    pb.params.items[0].lower = pb.params.items[0].value     # x0 sits on its lower bound
    rep = gradcheck(pb)
    assert rep.ok and np.isfinite(rep.rows[0].fd)
    pb.wrong = 0
    assert not gradcheck(pb).ok
