"""Optimisers and the one optimisation loop every verb uses.

``minimize(problem, optimizer)`` changes the problem's optimisable parameters to lower
its objective, with gradients by ``method``. It shows a progress bar with the loss,
keeps the best parameters seen, stops when ``problem.converged`` says so, and on Ctrl-C
returns what it found with ``status == "interrupted"``.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np

from .errors import DiffsimError


class Adam:
    """Adam (Kingma & Ba) with optional exponential learning-rate decay and clipping.

    lr: step size as a fraction of each parameter's bound range (``minimize`` scales
    parameters by their range; unbounded ones by max(|x0|, 1)); decay: lr multiplier per iteration;
    clip: gradients with a larger 2-norm are scaled down to it (None: no clipping).
    Steps are projected onto the parameter bounds.
    """

    name = "adam"

    def __init__(self, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-12, decay=1.0, clip=None):
        if not lr > 0:
            raise DiffsimError(f"Adam lr must be > 0, got {lr}")
        self.lr, self.beta1, self.beta2, self.eps, self.decay, self.clip = lr, beta1, beta2, eps, decay, clip
        self.m = self.v = None
        self.t = 0

    def step(self, x, g):
        if self.clip is not None:
            n = float(np.linalg.norm(g))
            if n > self.clip:
                g = g * (self.clip / n)
        if self.m is None:
            self.m, self.v = np.zeros_like(x), np.zeros_like(x)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * g
        self.v = self.beta2 * self.v + (1 - self.beta2) * g * g
        mh = self.m / (1 - self.beta1 ** self.t)
        vh = self.v / (1 - self.beta2 ** self.t)
        lr = self.lr * self.decay ** (self.t - 1)
        return x - lr * mh / (np.sqrt(vh) + self.eps)

    def state_dict(self):
        return {"t": self.t, "m": None if self.m is None else self.m.tolist(),
                "v": None if self.v is None else self.v.tolist()}

    def load_state_dict(self, s):
        self.t = int(s["t"])
        self.m = None if s["m"] is None else np.array(s["m"])
        self.v = None if s["v"] is None else np.array(s["v"])


class GradientDescent:
    """Gradient descent; with ``normalize=True`` each step has length ``lr`` in the
    scaled parameter space of ``minimize`` (DiffTaichi's mass-spring update: x -= lr·g/|g|)."""

    name = "gd"

    def __init__(self, lr=0.01, normalize=False, decay=1.0, clip=None):
        self.lr, self.normalize, self.decay, self.clip = lr, normalize, decay, clip
        self.t = 0

    def step(self, x, g):
        if self.clip is not None:
            n = float(np.linalg.norm(g))
            if n > self.clip:
                g = g * (self.clip / n)
        lr = self.lr * self.decay ** self.t
        self.t += 1
        if self.normalize:
            n = float(np.linalg.norm(g))
            return x - lr * g / n if n > 0 else x
        return x - lr * g

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, s):
        self.t = int(s["t"])


class LBFGS:
    """Quasi-Newton L-BFGS-B from scipy, honouring the parameter bounds."""

    name = "lbfgs"

    def __init__(self, memory=10, gtol=1e-12, ftol=0.0):
        self.memory, self.gtol, self.ftol = memory, gtol, ftol


OPTIMIZERS = {"adam": Adam, "gd": GradientDescent, "lbfgs": LBFGS}


