"""The steps of a retraining run around the pipeline, for the `retrain` flow: bring in new data,
judge the candidate, share a promoted model through the DVC remote, record the promotion in
git; and the deployment name `serve` may use."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from rarespecies.config import paths
from rarespecies.config.params import read_params
from rarespecies.core.console import EXIT_TEMPFAIL, Failure
from rarespecies.core.dvc import dvc
from rarespecies.ops.latency import compare_models
from rarespecies.ops.promotion import (
    DEPLOY_DIR,
    FILES,
    REGISTRY,
    Decision,
    candidate,
    decide,
    read_registry,
    rescore_promoted,
)

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


def is_git_repository(root: Path) -> bool:
    """Whether `root` is inside a git work tree."""
    return _run(["git", "rev-parse", "--git-dir"], root).returncode == 0


def recorded(path: str) -> bool:
    """Whether `path` (relative to the project) is one a retraining run itself writes."""
    return any(path == name or path.startswith(f"{name}/") for name in RECORDED)


def require_clean_tree(root: Path) -> None:
    """Refuse to start a committing run on a tree with uncommitted changes to tracked files.

    A promotion commits only what the run writes (RECORDED); an edited params.yaml or code file
    left out of that commit would make tag `model-vN` describe another model than the registry.

    Raises:
        Failure: naming the files, when tracked files other than RECORDED differ from HEAD.
    """
    if not is_git_repository(root):
        return
    proc = _run(["git", "status", "--porcelain", "--untracked-files=no", "-z", "--", "."], root)
    prefix = _run(["git", "rev-parse", "--show-prefix"], root).stdout.strip()
    # -z: "XY path\0", a rename adds "original\0"; paths are relative to the repository top.
    entries = proc.stdout.split("\0")
    dirty, skip = [], False
    for item in entries:
        if skip or not item:
            skip = False
            continue
        status, path = item[:2], item[3:]
        skip = "R" in status or "C" in status
        path = path.removeprefix(prefix)
        if not recorded(path):
            dirty.append(path)
    if dirty:
        raise Failure(f"uncommitted changes to {', '.join(sorted(dirty))}: a promotion commit "
                      "would leave them out, so tag model-vN would not hold the params and code "
                      "that made the model; commit or revert them, or run with commit off "
                      "(--no-commit)")


def commit_promotion(root: Path, entry: dict) -> str | None:
    """Commit what the run changed plus the registry, and tag it as the entry says.

    Returns:
        The tag, or None when `root` is not a git repository or the entry has no tag.
    """
    if not is_git_repository(root) or not entry.get("git_tag"):
        return None
    present = [name for name in RECORDED if (root / name).exists()]
    _run(["git", "add", "--", *present], root)
    identity = [] if _run(["git", "config", "user.email"], root).stdout.strip() else [
        "-c", "user.name=rarespecies retrain", "-c", "user.email=retrain@localhost"]
    tag = entry["git_tag"]
    message = (f"retrain: promote {entry['model']} as {tag} (test macro F1 "
               f"{entry['macro_f1']:.4f})\n\n{entry['reason']}")
    for args in (["commit", "-q", "-m", message], ["tag", "-a", tag, "-m", message]):
        proc = _run(["git", *identity, *args], root)
        if proc.returncode != 0:
            raise RuntimeError(f"git {args[0]} failed: {proc.stderr.strip()}")
    return tag


def judge_candidate(root: Path) -> tuple[Decision, dict, dict | None]:
    """Decide on the pipeline's candidate: the gates of `promotion.decide`, with the latency
    gate timed now against the promoted file (`latency.compare_models`) when there is one.

    Args:
        root: the DVC project after the pipeline ran.

    Returns:
        (the decision, the candidate, the promoted entry before the decision or None).
    """
    new = candidate(root)
    params = read_params(root / "params.yaml")
    current = read_registry(root)["current"]
    current_f1, latency = None, None
    deployed = root / DEPLOY_DIR / "model.onnx"
    if current and current["onnx_md5"] != new["onnx_md5"]:
        current_f1 = rescore_promoted(root)
        if deployed.is_file():
            def latency():  # only called when every cheaper gate passed
                return compare_models(root / FILES["model.onnx"], deployed,
                                      f"promoted v{current['version']}", params.promote,
                                      params.benchmark.threads)
    return decide(new, current, params.promote, current_f1, latency), new, current


def declared_deployments(prefect_yaml: Path) -> set[str]:
    """The deployment names a prefect.yaml declares (none when the file is missing)."""
    if not prefect_yaml.is_file():
        return set()
    config = yaml.safe_load(prefect_yaml.read_text(encoding="utf-8")) or {}
    return {d["name"] for d in config.get("deployments") or [] if "name" in d}


def check_serve_name(name: str, prefect_yaml: Path, default: str) -> None:
    """Refuse to `serve` under a name prefect.yaml declares.

    `serve` and `prefect deploy` write the same server record for the same flow and name:
    serving `weekly` would replace the work-pool deployment (pool, pull step, schedule) and
    leave it paused when stopped.

    Raises:
        Failure: `name` is one of prefect.yaml's deployments.
    """
    if name in declared_deployments(prefect_yaml):
        raise Failure(f"deployment name {name!r} is declared in {prefect_yaml.name} (run by "
                      "`prefect deploy --all` and a worker); serving it would replace that "
                      f"deployment: choose another --name (default {default!r})")
