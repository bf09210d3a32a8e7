"""The layers: Problem holds the maths, Task the command line's hooks, diffsim.plots
draws arrays the task computed."""
import importlib
import inspect

import numpy as np
import pytest

from diffsim import scene as scene_mod
from diffsim.problem import Param, Parameters, Problem
from diffsim.task import Task

HOOKS = ("summary", "summary_text", "plot_run", "warnings", "run_optimization", "report_text",
         "fit", "sensitivity")


def test_problem_holds_no_cli_hooks_and_task_holds_them_all():
    assert not [h for h in HOOKS if hasattr(Problem, h)]
    assert all(callable(getattr(Task, h)) for h in HOOKS)


@pytest.mark.parametrize("kind", sorted(scene_mod.KINDS))
def test_every_scene_kind_builds_a_problem_that_is_a_task(kind):
    mod = importlib.import_module(scene_mod.KINDS[kind])
    classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
               if c.__module__ == mod.__name__ and issubclass(c, Problem)]
    assert classes and all(issubclass(c, Task) for c in classes), (kind, classes)


class _Square(Problem):
    name = "square"
    methods = ("fd",)
    default_method = "fd"

    def __init__(self):
        self.params = Parameters([Param("a", 3.0, optimize=True)])

    def _objective(self, x):
        return float(x[0] ** 2)


def test_build_refuses_a_kind_whose_build_returns_no_task(monkeypatch, tmp_path):
    sc = scene_mod.load("cannon")
    mod = importlib.import_module(scene_mod.KINDS["cannon"])
    monkeypatch.setattr(mod, "build", lambda scene, **_: _Square())
    with pytest.raises(TypeError, match="not a diffsim.task.Task"):
        scene_mod.build(sc)


def test_task_defaults_on_a_bare_problem():
    class SquareTask(Task, _Square):
        pass
    t = SquareTask()
    s = t.summary()
    assert s == {"objective": 9.0, "params": {"a": 3.0}}
    assert "objective = 9" in t.summary_text(s) and t.warnings() == [] and t.plot_run(".") == []
    from diffsim.errors import DiffsimError
    with pytest.raises(DiffsimError, match="does not support `fit`"):
        t.fit()
    r = t.run_optimization(iterations=3, progress=False)
    assert r["iterations"] >= 1 and "status: " in t.report_text(r)


def test_plots_draw_arrays_without_a_problem(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    from diffsim.plots import cannon, common
    t = np.linspace(0.1, 1.4, 21)
    fig = cannon.landscape_1d_figure(t, (t - 0.7) ** 2, 2 * (t - 0.7), path=[0.2, 0.5, 0.7],
                                     name="angle", unit="rad")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "angle [rad]" and "along angle" in ax.get_title()
    a, b = np.linspace(0, 1, 5), np.linspace(1, 2, 4)
    A, B = np.meshgrid(a, b)
    fig2 = cannon.landscape_figure(a, b, A ** 2 + B ** 2, 2 * A, 2 * B, path=[[0.5, 1.5]],
                                   xlabel="angle [rad]", ylabel="speed [m/s]")
    p = common.save(fig2, tmp_path, "landscape.png")
    assert p.stat().st_size > 1000
    common.save(fig, tmp_path, "l1.png")
