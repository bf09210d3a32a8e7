"""JAX functions: a diffsim Problem or batched Projectile as a ``jax.custom_vjp`` function.

    import jax; jax.config.update("jax_enable_x64", True)   # diffsim's default is float64
    import diffsim, diffsim.jax
    pb = diffsim.build("cannon", ["optimize.params=['angle', 'speed']"])
    f = diffsim.jax.function(pb)                   # x (n,) -> objective, or (B, n) -> (B,)
    g = jax.jit(jax.grad(f))(jnp.asarray(pb.x0()))  # == pb.value_and_grad(x)[1]

The simulation runs on the host through ``jax.pure_callback``, so the function works
under ``jax.jit``, ``jax.grad``/``jax.vjp`` and ``jax.vmap`` (one callback per mapped
element). Gradients come from diffsim, not from JAX tracing the kernels; see
:mod:`diffsim.interop` for what the maps compute. The array's dtype and device must
match diffsim's precision and arch (float64 ↔ 'f64', float32 ↔ 'f32'; cpu ↔ 'cpu',
gpu/cuda ↔ 'cuda'), else DiffsimError. Reverse mode only (no ``jax.jvp``/``jacfwd``),
first derivatives only. Needs the ``jax`` extra: ``pip install 'diffsim[jax]'``.
"""
from __future__ import annotations

try:
    import jax
    import jax.numpy as jnp
except ImportError:  # the optional extra is missing
    raise ImportError("diffsim.jax needs JAX: pip install 'diffsim[jax]' "
                      "(or pip install jax)") from None

import numpy as np

from . import interop
from .errors import DiffsimError

__all__ = ["function"]


def _platform(x):
    try:
        return next(iter(x.devices())).platform
    except jax.errors.ConcretizationTypeError:  # traced under jit: its default backend
        return jax.default_backend()


def _check(x):
    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        raise DiffsimError(f"a diffsim JAX function takes an array, got {type(x).__name__}")
    interop.check_runtime(np.dtype(x.dtype).name, _platform(x), "jax",
                          fix_dtype="for float64 call jax.config.update('jax_enable_x64', "
                                    "True) before making arrays, or convert with .astype",
                          fix_device="place the array on that device (jax.device_put) or "
                                     "set jax_platforms")


def function(obj, **options):
    """``f(x)``: the outputs of a diffsim Problem or Projectile at array ``x``, with a
    custom VJP by diffsim's gradients. For a Problem, x of shape (n,) gives its
    objective (a scalar) and (B, n) gives (B,), one evaluation per row (option
    ``method``: the gradient method). For a Projectile of B cannons, x of shape (B, k)
    gives each cannon's objective term (B,) in one batched pass (options ``inputs``,
    required, ``objective``, ``maximize``, ``strict``). The forward pass of a
    differentiated call also takes the gradients (one reverse pass); the backward
    multiplies them by the cotangent."""
    m = interop.as_map(obj, **options)

    def shapes(x):
        _check(x)
        return (jax.ShapeDtypeStruct(m.out_shape(tuple(x.shape)), x.dtype),
                jax.ShapeDtypeStruct(x.shape, x.dtype))

    def host(X, need_grad):
        Y, G = m(np.asarray(X, dtype=np.float64), need_grad=need_grad)
        dt = np.asarray(X).dtype
        return (Y.astype(dt), G.astype(dt)) if need_grad else Y.astype(dt)

    @jax.custom_vjp
    def f(x):
        y_shape, _ = shapes(x)
        return jax.pure_callback(lambda X: host(X, False), y_shape, x,
                                 vmap_method="sequential")

    def f_fwd(x):
        Y, G = jax.pure_callback(lambda X: host(X, True), shapes(x), x,
                                 vmap_method="sequential")
        return Y, G

    def f_bwd(G, ct):
        # Y[b] depends only on row b of x: d(ct·Y)/dx[b] = ct[b]·G[b]
        return (G * jnp.expand_dims(ct, -1),)

    f.defvjp(f_fwd, f_bwd)
    f.map = m
    return f
