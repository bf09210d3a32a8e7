"""ODE scenes through the CLI (light settings)."""
import json

from diffsim.cli import main

LIGHT = ["--set", "solve.t1=1.0", "--set", "solve.dt=0.01", "--set", "observe.count=11",
         "--set", "solve.solver=midpoint"]


def _json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_grad_and_check(capsys):
    assert main(["grad", "oscillator", "--json", *LIGHT]) == 0
    out = _json(capsys)
    assert out["method"] == "discrete"
    assert main(["check", "oscillator", "--json", *LIGHT]) == 0
    assert _json(capsys)["ok"] is True


def test_cli_sensitivity(capsys, tmp_path):
    assert main(["sensitivity", "oscillator", "--json", "--out", str(tmp_path), *LIGHT]) == 0
    out = _json(capsys)
    assert set(out["gradient"]) == {"omega", "zeta"}
    assert (tmp_path / "sensitivity.png").exists()


def test_cli_fit_bad_csv_names_line(capsys, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("t,x,v\n0,1,0\n0.1,abc,0\n")
    assert main(["fit", "oscillator", "--data", str(bad), "--no-plot", *LIGHT]) == 2
    assert "bad.csv:3" in capsys.readouterr().err
