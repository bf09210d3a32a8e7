"""Every CLI verb end to end with --json (light settings)."""
import json

import pytest

from diffsim.cli import main


def run_json(capsys, *argv):
    code = main(list(argv) + ["--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_scenes_lists_bundled_scenes(capsys):
    code, rows = run_json(capsys, "scenes")
    names = {r["name"] for r in rows}
    assert code == 0 and {"cannon", "cannon_no_drag", "cannon_bounce"} <= names


def test_grad_prints_objective_params_and_grad(capsys):
    code, d = run_json(capsys, "grad", "cannon", "--set", "launch.angle=0.5")
    assert code == 0
    assert set(d) >= {"objective", "params", "grad"}
    assert d["params"] == {"angle": 0.5} and d["grad"]["angle"] > 0  # overshoots: raise → further
    code, d = run_json(capsys, "grad", "cannon", "--all", "--method", "fd")
    assert "drag" in d["grad"] and d["method"] == "fd"


def test_check_passes_and_reports_relative_errors(capsys):
    code, d = run_json(capsys, "check", "cannon_bounce", "--all", "--set", "sim.dt=0.01")
    assert code == 0 and d["ok"]
    assert d["params"]["restitution"]["rel_error"] < 1e-6


def test_run_reports_landing_and_writes_a_plot(capsys, tmp_path):
    code, d = run_json(capsys, "run", "cannon", "--out", str(tmp_path))
    assert code == 0 and d["landed"] == [True]
    assert (tmp_path / "trajectory.png").stat().st_size > 1000


def test_optimize_hits_and_writes_plots(capsys, tmp_path):
    code, d = run_json(capsys, "optimize", "cannon", "--out", str(tmp_path))
    assert code == 0
    assert set(d) >= {"params", "objective", "miss", "reachable", "iterations"}
    assert d["reachable"] == [True] and d["miss"][0] < 1e-3
    for name in ("trajectories.png", "loss.png", "landscape.png"):
        assert (tmp_path / name).exists()


def test_optimize_unreachable_exits_1(capsys, tmp_path):
    code, d = run_json(capsys, "optimize", "cannon", "--set", "target.x=[800.0]",
                       "--iterations", "40", "--no-plot", "--out", str(tmp_path))
    assert code == 1 and d["reachable"] == [False] and "unreachable" in d["message"]


def test_bad_method_and_arguments_exit_2(capsys):
    assert main(["grad", "spring_triangle", "--method", "adjoint"]) == 2   # not offered there
    assert "adjoint" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["optimize", "cannon", "--iterations", "0"])
    assert e.value.code == 2
