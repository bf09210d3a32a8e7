"""The ``diffsim`` command: argument parsing, progress, JSON output, exit codes.

No physics here: every verb loads a scene, builds its task (a Problem and a
:class:`diffsim.task.Task`) and calls the Problem's maths and the Task's hooks. Exit
status: 0 success, 1 the task failed (e.g. a target unreachable, a gradient check
failed), 2 bad input (scene, key, value, arguments), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys

import numpy as np

from . import scene as scene_mod
from .checkpoint import jsonable
from .errors import DiffsimError


def _emit(args, obj: dict, text: str):
    if args.json:
        print(json.dumps(jsonable(obj), indent=None))
    else:
        print(text)


def _out_dir(args, name):
    """The output folder (made if missing); a path that is a file, or that cannot be
    made, is bad input (exit 2)."""
    p = pathlib.Path(args.out) if args.out else pathlib.Path("diffsim-out") / name
    if p.exists() and not p.is_dir():
        raise DiffsimError(f"--out {p}: exists and is not a directory; pass a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DiffsimError(f"--out {p}: cannot create the folder ({e.strerror or e})") from None
    return p


def _problem(args, before_build=None, **kw):
    """(scene, problem) of ``args.scene``; ``before_build(scene)`` runs after the scene is
    validated and before anything is compiled (cheap checks of other inputs first)."""
    from . import runtime
    # Load (and validate) before Taichi starts: its init turns on flush-to-zero, after
    # which Python reads 5e-324 as 0.0 and a message would quote the wrong value.
    sc = scene_mod.load(args.scene, args.set)
    args.scene_path = sc.path
    if before_build is not None:
        before_build(sc)
    runtime.init(arch=args.arch, precision=args.precision, backend=getattr(args, "backend", None))
    return sc, scene_mod.build(sc, **kw)


def _warn(pb, obj, x=None):
    """Print the problem's warnings on stderr and add them to the JSON object."""
    ws = list(pb.warnings(x))
    for w in ws:
        print(f"diffsim: warning: {w}", file=sys.stderr)
    if ws:
        obj["warnings"] = ws


# -- verbs -----------------------------------------------------------------------------
def cmd_scenes(args):
    rows = scene_mod.describe_all()
    if args.json:
        print(json.dumps([{"name": n, "kind": k, "description": d} for n, k, d in rows]))
        return 0
    w = max((len(n) for n, _, _ in rows), default=4)
    for n, k, d in rows:
        print(f"{n:<{w}}  [{k}]  {d}")
    return 0


def cmd_run(args):
    sc, pb = _problem(args)
    out = None if args.no_plot else _out_dir(args, sc.name)
    summary = pb.summary()
    summary["plots"] = [] if out is None else [str(f) for f in pb.plot_run(out)]
    text = pb.summary_text(summary)
    if summary["plots"]:
        text += "\nplots: " + ", ".join(summary["plots"])
    _warn(pb, summary)
    _emit(args, summary, text)
    return 0


def cmd_grad(args):
    sc, pb = _problem(args)
    f, g = pb.value_and_grad(method=args.method)
    names = pb.params.names
    free = pb.params.free
    keep = [i for i, n in enumerate(names) if args.all or free[i] or not free.any()]
    out = {"scene": sc.name, "method": args.method or pb.default_method, "objective": f,
           "params": {names[i]: pb.params.items[i].value for i in keep},
           "grad": {names[i]: float(g[i]) for i in keep}}
    text = (f"objective = {f:.12g}   (method: {out['method']})\n"
            + "\n".join(f"  d/d {names[i]:<16} = {g[i]: .12g}   (at {pb.params.items[i].value:.8g})"
                        for i in keep[:64]))
    if len(keep) > 64:
        text += f"\n  … {len(keep) - 64} more (--json prints all); gradient 2-norm {np.linalg.norm(g):.6g}"
    _warn(pb, out)
    _emit(args, out, text)
    return 0


def cmd_check(args):
    from .gradcheck import gradcheck
    sc, pb = _problem(args)
    names = None if not args.all else pb.params.names
    rep = gradcheck(pb, method=args.method, names=names, rtol=args.rtol, atol=args.atol,
                    step=args.step, max_params=args.max_params, directions=args.directions,
                    progress=not args.json and sys.stderr.isatty())
    out = {"scene": sc.name, **rep.as_dict()}
    _warn(pb, out)
    _emit(args, out, rep.table())
    return 0 if rep.ok else 1


