"""Scene loading: every bad value is named with its file and key; CLI exits 2."""
import pathlib

import pytest

import diffsim
from diffsim.cli import main
from diffsim.errors import SceneError
from diffsim.scene import bundled_scenes, load

BAD = [
    ("[launch]\nsped = 3.0\n", "launch.sped", "unknown key"),
    ("[sim]\ndt = -0.01\n", "sim.dt", "must be >"),
    ("[sim]\ndt = nan\n", "sim.dt", "finite"),
    ("[launch]\nspeed = 0.0\n", "launch.speed", "must be >"),
    ("[launch]\nspeed = 'fast'\n", "launch.speed", "expected a number"),
    ("[physics]\nwind = [1.0, 2.0, 3.0]\n", "physics.wind", "entries"),
    ("[sim]\nintegrator = 'rk5'\n", "sim.integrator", "one of"),
    ("[optimize]\nparams = ['angel']\n", "optimize.params", "unknown parameter"),
    ("[optimize]\nbounds.angle = [1.0, 0.5]\n", "optimize.bounds", "low < high"),
    ("[wrong]\na = 1\n", "wrong", "unknown section"),
    ("[target]\nx = []\n", "target.x", "at least one target"),
]


@pytest.mark.parametrize("body,key,words", BAD)
def test_bad_scene_names_file_key_and_problem(tmp_path, body, key, words):
    f = tmp_path / "bad.toml"
    f.write_text('kind = "cannon"\n' + body)
    with pytest.raises(SceneError) as e:
        load(f)
    msg = str(e.value)
    assert str(f) in msg and f"'{key}'" in msg and words in msg, msg


def test_malformed_toml_and_missing_kind(tmp_path):
    f = tmp_path / "broken.toml"
    f.write_text("kind = 'cannon'\n[launch\n")
    with pytest.raises(SceneError, match="not valid TOML"):
        load(f)
    f.write_text("[launch]\nspeed = 3.0\n")
    with pytest.raises(SceneError, match="'kind'.*required"):
        load(f)
    f.write_text("kind = 'rocket'\n")
    with pytest.raises(SceneError, match="unknown scene kind"):
        load(f)


def test_overrides_are_validated_like_the_file():
    sc = load("cannon", ["physics.drag=0.1", "launch.angle=0.7"])
    assert sc["physics"]["drag"] == 0.1 and sc["launch"]["angle"] == 0.7
    with pytest.raises(SceneError, match="physics.dragg"):
        load("cannon", ["physics.dragg=0.1"])
    with pytest.raises(SceneError, match="KEY=VALUE"):
        load("cannon", ["physics.drag"])
    with pytest.raises(SceneError, match="sim.dt.*finite"):
        load("cannon", ["sim.dt=nan"])


def test_unknown_scene_name_lists_the_bundled_ones():
    with pytest.raises(SceneError, match="cannon"):
        load("canon")


@pytest.mark.parametrize("name", sorted(bundled_scenes()))
def test_every_bundled_scene_loads(name):
    sc = load(name)
    assert sc.description, f"{name} needs a description"


def test_cli_bad_scene_exits_2_without_traceback(tmp_path, capsys):
    f = tmp_path / "bad.toml"
    f.write_text('kind = "cannon"\n[sim]\ndt = -1.0\n')
    assert main(["grad", str(f)]) == 2
    err = capsys.readouterr().err
    assert "sim.dt" in err and "-1.0" in err and "Traceback" not in err
    assert main(["run", "cannon", "--set", "launch.speed=-3", "--no-plot"]) == 2
    assert "launch.speed" in capsys.readouterr().err


def test_package_does_not_init_taichi_or_parse_argv_on_import():
    import subprocess
    import sys
    code = ("import sys; sys.argv=['x','--bogus']; import diffsim, diffsim.cli, diffsim.plots.cannon;"
            "import diffsim.runtime as r; assert r._current is None; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
