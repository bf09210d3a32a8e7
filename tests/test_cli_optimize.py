"""`optimize` for every scene kind: checkpoint, resume, best_params.json, exit classes."""
import json

import pytest

from diffsim.checkpoint import load_params
from diffsim.cli import main

LIGHT = {
    "cannon": [],
    "oscillator": ["--set", "optimize.optimizer='lbfgs'"],
    "spring_triangle": ["--set", "sim.steps=60"],
}


def run(capsys, *argv):
    code = main([*argv, "--json", "--no-plot", "--no-progress"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("scene", sorted(LIGHT))
def test_resume_continues_and_saves_loadable_best_parameters(capsys, tmp_path, scene):
    import diffsim
    code, first = run(capsys, "optimize", scene, *LIGHT[scene], "--iterations", "3", "--out", str(tmp_path))
    # a target/fit with a criterion has not met it in 3 iterations (exit 1); the triangle's
    # area objective states none, so running its budget is the whole task (exit 0)
    want = ("completed", 0) if scene == "spring_triangle" else ("max_iterations", 1)
    assert (first["status"], code) == want and first["iterations"] == 3
    code, second = run(capsys, "optimize", scene, *LIGHT[scene], "--iterations", "6",
                       "--out", str(tmp_path), "--resume")
    assert second["iterations"] > 3
    assert second["objective"] <= first["objective"]            # the best point is kept
    pb = diffsim.build(scene, [a for a in LIGHT[scene] if a != "--set"])
    x = load_params(tmp_path / "best_params.json", pb)
    assert pb.objective(x) == pytest.approx(second["objective"], rel=1e-9)


def test_resume_after_a_finished_run_says_so(capsys, tmp_path):
    run(capsys, "optimize", "cannon", "--iterations", "4", "--out", str(tmp_path))
    code, d = run(capsys, "optimize", "cannon", "--iterations", "4", "--out", str(tmp_path), "--resume")
    assert d["iterations"] == 4 and "nothing to do" in d["message"]


def test_a_corrupt_checkpoint_exits_2_naming_it(capsys, tmp_path):
    (tmp_path / "checkpoint.json").write_text('{"version": 1, "names": ["angle"], "x": [0.1')
    assert main(["optimize", "cannon", "--out", str(tmp_path), "--resume", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.json" in err and "not valid JSON" in err


def test_resume_without_a_checkpoint_exits_2(capsys, tmp_path):
    assert main(["optimize", "cannon", "--out", str(tmp_path / "new"), "--resume", "--no-plot"]) == 2
    assert "--resume needs a checkpoint" in capsys.readouterr().err


def test_ctrl_c_before_the_first_evaluation_saves_the_start_and_exits_130(capsys, tmp_path, monkeypatch):
    from diffsim.tasks import cannon

    def interrupted(self, *a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(cannon.CannonProblem, "_prepare_arcs", interrupted)
    assert main(["optimize", "cannon", "--out", str(tmp_path), "--no-plot", "--json"]) == 130
    d = json.loads(capsys.readouterr().out)
    assert d["status"] == "interrupted"
    saved = json.loads((tmp_path / "best_params.json").read_text())
    assert saved["params"]["angle"] == 0.3
