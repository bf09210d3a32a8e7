"""What :mod:`diffsim.torch` and :mod:`diffsim.jax` share: a simulation as a function of a
float array with its vector-Jacobian product, in numpy, plus the dtype/device check.

A *map* turns an input array ``X`` into outputs ``Y`` and, when asked, the per-row
gradients ``G`` that give every vector-Jacobian product without another simulation:

* :class:`ProblemMap` — a :class:`~diffsim.problem.Problem`: ``X`` of shape (n,) (its
  parameter vector) gives the scalar objective; (B, n) gives B objectives, one
  ``value_and_grad`` each (a generic Problem has no batch evaluation).
  ``G = d objective / d x`` per row; VJP = G · cotangent.
* :class:`ProjectileMap` — a batched :class:`~diffsim.systems.projectile.Projectile`:
  ``X`` of shape (B, k) holds k named inputs of each of the B cannons; ``Y`` (B,) is each
  cannon's objective term (½·miss² [m²], range [m] or flight time [s]). One forward and
  one reverse launch sequence for the whole batch. Cannons are independent, so
  ∂Y_b/∂X_b' = 0 for b' ≠ b and the reverse pass of Σ_b Y_b (seed 1 on every cannon)
  yields every row's gradient at once: ``G[b] = ∂Y_b/∂X_b``, and VJP = G·cotangent row
  by row — the same numbers as a reverse pass seeded with the cotangent.

Values cross to the frameworks as float64 numpy arrays (the Problem and system APIs are
numpy); the frameworks' dtype and device must match diffsim's precision and arch
(:func:`check_runtime`), so a float32 CUDA tensor is never silently run in float64 on a CPU.
"""
from __future__ import annotations

import numpy as np

from . import runtime
from .errors import DiffsimError
from .problem import Problem
from .systems import projectile as _proj