def make_optimizer(name: str, **kw):
    if name not in OPTIMIZERS:
        raise DiffsimError(f"optimizer {name!r} is not known; use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kw)


@dataclasses.dataclass
class History:
    """Per-iteration record: objective, gradient 2-norm, full parameter vector, seconds."""

    loss: list = dataclasses.field(default_factory=list)
    grad_norm: list = dataclasses.field(default_factory=list)
    x: list = dataclasses.field(default_factory=list)
    time: list = dataclasses.field(default_factory=list)

    def append(self, f, g, x, t):
        self.loss.append(float(f))
        self.grad_norm.append(float(np.linalg.norm(g)))
        self.x.append(np.array(x, dtype=np.float64))
        self.time.append(float(t))


@dataclasses.dataclass
class OptimizeResult:
    x: np.ndarray            # best full parameter vector found
    objective: float         # objective at x
    iterations: int          # gradient evaluations made
    status: str              # "converged", "max_iterations", "interrupted", "stalled"
    history: History
    seconds: float

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"


class _Progress:
    def __init__(self, total, enabled, desc):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            except ImportError:  # tqdm is a dependency; keep working without it
                self.bar = None

    def update(self, f, extra=None):
        if self.bar is not None:
            post = {"loss": f"{f:.4g}"}
            post.update(extra or {})
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def minimize(problem, optimizer=None, *, iterations=100, method=None, x0=None,
             progress=None, callback=None, desc=None) -> OptimizeResult:
    """Lower ``problem``'s objective over its optimisable parameters.

    optimizer: an Adam/GradientDescent/LBFGS object (default Adam(lr=0.01)).
    iterations: most gradient evaluations. method: gradient method (problem default).
    progress: show a progress bar on stderr (default: when stderr is a terminal).
    callback(it, x, f, g): called after each evaluation; return True to stop.
    ``problem.converged(x, f)`` (if defined) ends the run early with status "converged".
    The problem's parameters are set to the best point found.
    """
    optimizer = optimizer or Adam()
    x = problem._as_x(x0).copy()
    free = problem.params.free
    if not free.any():
        raise DiffsimError(f"{problem.name} marks no parameter as optimisable; set "
                           "optimize = true on at least one parameter in the scene")
    lo, hi = problem.params.lower[free], problem.params.upper[free]
    x[free] = np.clip(x[free], lo, hi)
    # Optimise in scaled coordinates u = x / scale, scale = the bound range (or |x0|, or
    # 1): a learning rate then means "this fraction of the range" for every parameter,
    # whether it is an angle in rad or a speed in m/s.
    span = hi - lo
    scale = np.where(np.isfinite(span) & (span > 0), span, np.maximum(np.abs(x[free]), 1.0))
    hist = History()
    best = {"f": math.inf, "x": x.copy()}
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(iterations, show, desc or f"optimize {problem.name}")
    converged = getattr(problem, "converged", None)
    extra = getattr(problem, "progress_info", None)
    t0 = time.perf_counter()
    status = "max_iterations"

    def evaluate(uf):
        xx = x.copy()
        xx[free] = uf * scale
        f, g = problem.value_and_grad(xx, method)
        hist.append(f, g[free], xx, time.perf_counter() - t0)
        if f < best["f"]:
            best["f"], best["x"] = f, xx.copy()
        bar.update(f, extra(xx) if extra else None)
        stop = False
        if converged is not None and converged(xx, f):
            stop = "converged"
        if callback is not None and callback(len(hist.loss) - 1, xx, f, g):
            stop = stop or "callback"
        return f, g[free] * scale, stop

    try:
        ulo, uhi = lo / scale, hi / scale
        if isinstance(optimizer, LBFGS):
            status = _run_lbfgs(optimizer, evaluate, x[free] / scale, ulo, uhi, iterations)
        else:
            uf = x[free] / scale
            for _ in range(iterations):
                f, g, stop = evaluate(uf)
                if stop:
                    status = "converged" if stop == "converged" else "stopped"
                    break
                uf = np.clip(optimizer.step(uf, g), ulo, uhi)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    problem.set(best["x"])
    return OptimizeResult(best["x"], best["f"], len(hist.loss), status, hist,
                          time.perf_counter() - t0)


class _Stop(Exception):
    def __init__(self, status):
        self.status = status


def _run_lbfgs(opt, evaluate, xf0, lo, hi, iterations):
    from scipy.optimize import minimize as sp_minimize

    def fun(xf):
        f, g, stop = evaluate(np.asarray(xf, dtype=np.float64))
        if stop:
            raise _Stop("converged" if stop == "converged" else "stopped")
        return f, g

    bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
              for a, b in zip(lo, hi)]
    try:
        r = sp_minimize(fun, xf0, jac=True, method="L-BFGS-B", bounds=bounds,
                        options={"maxfun": iterations, "maxiter": iterations,
                                 "maxcor": opt.memory, "gtol": opt.gtol, "ftol": opt.ftol})
    except _Stop as s:
        return s.status
    if r.nfev >= iterations or r.nit >= iterations:
        return "max_iterations"
    return "stalled"
