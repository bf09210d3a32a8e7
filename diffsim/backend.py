"""Which kernel language diffsim runs on: Taichi (default) or Quadrants.

Quadrants (``pip install quadrants``, ``import quadrants as qd``) is the maintained fork of
Taichi with the same kernel language. Every kernel module writes

    from ..backend import ti

and then uses ``ti.kernel``, ``ti.field``, ``ti.static`` ... exactly as with
``import taichi as ti``. ``ti`` here is a stand-in module: each attribute is looked up in
the *selected* backend when it is used, so kernels built lazily (in ``_compile`` methods,
at the first launch) are built with the backend chosen by then.

Choosing. One backend per process. It is fixed the first time it is needed (the first
``diffsim.init()``, simulation object or kernel), from, in order: ``diffsim.init(backend=...)``
(the CLI's ``--backend``), the environment variable ``DIFFSIM_BACKEND``, ``"taichi"``.
Asking for the other one afterwards raises a :class:`~diffsim.errors.DiffsimError`: the two
runtimes keep separate fields and kernels, and nothing built with one can run on the other.

``@ti.func`` at import time (the bundled ODE right-hand sides, users' own) does not fix the
backend: before one is chosen, ``ti.func`` returns a wrapper that decorates the function
with the chosen backend's ``func`` at its first use inside a kernel.
"""
import contextlib
import functools
import importlib
import os
import sys
import types

from .errors import DiffsimError

#: backend name -> Python module
BACKENDS = {"taichi": "taichi", "quadrants": "quadrants"}
DEFAULT = "taichi"
ENV = "DIFFSIM_BACKEND"

_name = None        # the chosen backend's name, once chosen
_module = None      # its module


@contextlib.contextmanager
def stdout_to_stderr(quiet=False):
    """Send file descriptor 1 to stderr (``quiet``: to /dev/null) for a while: Taichi and
    Quadrants print a banner and "Starting on arch" to stdout (from C++ and Python), which
    would corrupt `--json` and clutter every command's output."""
    try:
        fd = sys.stdout.fileno()
        err = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # captured streams (pytest, notebooks)
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    null = os.open(os.devnull, os.O_WRONLY) if quiet else None
    try:
        os.dup2(null if quiet else err, fd)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, fd)
        os.close(saved)
        if null is not None:
            os.close(null)


def requested() -> str:
    """The backend asked for by the environment (``DIFFSIM_BACKEND``), else the default."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return DEFAULT
    if value.lower() not in BACKENDS:
        raise DiffsimError(f"environment variable {ENV}={value!r} is not a backend diffsim "
                           f"knows; set it to one of {', '.join(BACKENDS)} or unset it")
    return value.lower()


def name() -> str:
    """The chosen backend's name, choosing it (:func:`requested`) if none is yet."""
    return _name if _name is not None else select()[0]


def chosen():
    """The chosen backend's name, or None while none is (nothing imported yet)."""
    return _name


def select(backend: str | None = None):
    """Fix the backend for this process (``None``: :func:`requested`) and import it.
    Returns ``(name, module)``. Refuses a different backend once one is chosen."""
    global _name, _module
    if backend is not None and backend not in BACKENDS:
        raise DiffsimError(f"backend={backend!r} is not known; use one of {', '.join(BACKENDS)}")
    if _name is not None:
        if backend is not None and backend != _name:
            raise DiffsimError(
                f"diffsim already runs on {_name} in this process, so it cannot switch to "
                f"{backend}: fields and kernels of one backend cannot run on the other. Choose the "
                f"backend before anything else runs: diffsim.init(backend={backend!r}) first, "
                f"--backend {backend} on the command line, or {ENV}={backend} in the environment")
        return _name, _module
    want = backend or requested()
    # Both print a version banner on import, on every command; a user who wants it sets
    # ENABLE_TAICHI_HEADER_PRINT=1 / ENABLE_QUADRANTS_HEADER_PRINT=1.
    os.environ.setdefault("ENABLE_TAICHI_HEADER_PRINT", "False")
    os.environ.setdefault("ENABLE_QUADRANTS_HEADER_PRINT", "False")
    try:
        with stdout_to_stderr():
            mod = importlib.import_module(BACKENDS[want])
    except ImportError as e:
        extra = " (pip install quadrants)" if want == "quadrants" else ""
        raise DiffsimError(f"backend {want!r} is not installed{extra}: {e}") from None
    _name, _module = want, mod
    return _name, _module


def module():
    """The chosen backend's module (``taichi`` or ``quadrants``)."""
    return _module if _module is not None else select()[1]


def lang_impl():
    """The backend's ``lang.impl`` module (trace-time helpers: expr_init, subscript)."""
    return importlib.import_module(BACKENDS[name()] + ".lang.impl")


def expr_class():
    """The backend's expression class (``lang.expr.Expr``)."""
    return importlib.import_module(BACKENDS[name()] + ".lang.expr").Expr


def is_foreign_function(fn) -> bool:
    """True for a ``@func`` of the backend that is *not* the chosen one (a user's
    ``@taichi.func`` handed to a Quadrants run, or the reverse): it cannot be called from
    the chosen backend's kernels."""
    mine = "_is_taichi_function" if name() == "taichi" else "_is_quadrants_function"
    other = "_is_quadrants_function" if name() == "taichi" else "_is_taichi_function"
    if isinstance(fn, _LazyFunc):
        return False
    return hasattr(fn, other) and not hasattr(fn, mine)


class _LazyFunc:
    """A ``@ti.func`` made before the backend was chosen: decorated with the chosen
    backend's ``func`` at its first use (inside a kernel, so the backend is known)."""

    def __init__(self, fn, **options):
        functools.update_wrapper(self, fn)
        self._real, self._options = None, options

    def _resolve(self):
        if self._real is None:
            self._real = module().func(self.__wrapped__, **self._options)
        return self._real

    def __call__(self, *args, **kwargs):
        return self._resolve()(*args, **kwargs)

    def __getattr__(self, attr):          # _is_taichi_function, .func, .wrapper, ...
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._resolve(), attr)


def _lazy_func(fn=None, **kwargs):
    if fn is None:                        # @ti.func(...) with options
        return lambda f: module().func(f, **kwargs) if _name else _LazyFunc(f, **kwargs)
    return _LazyFunc(fn)


class _Stand_in(types.ModuleType):
    """``ti``: attribute access goes to the chosen backend's module."""

    def __getattr__(self, attr):
        if attr == "func" and _name is None:
            return _lazy_func
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(module(), attr)


ti = _Stand_in("diffsim.backend.ti", "The chosen backend's module (taichi or quadrants).")


class _ImplStandIn(types.ModuleType):
    """``impl``: the chosen backend's ``lang.impl`` (expr_init, subscript), looked up at use."""

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(lang_impl(), attr)


impl = _ImplStandIn("diffsim.backend.impl", "The chosen backend's lang.impl module.")
