"""ODE fit: status words from a stated criterion, Ctrl-C, data that cannot determine the
parameters, bad data files, standard errors and correlations."""
import numpy as np
import pytest

from diffsim import scene
from diffsim.errors import DiffsimError
from diffsim.tasks import ode as ode_task

LIGHT = ["solve.t1=1.0", "solve.dt=0.01", "observe.count=11", 'solve.solver="midpoint"']


def _pb(name="oscillator", extra=()):
    return scene.build(scene.load(name, [*LIGHT, *extra]))


def _csv(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_exact_recovery_is_converged_and_short_budget_is_not():
    pb = _pb()
    r = pb.fit(plots=False)
    assert r["status"] == "converged" and r["success"] is True
    assert "exact fit" in r["message"] or "Gauss–Newton" in r["message"]
    np.testing.assert_allclose(list(r["params"].values()), [2.0, 0.1], rtol=1e-7)
    pb = _pb()
    r = pb.fit(plots=False, iterations=2)
    assert r["status"] == "max_iterations" and r["success"] is False
    assert "raise --iterations" in r["message"]


@pytest.mark.parametrize("optimizer", ["lbfgs", "lm"])
def test_ctrl_c_returns_best_point_interrupted(optimizer, monkeypatch):
    pb = _pb()
    calls = {"n": 0}
    real = pb._solve

    def solve(*a, **k):
        calls["n"] += 1
        if calls["n"] > 8:
            raise KeyboardInterrupt
        return real(*a, **k)
    start = pb._objective(pb.params.vector)
    monkeypatch.setattr(pb, "_solve", solve)
    r = pb.fit(plots=False, optimizer=optimizer)
    assert r["status"] == "interrupted" and r["success"] is False
    assert r["loss"] <= start
    monkeypatch.setattr(pb, "_solve", real)
    # the reported params are the best point: its loss is the reported one
    assert pb._objective(pb.params.vector) == pytest.approx(r["loss"], rel=1e-12)


def test_data_that_cannot_determine_the_parameters(tmp_path):
    nan = _csv(tmp_path, "t,x,v\n0.0,,\n0.5,,\n1.0,,\n", "nan.csv")
    with pytest.raises(DiffsimError, match=r"nan\.csv: 0 finite"):
        _pb().fit(data=nan, plots=False)
    few = _csv(tmp_path, "t,prey,predator\n0.0,1,\n0.5,,2\n1.0,,\n", "few.csv")
    with pytest.raises(DiffsimError, match=r"few\.csv: 2 finite.*4 parameters"):
        _pb("lotka_volterra").fit(data=few, plots=False, optimizer="lm")
    # only g/L enters the pendulum: length and g together are not identifiable
    pb = _pb("pendulum", ['optimize.params=["length", "g"]'])
    with pytest.raises(DiffsimError, match="rank-deficient.*(length and g|g and length)"):
        pb.fit(plots=False)


@pytest.mark.parametrize("content, match", [
    (b"t,x,v\n0,1,0\n0.5,\xff\xfe,0\n", r"bad\.csv:3: not UTF-8"),
    (b"t,x,v\n0,1,0\n0.5,inf,0\n", r"bad\.csv:3: x = 'inf' is not a finite"),
    (b"t,x,v\n0,1,0\n", r"bad\.csv: 1 data row"),
    (b"t,x,v\n0,1,0\n0.5,1,0\n7,1,0\n9,1,0\n", r"bad\.csv:4: observation time 7 lies outside.*2 of 4"),
    (b"t,x,v\n0,1,0\n0.005,1,0\n", r"bad\.csv: .*not on the step grid"),
    (b"t,x,v\x00\x00\n", r"bad\.csv:1: NUL byte"),
])
def test_bad_data_files_name_file_and_line(tmp_path, content, match):
    p = tmp_path / "bad.csv"
    p.write_bytes(content)
    with pytest.raises(DiffsimError, match=match):
        _pb().fit(data=p, plots=False)


def test_endless_file_is_refused_without_reading_it_all():
    with pytest.raises(DiffsimError, match="/dev/zero: data file is larger than"):
        _pb().fit(data="/dev/zero", plots=False)


def test_many_outside_times_are_not_all_listed(tmp_path):
    rows = "\n".join(f"{t},1,0" for t in np.arange(2, 500))
    p = _csv(tmp_path, "t,x,v\n" + rows + "\n")
    with pytest.raises(DiffsimError) as e:
        _pb().fit(data=p, plots=False)
    assert len(str(e.value)) < 400 and "498 of 498" in str(e.value)


def test_std_errors_and_correlation(tmp_path):
    pb = _pb(extra=["observe.noise=0.01"])
    r = pb.fit(plots=False, optimizer="lm")
    assert r["status"] == "converged"
    se = np.array(list(r["std_errors"].values()))
    assert np.all(np.isfinite(se)) and np.all(se > 0) and np.all(se < 0.05)
    c = np.array(r["correlation"]["matrix"])
    assert c.shape == (2, 2) and np.allclose(np.diag(c), 1) and abs(c[0, 1]) < 1
    # singular JᵀJ: NaN and a warning, never a made-up number
    J = np.array([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    se, corr, w = ode_task._uncertainty(J, 1.0, ["a", "b"])
    assert np.all(np.isnan(se)) and np.all(np.isnan(corr)) and "singular" in w[0]
    # closed form for a full-rank linear model: cov = s² (JᵀJ)⁻¹
    J = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    se, corr, w = ode_task._uncertainty(J, 3.0, ["a", "b"])
    cov = 3.0 / 1 * np.linalg.inv(J.T @ J)
    np.testing.assert_allclose(se, np.sqrt(np.diag(cov)))
    np.testing.assert_allclose(corr[0, 1], cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    assert w == []
