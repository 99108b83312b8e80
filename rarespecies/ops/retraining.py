"""The steps of a retraining run around the pipeline, for the `retrain` flow: bring in new data,
share a promoted model through the DVC remote, record the promotion in git."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from rarespecies.config import paths
from rarespecies.core.console import EXIT_TEMPFAIL, Failure
from rarespecies.core.dvc import dvc
from rarespecies.ops.promotion import REGISTRY

# Files a retraining run changes and a promotion commits (when they exist).
RECORDED = (str(paths.DATA_DVC), "dvc.lock", "metrics", "reports", "plots", "dvclive",
            str(REGISTRY))


def _run(args: list[str], root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=root, capture_output=True, text=True)


def acquire_data(command: str, root: Path) -> str:
    """Run `rarespecies acquire <command>` in `root`.

    Returns:
        The command's last line of output (its summary).

    Raises:
        Failure: transient when the command exited 75 (a rerun may succeed: network).
    """
    cli = str(Path(sys.executable).with_name("rarespecies"))
    proc = _run([cli, "acquire", *shlex.split(command)], root)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise Failure(f"acquire {command} failed: {lines[-1]}",
                      transient=proc.returncode == EXIT_TEMPFAIL)
    return (proc.stdout.strip().splitlines() or ["no output"])[-1]


def push_release(root: Path) -> str | None:
    """`dvc push` the data, the exported models and their model card, when there is a remote.

    Returns:
        The remote's name, or None without a remote.
    """
    remotes = dvc("remote", "list", cwd=root).stdout.split()
    if not remotes:
        return None
    dvc("push", str(paths.DATA_DVC), "export", "quantize", "model_card", cwd=root, check=True)
    return remotes[0]


def commit_promotion(root: Path, entry: dict) -> str | None:
    """Commit what the run changed plus the registry, and tag it `model-v<version>`.

    Returns:
        The tag, or None when `root` is not a git repository.
    """
    if _run(["git", "rev-parse", "--git-dir"], root).returncode != 0:
        return None
    present = [name for name in RECORDED if (root / name).exists()]
    _run(["git", "add", "--", *present], root)
    identity = [] if _run(["git", "config", "user.email"], root).stdout.strip() else [
        "-c", "user.name=rarespecies retrain", "-c", "user.email=retrain@localhost"]
    tag = f"model-v{entry['version']}"
    message = (f"retrain: promote {entry['model']} as {tag} (test macro F1 "
               f"{entry['macro_f1']:.4f})\n\n{entry['reason']}")
    for args in (["commit", "-q", "-m", message], ["tag", "-a", tag, "-m", message]):
        proc = _run(["git", *identity, *args], root)
        if proc.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {proc.stderr.strip()}")
    return tag
