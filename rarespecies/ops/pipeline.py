"""The DVC pipeline as the flows see it: its stages in order, and what a DVC run did.

DVC decides what runs; this module only reads dvc.yaml's graph and DVC's output.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from rarespecies.core.dvc import last_lines

# DVC prints these when another process holds the repository or an output lock: worth a
# retry. Anything else (bad data, bad params, a bug) fails the same way again: no retry.
TRANSIENT_MARKERS = ("Unable to acquire lock", "is busy, it is being blocked by")
# abseil's native INFO line (`I0000 00:00:1796066186.348531   11019 port.cc:153] ...`);
# its warnings and errors (W, E, F) stay at INFO.
NATIVE_LOG = re.compile(r"^I\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w.]+:\d+\] ")
TF_BANNERS = ("All log messages before absl::InitializeLog()",
              "To enable the following instructions:")
# DVC's own chatter after a stage: not what the stage did.
DVC_HINTS = ("Updating lock file", "To track the changes with git", "git add ",
             "To enable auto staging", "dvc config core.autostage", "Use `dvc push`")


class StageFailed(RuntimeError):
    """A DVC stage exited with an error; `transient` when a retry may succeed."""

    def __init__(self, stage: str, detail: str, transient: bool = False) -> None:
        super().__init__(f"stage {stage} failed: {detail}")
        self.stage, self.transient = stage, transient


def stage_failure(stage: str, proc: subprocess.CompletedProcess, step: str = "") -> StageFailed:
    """The error for a failed DVC command on `stage`; transient when DVC's output says so."""
    output = proc.stdout + proc.stderr
    return StageFailed(stage, f"{step}: {last_lines(proc)}" if step else last_lines(proc),
                       any(marker in output for marker in TRANSIENT_MARKERS))


def pipeline_stages(root: Path) -> list[str]:
    """Stage names of dvc.yaml (matrix/foreach expanded) with dependencies first.

    Args:
        root: the DVC project.

    Returns:
        Stage addresses such as `train@convnext_full`, in an order DVC could run them.
    """
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = reversed(list(nx.lexicographical_topological_sort(graph, key=str)))
        return [_address(s, root) for s in order if isinstance(s, PipelineStage)]


def _address(stage, root: Path) -> str:
    """`name`, or `path/dvc.yaml:name` outside the root dvc.yaml (relative to the project)."""
    dvcfile = os.path.relpath(stage.dvcfile.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def stage_line_logger(logger: logging.Logger | logging.LoggerAdapter
                      ) -> Callable[[str], None]:
    """A `dvc(..., on_line=...)` callback that logs a stage's lines at INFO, as they come.

    TensorFlow's native start-up notices (`I0000 ...` lines, oneDNN and CPU-feature banners)
    and DVC's git hints go to DEBUG: they say nothing about the stage's progress, and would
    otherwise be most of a flow's log.

    Args:
        logger: the task's run logger.

    Returns:
        The callback.
    """
    def log(line: str) -> None:
        noise = (NATIVE_LOG.match(line) is not None or line.strip().startswith(DVC_HINTS)
                 or any(marker in line for marker in TF_BANNERS))
        logger.log(logging.DEBUG if noise else logging.INFO, "%s", line)

    return log


def repro_outcome(output: str, stage: str) -> str:
    """What `dvc repro` did to `stage`: `ran`, `restored from the run cache` or `skipped
    (unchanged)`, read from its output."""
    if f"Running stage '{stage}'" in output:
        return "ran"
    if "is cached - skipping run" in output:
        return "restored from the run cache"
    return "skipped (unchanged)"


def collect_metrics(root: Path) -> dict:
    """Metrics files of the run (metrics/*.json and metrics/models/*.json), by file stem."""
    return {p.stem: json.loads(p.read_text())
            for p in sorted((root / "metrics").rglob("*.json"))}
