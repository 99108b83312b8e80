"""DVC's command line as the flows run it: a stage's lines reach the caller while it runs."""

from __future__ import annotations

import sys
from pathlib import Path

from rarespecies.core.dvc import _streamed

# Prints a line, then waits (up to 60 s) for the file the caller creates when it reads that
# line: only streaming lets the child see the file; captured output would arrive too late.
CHILD = """
import os, sys, time
print("ready", flush=True)
for _ in range(6000):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.01)
sys.stderr.write("bar 10%\\rbar 20%\\r")
print("saw the file" if os.path.exists(sys.argv[1]) else "never saw the file")
sys.exit(3)
"""


def test_lines_reach_the_caller_while_the_command_runs(tmp_path: Path):
    flag, lines = tmp_path / "read", []

    def on_line(line: str) -> None:
        lines.append(line)
        if line == "ready":
            flag.touch()

    proc = _streamed([sys.executable, "-c", CHILD, str(flag)], tmp_path, {}, on_line)
    # stderr merged in order; a carriage return (a bar drawn in place) ends a line too
    assert lines == ["ready", "bar 10%", "bar 20%", "saw the file"]
    assert proc.returncode == 3
    assert proc.stdout.splitlines() == lines and proc.stderr == ""