def _finish_optimization(args, pb, report, out_dir, verb="optimize", text=None):
    """Save the best parameters, print the report and map its status to an exit code:
    0 converged, 1 not converged / diverged, 130 interrupted."""
    from . import checkpoint
    if out_dir is not None:
        saved = checkpoint.save_params(out_dir / "best_params.json", pb,
                                       objective=report.get("objective"),
                                       extra={"status": report.get("status")})
        report["best_params_file"] = str(saved)
    text = text or pb.report_text(report)
    if out_dir is not None:
        text += f"\nbest parameters: {report['best_params_file']}"
    _emit(args, report, text)
    status = report.get("status")
    if status == "interrupted":
        print(f"diffsim: interrupted; the best parameters found so far are above"
              + (f" and saved in {report['best_params_file']}" if out_dir is not None else ""),
              file=sys.stderr)
        return 130
    if not report.get("success", False):
        print(f"diffsim: {verb} did not succeed (status {status})", file=sys.stderr)
        return 1
    return 0


def _check_resume(args):
    """--resume: a present checkpoint is read and validated (all but its parameter names
    against the scene's) before the scene is built, so a broken file is refused at once."""
    def check(sc):
        if args.resume:
            from .checkpoint import load_checkpoint
            from .task import checkpoint_path
            path = checkpoint_path(_out_dir(args, sc.name))
            if path.exists():
                load_checkpoint(path, None)
    return check


def cmd_optimize(args):
    sc, pb = _problem(args, before_build=_check_resume(args))
    out_dir = _out_dir(args, sc.name)
    try:
        report = pb.run_optimization(iterations=args.iterations, method=args.method,
                                     seed=args.seed, resume=args.resume, out=out_dir,
                                     progress=not args.json and not args.no_progress,
                                     plots=not args.no_plot)
    except KeyboardInterrupt:   # before the first evaluation, or while plotting
        report = {"status": "interrupted", "objective": math.nan, "iterations": 0,
                  "params": pb.params.as_dict(), "success": False,
                  "message": "interrupted before the optimisation finished its set-up; the "
                             "parameters saved are the current ones"}
        report["scene"] = sc.name
        from .task import report_text
        return _finish_optimization(args, pb, report, out_dir, text=report_text(report))
    report.setdefault("scene", sc.name)
    return _finish_optimization(args, pb, report, out_dir)


def cmd_fit(args):
    sc, pb = _problem(args)
    out_dir = _out_dir(args, sc.name)
    report = pb.fit(data=args.data, method=args.method, iterations=args.iterations,
                    out=out_dir, progress=not args.json and not args.no_progress,
                    plots=not args.no_plot, optimizer=args.optimizer)
    report.setdefault("scene", sc.name)
    return _finish_optimization(args, pb, report, out_dir, verb="fit")


def cmd_sensitivity(args):
    sc, pb = _problem(args)
    report = pb.sensitivity(method=args.method, out=_out_dir(args, sc.name), plots=not args.no_plot)
    _emit(args, report, pb.report_text(report))
    return 0


def cmd_hessian(args):
    from .hessian import MAX_DENSE, hessian
    sc, pb = _problem(args)
    names = pb.params.names if args.all else None
    res = hessian(pb, method=args.method, names=names, step=args.step,
                  max_params=MAX_DENSE if args.max_params is None else args.max_params)
    out = {"scene": sc.name, **res.as_dict()}
    text = res.text()
    if not args.no_plot:
        out["plots"] = [str(res.plot(_out_dir(args, sc.name)))]
        text += "\nplots: " + ", ".join(out["plots"])
    _warn(pb, out)
    _emit(args, out, text)
    return 0