#: framework dtype name -> diffsim precision
PRECISION_OF = {"float64": "f64", "float32": "f32"}
#: framework device kind -> diffsim arch ("gpu" is JAX's name for a CUDA device)
ARCH_OF = {"cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}


def check_runtime(dtype: str, device: str, framework: str, fix_dtype: str, fix_device: str):
    """DiffsimError unless the framework's ``dtype`` name ("float64", …) and ``device``
    kind ("cpu", "cuda", "gpu") are what diffsim's running precision and arch compute in.
    The message names both sides and says what to change (``fix_*``: framework hints)."""
    info = runtime.current()
    want_p = PRECISION_OF.get(dtype)
    want_a = ARCH_OF.get(device)
    if want_p != info.precision:
        raise DiffsimError(
            f"{framework} dtype {dtype} does not match diffsim's precision "
            f"{info.precision!r} (diffsim.init(precision=...)): float64 ↔ 'f64', float32 ↔ "
            f"'f32'; {fix_dtype}")
    if want_a != info.arch:
        raise DiffsimError(
            f"{framework} device {device!r} does not match diffsim's arch {info.arch!r} "
            f"(diffsim.init(arch=...)): cpu ↔ 'cpu', cuda ↔ 'cuda'; {fix_device}")
    return info


class ProblemMap:
    """A Problem's objective as a map of its parameter vector (see the module docstring).

    method: the gradient method (name or object) passed to ``value_and_grad``; None: the
    problem's default."""

    def __init__(self, problem: Problem, method=None):
        if not isinstance(problem, Problem):
            raise DiffsimError(f"expected a diffsim Problem, got {type(problem).__name__}")
        self.problem, self.method = problem, method
        self.n = len(problem.params)

    def out_shape(self, in_shape):
        """Shape of Y for an X of ``in_shape``: () for (n,), (B,) for (B, n)."""
        if len(in_shape) not in (1, 2) or in_shape[-1] != self.n:
            raise DiffsimError(
                f"{self.problem.name}: expected its parameter vector, shape ({self.n},) "
                f"({', '.join(self.problem.params.names)}), or a batch of them, shape "
                f"(B, {self.n}); got shape {tuple(in_shape)}")
        return tuple(in_shape[:-1])

    def __call__(self, X, need_grad=True):
        """(Y, G) at X (float64 arrays); G (the shape of X) is None without ``need_grad``."""
        X = np.asarray(X, dtype=np.float64)
        shape = self.out_shape(X.shape)
        rows = X.reshape(-1, self.n)
        Y = np.empty(len(rows))
        G = np.empty_like(rows) if need_grad else None
        for i, x in enumerate(rows):
            if need_grad:
                Y[i], G[i] = self.problem.value_and_grad(x, self.method)
            else:
                Y[i] = self.problem.objective(x)
        return Y.reshape(shape), (G.reshape(X.shape) if need_grad else None)


class ProjectileMap:
    """Per-cannon objectives of a batched Projectile as a map of some of its inputs.

    sim: a :class:`~diffsim.systems.projectile.Projectile` of B cannons (set the inputs
    that are not columns of X on it first, e.g. ``sim.set_inputs(drag=0.002)``).
    inputs: names (from projectile.INPUTS) of the k columns of X, shape (B, k).
    objective, maximize, strict: as :meth:`Projectile.forward`. Y[b] = ±½·|landing −
    target|² [m²] ("miss"), ± the horizontal range [m] ("range"), ± the flight time [s]
    ("flight_time"); Σ_b Y[b] is what ``sim.forward`` returns."""

    def __init__(self, sim, inputs, objective="miss", maximize=False, strict=True):
        if not isinstance(sim, _proj.Projectile):
            raise DiffsimError(f"expected a Projectile, got {type(sim).__name__}")
        inputs = tuple(inputs)
        bad = [n for n in inputs if n not in _proj.INPUTS]
        if bad or not inputs or len(set(inputs)) != len(inputs):
            raise DiffsimError(f"inputs={list(inputs)}: give distinct names from "
                               f"{', '.join(_proj.INPUTS)}")
        if objective not in _proj.OBJECTIVES:
            raise DiffsimError(f"objective={objective!r} is not known; use one of "
                               f"{', '.join(_proj.OBJECTIVES)}")
        self.sim, self.inputs, self.objective = sim, inputs, objective
        self.maximize, self.strict = bool(maximize), strict
        self.calls = 0  # forward launch sequences run (one per call, whatever B is)

    def out_shape(self, in_shape):
        want = (self.sim.B, len(self.inputs))
        if tuple(in_shape) != want:
            raise DiffsimError(f"projectile layer: expected shape {want} (cannons × inputs "
                               f"{', '.join(self.inputs)}), got {tuple(in_shape)}")
        return (self.sim.B,)

    def __call__(self, X, need_grad=True):
        """(Y, G) at X: one batched forward pass and, with ``need_grad``, one reverse pass."""
        X = np.asarray(X, dtype=np.float64)
        self.out_shape(X.shape)
        sim = self.sim
        sim.set_inputs(**{n: X[:, j] for j, n in enumerate(self.inputs)})
        sim.forward(self.objective, self.maximize, strict=self.strict)
        self.calls += 1
        Y = self.terms()
        if not need_grad:
            return Y, None
        g = sim.backward()
        return Y, np.stack([g[n] for n in self.inputs], axis=1)

    def terms(self):
        """Each cannon's objective term after a forward pass (Projectile.terms)."""
        return self.sim.terms()


def as_map(obj, **kwargs):
    """The map for ``obj``: a ProblemMap for a Problem, a ProjectileMap for a Projectile
    (``inputs`` required), or ``obj`` itself when it already is one."""
    if isinstance(obj, (ProblemMap, ProjectileMap)):
        if kwargs:
            raise DiffsimError("options go to the map's constructor, not with a built map")
        return obj
    if isinstance(obj, Problem):
        return ProblemMap(obj, **kwargs)
    if isinstance(obj, _proj.Projectile):
        if "inputs" not in kwargs:
            raise DiffsimError("a Projectile layer needs inputs=(names of the columns of X), "
                               f"from {', '.join(_proj.INPUTS)}")
        return ProjectileMap(obj, **kwargs)
    raise DiffsimError(f"cannot make a layer of a {type(obj).__name__}: give a diffsim "
                       "Problem (diffsim.build/load) or a Projectile")
