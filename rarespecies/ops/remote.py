"""Workers in separate checkouts sharing one DVC remote: what the `remote-stages` flow drives.

A worker avoids recomputing a stage in two ways:
- its `dvc.lock` (from git) already describes the stage's outputs and another worker pushed
  them: `dvc repro --pull` pulls them ("pulled from the remote");
- another worker ran it with the same code, params and inputs but nothing was committed
  yet: the worker fetches DVC's run cache first and DVC restores the outputs ("restored from
  the remote"). Every stage qualifies: dvc.yaml keeps git-tracked (`cache: false`) outputs to
  metrics and plots, which the run cache stores, and trained models are saved byte for byte
  reproducibly (`rarespecies.modeling.keras_file`), so a retrained model matches the entry.
After each stage the worker pushes its outputs, its run-cache entry and the run cache's
copies of its metrics and plots, for the next worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from dvc_data.hashfile.hash_info import HashInfo
from dvc_data.hashfile.tree import Tree

from rarespecies.core.dvc import DvcError, NotAProject, dvc, project_root

CHECKOUT_ENV = "RARESPECIES_CHECKOUT"


class WorkerSetupError(RuntimeError):
    """The worker's checkout cannot share results: not a project, or no DVC remote."""


def worker_checkout(checkout: str | None) -> Path:
    """The worker's checkout: the argument, else $RARESPECIES_CHECKOUT, else the current folder.

    Raises:
        WorkerSetupError: it is not a checkout of the project, or has no DVC remote.
    """
    try:
        path = project_root(checkout or os.environ.get(CHECKOUT_ENV) or ".",
                            f"set {CHECKOUT_ENV} or pass --checkout")
    except NotAProject as error:
        raise WorkerSetupError(str(error)) from None
    if not dvc("remote", "list", cwd=path).stdout.strip():
        raise WorkerSetupError(f"{path} has no DVC remote: add one shared by all workers with "
                               "`dvc remote add -d shared <url>`")
    return path


def remote_outcome(output: str, stage: str, had_work: bool) -> str:
    """What `dvc repro --pull` did; `had_work`: `dvc status` listed the stage beforehand."""
    if "is cached - skipping run" in output:
        return "restored from the remote"  # through the run cache: outputs of another run
    if f"Running stage '{stage}'" in output:
        return "ran"
    # dvc.lock (from git) already described these outputs; they were missing and got pulled
    return "pulled from the remote" if had_work else "up to date"


def push_run_cache_objects(checkout: str) -> int:
    """Push DVC's copies of the `cache: false` outputs its run-cache entries list.

    `dvc push --run-cache` (DVC 3.67) sends the entries and the DVC-cached outputs, but not
    the copies the run cache keeps of git-tracked metrics and plots: another worker would find
    the entry, fail to pull those files and run the stage again.

    Returns:
        How many files were sent (0 when the remote had them all).

    Raises:
        DvcError: some could not be sent.
    """
    from dvc.repo import Repo

    with Repo(checkout) as repo:
        uncached = {out.def_path for stage in repo.index.stages for out in stage.outs
                    if not out.use_cache}
        files = set()
        for entry in Path(repo.cache.legacy.path, "runs").glob("*/*/*"):  # runs/xx/key/value
            for out in yaml.safe_load(entry.read_text()).get("outs") or []:
                if out["path"] in uncached:  # lockfile format; no `hash` key: DVC 2's md5
                    files |= _local_files(repo, HashInfo(
                        "md5" if out.get("hash") == "md5" else "md5-dos2unix", out["md5"]))
        result = repo.cloud.push(files)
    if result.failed:
        raise DvcError(f"could not push {len(result.failed)} run-cache files from {checkout} "
                       "to the DVC remote: check that it is reachable and writable")
    return len(result.transferred)


def _local_files(repo, file: HashInfo) -> set[HashInfo]:
    """A file's hash, or a directory's and those of its files (pushing a directory's hash alone
    sends only its listing); nothing when this checkout's cache lacks it (an entry fetched
    from another worker, whose files are in the remote already)."""
    cache = repo.cache.local if file.name == "md5" else repo.cache.legacy
    if not cache.exists(file.value):
        return set()
    return {file} | ({entry for _, _, entry in Tree.load(cache, file)} if file.isdir else set())