def cmd_sweep(args):
    """`diffsim sweep`: a grid / random / multi-start sweep; the table and plots in --out."""
    import importlib
    sw = importlib.import_module("diffsim.sweep")   # the module (diffsim.sweep is the function)
    if args.workers is not None and args.workers < 0:
        raise DiffsimError(f"--workers must be 0 (in-process loop) or more, got {args.workers}")
    if args.scheduler and args.workers:
        raise DiffsimError("--scheduler runs on an existing cluster; --workers starts a local "
                           "one: pass one of them")
    if not (args.grid or args.random or args.multistart):
        raise DiffsimError("nothing to sweep: give --grid KEY=LO:HI:N, --random KEY=LO:HI with "
                           "--samples N, or --multistart N")
    for name in ("samples", "multistart", "chunk"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise DiffsimError(f"--{name} must be at least 1, got {v}")
    if args.samples and not args.random:
        raise DiffsimError("--samples needs at least one --random KEY=LO:HI")
    sc = scene_mod.load(args.scene, args.set)      # before Taichi starts (see _problem)
    args.scene_path = sc.path
    if getattr(args, "backend", None):
        # this process and the local workers it spawns (they inherit the environment)
        os.environ["DIFFSIM_BACKEND"] = args.backend
    out = _out_dir(args, f"{sc.name}-sweep")
    workers = (os.cpu_count() or 1) if args.workers is None and not args.scheduler else (args.workers or 0)
    rep = {}
    stopped = None
    try:
        tab = sw.sweep(sc, args.grid, evaluation=args.eval, random=args.random,
                       samples=args.samples or 0, multistart=args.multistart or 0,
                       bounds=args.bounds, method=args.method, iterations=args.iterations,
                       seed=args.seed, workers=workers, scheduler=args.scheduler,
                       chunk=args.chunk, out=out, resume=args.resume,
                       progress=not args.json and not args.no_progress, arch=args.arch,
                       precision=args.precision, report=rep)
    except sw.Interrupted as e:
        tab, stopped = e.table, e.reason
    plots = [] if args.no_plot or not len(tab) else [str(p) for p in sw.plots(tab, rep, out)]
    obj = {"scene": sc.name, **rep, "plots": plots}
    text = (f"{rep['done']} of {rep['points']} points ({rep['failed']} failed"
            + (f", {rep['skipped']} from the earlier run" if rep.get("skipped") else "")
            + f") in {rep['seconds']:.2f} s on {rep.get('engine', '?')}"
            + "\nresults: " + ", ".join(rep.get("files", [])))
    if plots:
        text += "\nplots: " + ", ".join(plots)
    _emit(args, obj, text)
    if stopped:
        print(f"diffsim: sweep {stopped}; {rep['done']} finished points are saved in "
              f"{out / sw.JOURNAL}; rerun with --resume to run the other "
              f"{rep['points'] - rep['done']}", file=sys.stderr)
        return 130 if "Ctrl-C" in stopped else 1
    if rep["failed"]:
        print(f"diffsim: {rep['failed']} of {rep['points']} points failed; their reasons are in "
              "the error column", file=sys.stderr)
    return 1 if rep["failed"] == rep["points"] else 0


# -- parser ----------------------------------------------------------------------------
def _positive(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return v


def _step(text):
    return "auto" if text == "auto" else _positive(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffsim", description=(
        "Differentiable physics: simulate a scene, take gradients, optimise, fit, and "
        "analyse sensitivities. SCENE is a bundled scene name (see `diffsim scenes`) or a "
        "path to a .toml file."))
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True

    def common(sp, scene=True):
        if scene:
            sp.add_argument("scene", metavar="SCENE", help="bundled scene name or .toml path")
            sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="override a scene value, e.g. --set physics.drag=0.1 (repeatable)")
            sp.add_argument("--arch", default="cpu", choices=["cpu", "cuda", "vulkan", "metal", "auto"],
                            help="device to run on (default cpu)")
            sp.add_argument("--precision", default="f64", choices=["f64", "f32"],
                            help="float precision (default f64)")
            sp.add_argument("--backend", default=None, choices=["taichi", "quadrants"],
                            help="kernel language (default: $DIFFSIM_BACKEND, else taichi)")
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")

    def method(sp):
        from .gradients import METHOD_NAMES  # the one registry of gradient methods
        sp.add_argument("--method", default=None, choices=list(METHOD_NAMES),
                        help="gradient method (default: the scene's)")

    def outputs(sp):
        sp.add_argument("--out", default=None, metavar="DIR",
                        help="folder for plots and results (default diffsim-out/<scene>)")
        sp.add_argument("--no-plot", action="store_true", help="write no plots")

    sp = sub.add_parser("scenes", help="list the bundled scenes")
    common(sp, scene=False)
    sp.set_defaults(func=cmd_scenes)

    sp = sub.add_parser("run", help="simulate a scene and plot it")
    common(sp); outputs(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("grad", help="print the objective and its gradient")
    common(sp); method(sp)
    sp.add_argument("--all", action="store_true", help="every parameter, not only optimisable ones")
    sp.set_defaults(func=cmd_grad)

    sp = sub.add_parser("check", help="compare a gradient with central finite differences")
    common(sp); method(sp)
    sp.add_argument("--all", action="store_true", help="check every parameter")
    sp.add_argument("--rtol", type=_positive, default=None,
                    help="relative tolerance (default 1e-6 in f64, 2e-2 in f32)")
    sp.add_argument("--atol", type=_positive, default=None,
                    help="absolute tolerance (default 1e-9 in f64, 1e-4 in f32)")
    sp.add_argument("--step", type=_step, default="auto",
                    help="relative finite-difference step, or 'auto' (default: a step ladder, "
                         "keeping the most stable estimate)")
    sp.add_argument("--max-params", type=int, default=32,
                    help="check each parameter up to this many; beyond, random directions")
    sp.add_argument("--directions", type=int, default=4,
                    help="random directions checked for many parameters (default 4)")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("optimize", help="optimise the scene's parameters")
    common(sp); method(sp); outputs(sp)
    sp.add_argument("--iterations", type=int, default=None, help="most iterations (default: the scene's)")
    sp.add_argument("--seed", type=int, default=None, help="random seed (default: the scene's)")
    sp.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_optimize)

    sp = sub.add_parser("fit", help="fit parameters to observed data (CSV)")
    common(sp); method(sp); outputs(sp)
    sp.add_argument("--data", required=True, metavar="FILE.csv", help="CSV: time column then state columns")
    sp.add_argument("--iterations", type=int, default=None)
    sp.add_argument("--optimizer", default=None, choices=["lbfgs", "adam", "lm", "gauss-newton", "newton", "newton-cg"],
                    help="optimiser (default: the scene's)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_fit)

    sp = sub.add_parser("hessian", help="the objective's Hessian, its eigenvalues and a plot "
                        "(small problems)")
    common(sp); method(sp); outputs(sp)
    sp.add_argument("--all", action="store_true",
                    help="every parameter, not only optimisable ones")
    sp.add_argument("--max-params", type=int, default=None,
                    help="refuse more parameters than this (default 50; beyond, use "
                         "Hessian-vector products: diffsim.hessian.hvp, optimizer newton-cg)")
    sp.add_argument("--step", type=_positive, default=None,
                    help="relative step of the gradient differences (default 1e-5)")
    sp.set_defaults(func=cmd_hessian)

    sp = sub.add_parser("sensitivity", help="sensitivities of the objective and trajectory")
    common(sp); method(sp); outputs(sp)
    sp.set_defaults(func=cmd_sensitivity)

    sp = sub.add_parser("sweep", help="evaluate a scene over a grid, random samples or multi-starts "
                        "(in parallel on Dask)")
    common(sp); method(sp); outputs(sp)
    sp.add_argument("--grid", action="append", default=[], metavar="KEY=LO:HI:N",
                    help="a grid axis: N values from LO to HI, or KEY=v1,v2,… (repeat for a "
                         "product). KEY: a parameter (angle, wind_x, physics.wind_x) or a scene "
                         "key (sim.dt; rebuilt and compiled per value)")
    sp.add_argument("--random", action="append", default=[], metavar="KEY=LO:HI",
                    help="a parameter drawn uniformly in [LO, HI] (with --samples)")
    sp.add_argument("--samples", type=int, default=None, help="random points (with --random)")
    sp.add_argument("--multistart", type=int, default=None, metavar="N",
                    help="optimise from N starts drawn inside the optimisable parameters' bounds")
    sp.add_argument("--bounds", action="append", default=[], metavar="NAME=LO:HI",
                    help="the range multi-starts are drawn from (default: the parameter's bounds)")
    sp.add_argument("--eval", default="grad", choices=["run", "grad", "optimize"],
                    help="what each point evaluates (default grad; --multistart: optimize)")
    sp.add_argument("--iterations", type=int, default=None, help="optimize: most iterations per point")
    sp.add_argument("--seed", type=int, default=0, help="seed of random points and starts (default 0)")
    sp.add_argument("--workers", type=int, default=None,
                    help="local worker processes (default: one per CPU core); 0: a plain loop "
                         "in this process")
    sp.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                    help="run on an existing Dask cluster")
    sp.add_argument("--chunk", type=int, default=None,
                    help="points per Dask task (default: about 4 tasks per worker, at most 32)")
    sp.add_argument("--resume", action="store_true",
                    help="run only the points missing from --out's points.jsonl")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_sweep)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("iterations", "max_params", "directions"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {v}")
    try:
        import matplotlib
        matplotlib.use("Agg")
        return args.func(args)
    except DiffsimError as e:
        msg = str(e)
        where = getattr(args, "scene_path", None)
        if where and where not in msg:        # e.g. a blow-up deep in a solver
            msg = f"{where}: {msg}"
        print(f"diffsim: error: {msg}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("diffsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
