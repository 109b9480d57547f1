"""Every example in README.md runs as written: its shell commands (in order, in one folder, so the atlas example
reads what the commands before it wrote) and its Python blocks (in one namespace).

Commands that need the network (a hub model, an upload), a placeholder (MODEL, ./my_images/), a server that never
returns, or the package installation itself are listed with the reason they are not run here; everything else runs
on world-clip, with the step counts and image counts below cut down so the test stays fast (the README's own
numbers are what a user runs; these change run time, not what the command does).
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from clipviz.apps.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"
SHRINK = (
    (r"--steps \d+", "--steps 2"),
    (r"world:(2000|3000)", "world:120"),
    (r"--neurons 0:512", "--neurons 0:16"),
)
NOT_RUN = (
    (r"^pip install", "installs clipviz: the tests run inside that installation"),
    (r"^python -m pytest", "the test suite itself"),
    (r"\b(hf|open_clip|timm):", "downloads a model from the Hub (no network in tests)"),
    (r"\bMODEL\b|\./my_images/|\bphoto\.png\b", "a placeholder for the reader's own model, images or photo"),
    (r"--space USER/NAME --dataset", "uploads to the Hub (needs a token and the network); its dry run runs"),
    (r"^clipviz space\b|^python spaces/app\.py", "serves until stopped (the app is served in test_space/test_sweep)"),
)


def shell_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands += [part.strip() for part in line.split("&&")]
    return commands


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _shrunk(command: str) -> str:
    for pattern, replacement in SHRINK:
        command = re.sub(pattern, replacement, command)
    if command.startswith("clipviz demo") and "--steps" not in command:
        command += " --steps 2 --per-block 1 --planted 2"
    return command


def test_every_shell_example_is_run_or_has_a_reason():
    commands = shell_examples()
    run = [c for c in commands if not any(re.search(p, c) for p, _ in NOT_RUN)]
    assert len(commands) >= 15 and len(run) >= 9, run
    assert any(c.startswith("clipviz atlas results/") for c in run)
    assert any(c.startswith("clipviz sweep") for c in run)


@pytest.mark.slow
def test_readme_shell_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPVIZ_CACHE", str(tmp_path / "cache"))
    ran = []
    for command in shell_examples():
        if any(re.search(p, command) for p, _ in NOT_RUN):
            continue
        argv = shlex.split(_shrunk(command))
        assert argv[0] == "clipviz", command
        code = main(argv[1:])
        err = capsys.readouterr().err
        assert code == 0, f"{command}: {err[-2000:]}"
        ran.append(command)
    assert (tmp_path / "site" / "atlas.json").is_file()  # the atlas example found what the commands wrote
    assert (tmp_path / "sweep" / "atlas" / "index.html").is_file()
    assert (tmp_path / "space" / "app.py").is_file()  # the sweep that stages its Space
    assert (tmp_path / "clipviz-demo" / "index.html").is_file()
    # `clipviz --help` itself, as a user types it, in a fresh interpreter.
    done = subprocess.run([sys.executable, "-m", "clipviz.cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "sweep" in done.stdout


def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in python_examples():
        code = re.sub(r"steps=\d+", "steps=2", block)
        exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    assert namespace["vis"][0].meta["objective_end"] is not None
    assert namespace["model"].n_blocks == 4
