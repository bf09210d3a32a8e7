"""Optimisers and the one optimisation loop every verb uses.

``minimize(problem, optimizer)`` changes the problem's optimisable parameters to lower
its objective, with gradients by ``method``. It shows a progress bar with the loss,
keeps the best parameters seen, stops when ``problem.converged`` says so, and on Ctrl-C
returns what it found with ``status == "interrupted"``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
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

    def load_state_dict(self, s, n=None):
        """Restore :meth:`state_dict` output; ``n``: the number of optimised parameters
        (the moment vectors must have that length). ValueError when malformed."""
        self.t = _count(s["t"])
        self.m, self.v = (_moment(s[k], n) for k in ("m", "v"))
        if (self.m is None) != (self.v is None) or (self.t > 0 and self.m is None):
            raise ValueError("Adam state: m and v must both be given once t > 0")


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

    def load_state_dict(self, s, n=None):
        self.t = _count(s["t"])


def _count(t):
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise ValueError(f"an iteration count must be an integer >= 0, got {t!r}")
    return t


def _moment(v, n):
    """A moment vector from a checkpoint: None, or n finite floats."""
    if v is None:
        return None
    if not isinstance(v, list) or (n is not None and len(v) != n) or not all(
            isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
        raise ValueError(f"a moment vector must be a list of {n} numbers")
    a = np.array(v, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("a moment vector holds NaN or inf")
    return a


class LBFGS:
    """Quasi-Newton L-BFGS-B from scipy, honouring the parameter bounds."""

    name = "lbfgs"

    def __init__(self, memory=10, gtol=1e-12, ftol=0.0):
        self.memory, self.gtol, self.ftol = memory, gtol, ftol


class Newton:
    """Newton's method with a trust region, on the optimisable parameters.

    Each iteration builds the Hessian (``hessian="dense"``: k×k by central differences
    of exact gradients, 2k gradient evaluations, or exact where the problem has
    ``exact_hvp``; see :mod:`diffsim.hessian`) and takes the step that minimises the
    quadratic model g·p + ½pᵀHp within the trust radius (solved exactly through H's
    eigen-decomposition, so negative curvature is followed, not refused). With
    ``hessian="cg"`` (:class:`NewtonCG`) the model step comes from Steihaug's truncated
    conjugate gradients using Hessian-vector products only (2 gradients each): for many
    parameters. A step is accepted when the objective falls; the radius grows after good
    model agreement (ratio > 0.75) and shrinks after bad (< 0.25). Where the change of the
    objective is within its round-off (100ε·|f|) the step is accepted when it lowers the
    projected gradient.

    Coordinates: those of :func:`minimize` (each parameter divided by its bound range, or
    by max(|x0|, 1)); radius and max_radius are in them. Bounds: parameters at a bound
    with the gradient pointing out are held there; steps are clipped to the box.

    Convergence (status "converged"): the problem's own criterion
    (``problem.converged``), or the projected gradient's largest entry in these
    coordinates ≤ ``gtol``. "stalled": the trust radius fell below ``min_radius`` (no
    step lowers the objective any more: round-off). ``iterations`` counts objective +
    gradient evaluations at trial points; the gradients spent on Hessians are counted
    separately (``hessian_gradients``, also in the result's message).
    """

    name = "newton"
    hessian = "dense"

    def __init__(self, radius=0.1, max_radius=10.0, gtol=1e-10, min_radius=1e-13,
                 step=None, max_cg=None):
        if not (radius > 0 and max_radius >= radius and gtol >= 0 and min_radius > 0):
            raise DiffsimError(f"{self.name}: need radius > 0, max_radius >= radius, gtol >= 0 "
                               f"and min_radius > 0; got {radius}, {max_radius}, {gtol}, {min_radius}")
        self.radius, self.max_radius, self.gtol, self.min_radius = radius, max_radius, gtol, min_radius
        self.step, self.max_cg = step, max_cg
        self.t = 0                     # accepted steps
        self.hessian_gradients = 0     # gradient evaluations spent on second derivatives
        self.hessian_method = None     # "fd-of-gradient" or "exact"

    def state_dict(self):
        return {"t": self.t, "radius": self.radius}

    def load_state_dict(self, s, n=None):
        self.t = _count(s["t"])
        r = s["radius"]
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (r > 0 and math.isfinite(r)):
            raise ValueError(f"a trust radius must be a finite number > 0, got {r!r}")
        self.radius = float(r)


class NewtonCG(Newton):
    """Hessian-free Newton: :class:`Newton` with the trust-region step from Steihaug's
    truncated conjugate gradients on Hessian-vector products (never a k×k matrix).
    CG stops at the radius, at negative curvature, after ``max_cg`` products (default
    min(k, 100)), or when the model residual is ≤ min(0.5, ‖g‖)·‖g‖ (the forcing term
    that keeps Newton's quadratic convergence)."""

    name = "newton-cg"
    hessian = "cg"


class GaussNewton(Newton):
    """Gauss–Newton with a trust region, i.e. Levenberg–Marquardt (the trust-region
    multiplier is LM's damping), for least-squares objectives: :class:`Newton`'s loop
    with the model Hessian from the problem's residual Jacobian instead of second
    derivatives. Needs ``problem.gauss_newton_hessian(x)``: the Gauss–Newton
    approximation (k, k) over the optimisable parameters (for L = Σr², 2JᵀJ; ODE scenes
    give it from forward sensitivities). Converges quadratically on zero-residual fits,
    linearly (rate ∝ residual size) otherwise; same statuses, checkpoints and Ctrl-C as
    every optimiser here."""

    name = "gauss-newton"
    hessian = "gauss-newton"


#: second-order optimisers that work on any Problem (second derivatives from gradients)
SECOND_ORDER = ("newton", "newton-cg")

OPTIMIZERS = {"adam": Adam, "gd": GradientDescent, "lbfgs": LBFGS, "newton": Newton,
              "newton-cg": NewtonCG, "gauss-newton": GaussNewton}


def make_optimizer(name: str, **kw):
    if name not in OPTIMIZERS:
        raise DiffsimError(f"optimizer {name!r} is not known; use one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[name](**kw)


def optimize_schema(params, optimizers, *, optimizer, iterations, lr, decay=None, beta2=None,
                    clip=None, max_grad_norm=None, methods=None, seed=None, bounds=None):
    """The ``[optimize]`` scene section, one definition for every scene kind.

    params: the kind's :class:`~diffsim.scene.Key` for ``optimize.params`` (what to
    optimise; each kind checks its own names). optimizers: the names this kind accepts for
    ``optimize.optimizer``, from :data:`OPTIMIZERS` plus "lm" (SciPy's
    Levenberg–Marquardt, least-squares kinds only); the second-order optimisers
    (:data:`SECOND_ORDER`: newton, newton-cg) are added for every kind, since they need
    nothing but gradients (the kind's optimiser factory builds them with
    :func:`make_optimizer`). optimizer, iterations, lr: the kind's
    defaults. Keys a kind does not use are left out (argument None); otherwise the argument
    is the default: decay (lr multiplier per iteration), beta2 (Adam), clip (gradient
    2-norm clip, 0 = none), max_grad_norm (a larger norm stops the run as diverged), seed;
    methods: the allowed gradient methods, the first the default; bounds: the kind's
    validator ``f(table) -> str | None`` of ``name = [low, high]`` (default: no bounds).
    Returns the section's schema, key -> Key.
    """
    from .scene import Key      # scene does not import optim: no cycle
    known = (*OPTIMIZERS, "lm")
    unknown = [o for o in optimizers if o not in known]
    if unknown or optimizer not in optimizers:
        raise ValueError(f"optimize_schema: optimizers {list(optimizers)} (default {optimizer!r}) "
                         f"must come from {', '.join(known)}")
    sec = {"params": params}
    if bounds is not None:
        sec["bounds"] = Key("table", {}, "name = [low, high]", check=bounds)
    choices = tuple(optimizers) + tuple(o for o in SECOND_ORDER if o not in optimizers)
    sec["optimizer"] = Key("str", optimizer, "optimiser", choices=choices)
    sec["iterations"] = Key("int", iterations, "most iterations", lo=1, hi=1_000_000)
    sec["lr"] = Key("float", lr, "adam/gd step size (a fraction of each parameter's scale, "
                    "see diffsim.optim.Adam)", lo=0.0, lo_open=True)
    if decay is not None:
        sec["decay"] = Key("float", decay, "lr multiplier per iteration", lo=0.0, lo_open=True, hi=1.0)
    if beta2 is not None:
        sec["beta2"] = Key("float", beta2, "Adam second-moment decay", lo=0.0, lo_open=True,
                           hi=1.0, hi_open=True)
    if clip is not None:
        sec["clip"] = Key("float", clip, "gradient 2-norm clip (0: none)", lo=0)
    if max_grad_norm is not None:
        sec["max_grad_norm"] = Key("float", max_grad_norm, "a larger gradient norm stops the run "
                                   "as diverged (exploding)", lo=0, lo_open=True)
    if methods is not None:
        sec["method"] = Key("str", methods[0], "gradient method", choices=tuple(methods))
    if seed is not None:
        sec["seed"] = Key("int", seed, "random seed")
    return sec


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


#: why an optimisation stopped; ``success`` is True only for "converged"
STATUSES = {
    "converged": "the problem's convergence criterion was met",
    "max_iterations": "the iteration budget ran out before convergence",
    "completed": "ran the requested iterations (this objective states no convergence criterion)",
    "stalled": "the optimiser could make no further progress (line search or tolerance)",
    "diverged": "the objective or gradient became NaN/inf or exploded; the best point is kept",
    "interrupted": "stopped by Ctrl-C; the best point is kept",
    "stopped": "a callback asked to stop",
}


@dataclasses.dataclass
class OptimizeResult:
    """What :func:`minimize` found. ``x`` is the best point seen (all parameters),
    ``objective`` its value, ``status`` a key of :data:`STATUSES`, ``message`` the reason
    in words, ``iterations`` the gradient evaluations made *in total* (a resumed run counts
    the ones before it)."""

    x: np.ndarray
    objective: float
    iterations: int
    status: str
    history: History
    seconds: float
    message: str = ""

    @property
    def interrupted(self) -> bool:
        return self.status == "interrupted"

    @property
    def success(self) -> bool:
        return self.status in ("converged", "completed")


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


class _Stop(Exception):
    def __init__(self, status, message=""):
        self.status, self.message = status, message


def minimize(problem, optimizer=None, *, iterations=100, method=None, x0=None,
             progress=None, callback=None, desc=None, checkpoint=None, resume=False,
             max_grad_norm=None) -> OptimizeResult:
    """Lower ``problem``'s objective over its optimisable parameters.

    optimizer: an Adam/GradientDescent/LBFGS/Newton/NewtonCG object (default Adam(lr=0.01)).
    iterations: most gradient evaluations in total (a resumed run counts earlier ones).
    method: gradient method (problem default). progress: a progress bar with the loss on
    stderr (default: when stderr is a terminal). callback(it, x, f, g): called after each
    evaluation; return True to stop. ``problem.converged(x, f)`` (a Problem hook) ends the run
    with status "converged".

    checkpoint: a file path; after every iteration it holds the next point, the optimiser's
    state, the best point so far and the history, written atomically. resume=True continues
    from it: the best point found before the interruption is kept, and a first-order
    optimiser continues exactly as an uninterrupted run would (L-BFGS restarts from the
    best point with an empty memory).

    Guard: a NaN/inf objective or gradient, a simulation that blows up, or a gradient
    2-norm above ``max_grad_norm`` stops the run with status "diverged"; Ctrl-C stops it
    with "interrupted". Either way the problem's parameters are set to the best point
    found and it is returned, never lost.
    """
    from . import checkpoint as ckpt
    from .errors import DiffsimError as _DE, GradientError, SimulationError

    optimizer = optimizer or Adam()
    names = problem.params.names
    x = problem._as_x(x0).copy()
    free = problem.params.free
    if not free.any():
        raise DiffsimError(f"{problem.name} marks no parameter as optimisable; set "
                           "optimize = true on at least one parameter in the scene")
    hist = History()
    best = {"f": math.inf, "x": x.copy()}
    done, st = 0, {}
    if resume:
        if checkpoint is None or not pathlib.Path(checkpoint).exists():
            raise DiffsimError(f"--resume needs a checkpoint, but {checkpoint} does not exist; "
                               "run `diffsim optimize` with the same --out first")
        st = ckpt.load_checkpoint(checkpoint, names)
        x, done = st["x"], st["iterations"]
        best = {"f": st["best_f"], "x": st["best_x"]}
        hist.loss, hist.grad_norm = st["history"]["loss"], st["history"]["grad_norm"]
        hist.x = st["history"].get("x") or [best["x"].copy()] * len(hist.loss)
        hist.time = [0.0] * len(hist.loss)
        if st["optimizer"] and hasattr(optimizer, "load_state_dict"):
            try:
                optimizer.load_state_dict(st["optimizer"], n=int(free.sum()))
            except (KeyError, TypeError, ValueError):
                raise DiffsimError(f"{checkpoint}: the optimiser state is malformed; use a "
                                   "fresh --out") from None
        if isinstance(optimizer, (LBFGS, Newton)):    # no memory to continue: restart at the best
            x = best["x"].copy()
    lo, hi = problem.params.lower[free], problem.params.upper[free]
    x[free] = np.clip(x[free], lo, hi)
    # Optimise in scaled coordinates u = x / scale, scale = the bound range (or |x0|, or
    # 1): a learning rate then means "this fraction of the range" for every parameter,
    # whether it is an angle in rad or a speed in m/s.
    span = hi - lo
    scale = np.where(np.isfinite(span) & (span > 0), span, np.maximum(np.abs(x[free]), 1.0))
    if resume and st.get("scale") is not None:
        if len(st["scale"]) != int(free.sum()):
            raise DiffsimError(f"{checkpoint}: 'scale' has {len(st['scale'])} entries for "
                               f"{int(free.sum())} optimised parameters; use a fresh --out")
        scale = st["scale"]     # the run's coordinates are fixed by its first start point
    remaining = max(iterations - done, 0)
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(remaining, show, desc or f"optimize {problem.name}")
    converged = problem.converged
    extra = problem.progress_info
    t0 = time.perf_counter()
    status, message = "max_iterations", ""
    state = {"x_next": x.copy()}

    def save():
        if checkpoint is None:
            return
        ckpt.write_json(checkpoint, {
            "version": ckpt.VERSION, "problem": problem.name, "names": names,
            "iterations": done + len(hist.loss) - n_before, "x": state["x_next"],
            "best_x": best["x"], "best_f": best["f"], "status": status, "scale": scale,
            "optimizer": optimizer.state_dict() if hasattr(optimizer, "state_dict") else None,
            "history": {"loss": hist.loss, "grad_norm": hist.grad_norm,
                        **({"x": hist.x} if len(names) <= 64 else {})}})

    n_before = len(hist.loss)

    def evaluate(uf):
        xx = x.copy()
        xx[free] = uf * scale
        try:
            f, g = problem.value_and_grad(xx, method)
        except (GradientError, SimulationError) as e:
            raise _Stop("diverged", f"at iteration {len(hist.loss)}: {e}") from None
        gn = float(np.linalg.norm(g[free]))
        if not (math.isfinite(f) and math.isfinite(gn)):
            raise _Stop("diverged", f"at iteration {len(hist.loss)} the objective is {f} and "
                        f"the gradient norm {gn}")
        if max_grad_norm is not None and gn > max_grad_norm:
            raise _Stop("diverged", f"at iteration {len(hist.loss)} the gradient norm "
                        f"{gn:.3g} exceeds the limit {max_grad_norm:.3g}; lower the learning "
                        "rate or the time step, or clip gradients")
        hist.append(f, g[free], xx, time.perf_counter() - t0)
        if f < best["f"]:
            best["f"], best["x"] = f, xx.copy()
        bar.update(f, extra(xx) if extra else None)
        stop = False
        if converged is not None and converged(xx, f):
            stop = "converged"
        if callback is not None and callback(len(hist.loss) - 1, xx, f, g):
            stop = stop or "stopped"
        return f, g[free] * scale, stop

    try:
        ulo, uhi = lo / scale, hi / scale
        if remaining == 0:
            message = (f"nothing to do: {done} iterations were already made; raise "
                       "--iterations above that to continue")
            status = "max_iterations" if not resume else (_ck_status(checkpoint) or "max_iterations")
        elif isinstance(optimizer, LBFGS):
            status = _run_lbfgs(optimizer, evaluate, x[free] / scale, ulo, uhi, remaining, save,
                                state, free, scale, x)
        elif isinstance(optimizer, Newton):
            status, message = _run_newton(optimizer, evaluate, problem, method, x, free, scale,
                                          ulo, uhi, remaining, save, state)
        else:
            uf = x[free] / scale
            for _ in range(remaining):
                f, g, stop = evaluate(uf)
                if stop:
                    status = stop
                    state["x_next"] = hist.x[-1]
                    break
                uf = np.clip(optimizer.step(uf, g), ulo, uhi)
                state["x_next"] = x.copy()
                state["x_next"][free] = uf * scale
                save()
            else:
                if converged is None:
                    status = "completed"
    except _Stop as s:
        status, message = s.status, s.message
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    if not message:
        message = STATUSES.get(status, status)
    if isinstance(optimizer, Newton) and optimizer.hessian_method:
        message += (f" ({optimizer.t} accepted {optimizer.name} steps; second derivatives "
                    f"{optimizer.hessian_method}"
                    + (f", {optimizer.hessian_gradients} extra gradient evaluations)"
                       if optimizer.hessian != "gauss-newton" else ")"))
    try:
        save()
    except KeyboardInterrupt:   # a second Ctrl-C while saving: the previous file stands
        pass
    if not math.isfinite(best["f"]):
        best["f"] = math.nan
    problem.set(best["x"])
    return OptimizeResult(best["x"], best["f"], done + len(hist.loss) - n_before, status, hist,
                          time.perf_counter() - t0, message)


def _ck_status(path):
    try:
        return json.loads(pathlib.Path(path).read_text()).get("status")
    except (OSError, ValueError):
        return None


def _run_lbfgs(opt, evaluate, xf0, lo, hi, iterations, save, state, free, scale, x):
    from scipy.optimize import minimize as sp_minimize

    calls = [0]

    def fun(uf):
        if calls[0] >= iterations:     # scipy's maxfun may be overrun by a line search
            raise _Stop("max_iterations")
        calls[0] += 1
        f, g, stop = evaluate(np.asarray(uf, dtype=np.float64))
        state["x_next"] = x.copy()
        state["x_next"][free] = np.asarray(uf) * scale
        save()
        if stop:
            raise _Stop(stop)
        return f, g

    bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
              for a, b in zip(lo, hi)]
    r = sp_minimize(fun, xf0, jac=True, method="L-BFGS-B", bounds=bounds,
                    options={"maxfun": iterations, "maxiter": iterations,
                             "maxcor": opt.memory, "gtol": opt.gtol, "ftol": opt.ftol})
    if r.nfev >= iterations or r.nit >= iterations:
        return "max_iterations"
    msg = r.message.decode() if isinstance(r.message, bytes) else str(r.message)
    # scipy's success also covers "no relative reduction of f": that is a stall, not
    # convergence; only the projected-gradient test is a stated optimality criterion.
    return "converged" if "PGTOL" in msg.upper() else "stalled"


def _run_newton(opt, evaluate, problem, method, x, free, scale, lo, hi, iterations, save, state):
    """Trust-region Newton (``opt.hessian`` "dense" or "cg") in minimize's scaled
    coordinates u = x_free / scale. Returns (status, message)."""
    from .errors import GradientError, SimulationError
    from .hessian import free_hessian, free_hvp

    calls = [0]

    def full(u):
        xx = x.copy()
        xx[free] = u * scale
        return xx

    def fg(u):
        if calls[0] >= iterations:
            raise _Stop("max_iterations")
        calls[0] += 1
        f, g, stop = evaluate(u)
        state["x_next"] = full(u)
        save()
        if stop:
            raise _Stop(stop)
        return f, g

    def second(fn, *a):
        try:
            out, n = fn(problem, *a, method, opt.step)
        except (GradientError, SimulationError) as e:
            raise _Stop("diverged", f"while differencing gradients for the Hessian: {e}") from None
        except DiffsimError as e:
            raise _Stop("stalled", f"cannot take second derivatives here: {e}") from None
        opt.hessian_gradients += n
        opt.hessian_method = "exact" if problem.exact_hvp else "fd-of-gradient"
        return out

    gauss_newton = problem.gauss_newton_hessian
    if opt.hessian == "gauss-newton" and gauss_newton is None:
        raise DiffsimError(f"optimizer {opt.name!r} needs a least-squares objective with a "
                           f"residual Jacobian, which {problem.name} does not provide; use "
                           "newton (second derivatives from gradients) or lbfgs")

    # H_u = S H_x S with S = diag(scale): the Hessian in the scaled coordinates
    def hess(u):
        if opt.hessian == "gauss-newton":
            try:
                H = np.asarray(gauss_newton(full(u)), dtype=np.float64)
            except (GradientError, SimulationError) as e:
                raise _Stop("diverged", f"while computing the residual Jacobian: {e}") from None
            opt.hessian_method = "Gauss–Newton (residual Jacobian)"
            return H * np.outer(scale, scale)
        return second(free_hessian, full(u), free) * np.outer(scale, scale)

    def hvp(u, v):
        return second(free_hvp, full(u), free, v * scale) * scale

    u = np.clip(np.asarray(x[free] / scale, dtype=np.float64), lo, hi)
    f, g = fg(u)
    H = hess(u) if opt.hessian != "cg" else None
    while True:
        out = ((u <= lo) & (g > 0)) | ((u >= hi) & (g < 0))   # held at a bound
        pg = np.where(out, 0.0, g)
        pgn = float(np.max(np.abs(pg), initial=0.0))
        if pgn <= opt.gtol:
            return "converged", (f"the projected gradient's largest entry {pgn:.3g} "
                                 f"≤ gtol = {opt.gtol:g} (parameters scaled by their range)")
        F = ~out
        if H is not None:
            pF = _tr_dense(g[F], H[np.ix_(F, F)], opt.radius)
        else:
            def hv(d):
                dd = np.zeros_like(u)
                dd[F] = d
                return hvp(u, dd)[F]
            gF = g[F]
            gn = float(np.linalg.norm(gF))
            pF, mF = _tr_cg(gF, hv, opt.radius, min(0.5, gn) * gn,
                            opt.max_cg or min(len(gF), 100))
        p = np.zeros_like(u)
        p[F] = pF
        u_new = np.clip(u + p, lo, hi)
        pc = u_new - u
        if not np.any(pc):
            return "stalled", "the Newton step is zero at the parameter bounds"
        if H is None and np.array_equal(pc, p):
            pred = -mF                  # the CG model value: no extra product needed
        else:
            Hpc = H @ pc if H is not None else hvp(u, pc)
            pred = -(float(g @ pc) + 0.5 * float(pc @ Hpc))
        f_new, g_new = fg(u_new)
        actual = f - f_new
        rho = actual / pred if pred > 0 else -math.inf
        plen = float(np.linalg.norm(pc))
        # a change of f within its round-off says nothing about the step: judge it by the
        # projected gradient instead (else a fit with residuals stalls just short of gtol)
        flat = abs(actual) <= 100 * np.finfo(np.float64).eps * max(abs(f), abs(f_new))
        out_new = ((u_new <= lo) & (g_new > 0)) | ((u_new >= hi) & (g_new < 0))
        smaller = float(np.max(np.abs(np.where(out_new, 0.0, g_new)), initial=0.0)) < pgn
        if flat and smaller:
            pass                        # keep the radius
        elif rho < 0.25:
            opt.radius = 0.25 * plen
        elif rho > 0.75 and plen >= 0.99 * opt.radius:
            opt.radius = min(2.0 * opt.radius, opt.max_radius)
        if (actual > 0 and (rho > 1e-4 or pred <= 0)) or (flat and smaller):
            u, f, g = u_new, f_new, g_new
            opt.t += 1
            if H is not None:
                H = hess(u)
        state["x_next"] = full(u)
        save()
        if opt.radius < opt.min_radius:
            return "stalled", (f"the trust radius fell to {opt.radius:.2g} (< "
                               f"{opt.min_radius:g}): no step lowers the objective (round-off "
                               f"level); projected gradient {pgn:.3g} > gtol = {opt.gtol:g}")


def _tr_dense(g, H, radius):
    """argmin g·p + ½pᵀHp over |p| ≤ radius, exactly (Moré–Sorensen through H's
    eigen-decomposition; the 'hard case' follows the lowest eigenvector)."""
    from scipy.optimize import brentq
    w, V = np.linalg.eigh(H)
    a = V.T @ g
    if w[0] > 0:
        p = -V @ (a / w)
        if np.linalg.norm(p) <= radius:
            return p
    tiny = 1e-14 * max(1.0, float(np.max(np.abs(w))))
    lam_lo = max(0.0, -float(w[0]))

    def norm_p(lam):
        return float(np.linalg.norm(a / (w + lam)))
    if norm_p(lam_lo + tiny) <= radius:      # hard case: g has no component along the lowest
        d = w + lam_lo
        c = np.where(d > tiny, a / np.where(d > tiny, d, 1.0), 0.0)
        p = -V @ c
        tau = math.sqrt(max(radius ** 2 - float(p @ p), 0.0))
        return p + tau * V[:, 0]
    lam_hi = float(np.linalg.norm(g)) / radius + 2 * float(np.max(np.abs(w))) + tiny
    lam = brentq(lambda l: norm_p(l) - radius, lam_lo + tiny, lam_hi, xtol=1e-15, rtol=1e-12)
    return -V @ (a / (w + lam))


def _tr_cg(g, hv, radius, tol, maxit):
    """Steihaug–Toint truncated CG for argmin m(p) = g·p + ½pᵀHp over |p| ≤ radius,
    with H·d = hv(d): stops at the boundary, at negative curvature or at residual ≤ tol.
    Returns (p, m(p)); m is tracked along the way (r·d = −|r|² in CG), so the caller
    needs no extra product to judge the step."""
    p = np.zeros_like(g)
    r = g.copy()
    d = -r
    m = 0.0
    if float(np.linalg.norm(r)) <= tol:
        return p, m

    def to_boundary(p, d, rr, dHd):
        a, b, c = float(d @ d), 2 * float(p @ d), float(p @ p) - radius ** 2
        tau = (-b + math.sqrt(max(b * b - 4 * a * c, 0.0))) / (2 * a)
        return p + tau * d, m - tau * rr + 0.5 * tau * tau * dHd
    for _ in range(maxit):
        Hd = hv(d)
        dHd = float(d @ Hd)
        rr = float(r @ r)
        if dHd <= 0:
            return to_boundary(p, d, rr, dHd)
        alpha = rr / dHd
        p_new = p + alpha * d
        if float(np.linalg.norm(p_new)) >= radius:
            return to_boundary(p, d, rr, dHd)
        r = r + alpha * Hd
        p = p_new
        m -= 0.5 * alpha * rr
        if float(np.linalg.norm(r)) <= tol:
            return p, m
        d = -r + (float(r @ r) / rr) * d
    return p, m
