"""The README's Python examples run as printed (in order, one namespace, like a notebook)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def quickstart_commands() -> dict[str, str]:
    """``{"1": "pip install . && kerasq demo", "2": ...}``: the Quickstart lines marked ``# (N)``."""
    found = re.findall(r"^(.*?)\s+# \((\d)\)", README.read_text(), flags=re.M)
    return {number: command.strip() for command, number in found}


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "ParityReport(" in printed and "median" in printed
    assert (tmp_path / "model.tflite").read_bytes()[4:8] == b"TFL3"
    # The documented spelling of the INQ callback works after a plain `import kerasq`.
    assert namespace["kerasq"].callbacks.INQ.__name__ == "INQ"


def test_quickstart_has_two_commands_demo_then_tests():
    commands = quickstart_commands()
    assert commands["1"] == "pip install . && kerasq demo"
    assert commands["2"].endswith("python -m pytest -q") and "pip install" in commands["2"]
