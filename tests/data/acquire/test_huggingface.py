"""`stages.huggingface`: download the dataset through huggingface_hub, against a fake Hub.

Everything runs against `tests/fake_hub.py` on 127.0.0.1; a guard on huggingface_hub's HTTP
client fails the test if any request goes anywhere else.
"""

from __future__ import annotations

import csv
import socket
import time
from pathlib import Path

import huggingface_hub
import pytest
from fake_hub import FakeHub
from huggingface_hub import constants
from huggingface_hub.utils._http import default_client_factory

from rarespecies.data.acquire import huggingface
from rarespecies.data.acquire.huggingface import (
    DATASET_URL,
    REPO_ID,
    REVISION,
    AcquireError,
    download_dataset,
)

from conftest import run, taxonomy_rows, write_hf_folder

TOKEN = "hf_test_token"
NOT_DOWNLOADED = ["README.md", ".gitattributes", "metadata/README.md", "scripts/make_csv.py"]


@pytest.fixture(autouse=True)
def local_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No token, cache, offline flag or proxy from the machine; requests only to 127.0.0.1."""
    for name in ("HOME", "HF_HOME"):
        monkeypatch.setenv(name, str(tmp_path / "home"))
    for name in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    # Constants are read once, at import: patch them too. Without telemetry disabled, building
    # the user agent fetches {HF_ENDPOINT or huggingface.co}/api/agent-harnesses once a process.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    remote: list[str] = []

    def refuse_remote(request) -> None:
        if request.url.host != "127.0.0.1":
            remote.append(str(request.url))
            raise RuntimeError(f"test tried to reach {request.url}")

    def factory():
        client = default_client_factory()
        client.event_hooks["request"].append(refuse_remote)
        return client

    huggingface_hub.set_client_factory(factory)  # also drops a client built before the env
    yield
    huggingface_hub.set_client_factory(default_client_factory)
    assert not remote


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """An HF-layout repository: 3 families x 2 images, catalogue, licenses and extra files."""
    root = tmp_path_factory.mktemp("repo")
    rows = taxonomy_rows(3, 2)
    write_hf_folder(root, rows)
    with (root / "metadata/licenses.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rarespecies_id", "eol_content_id", "license", "md5", "source_url"])
        for row in rows:
            writer.writerow([row["rarespecies_id"], row["eol_content_id"], "cc-by-4.0",
                             "0" * 32, f"https://eol.org/media/{row['eol_content_id']}"])
    for name in NOT_DOWNLOADED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(f"{name}: not part of the download\n")
    return root, rows


@pytest.fixture
def hub(repo: tuple[Path, list[dict]]):
    with FakeHub(repo[0], REPO_ID, REVISION) as server:
        yield server


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leftovers(data_dir: Path) -> list[str]:
    """Anything beside data_dir (temporary folders, asides)."""
    return sorted(p.name for p in data_dir.parent.iterdir() if p.name != data_dir.name)


def test_download_lands_in_hf_layout(tmp_path: Path, hub: FakeHub, repo) -> None:
    root, rows = repo
    data_dir = tmp_path / "project/data"
    summary = download_dataset(data_dir, endpoint=hub.url, token=TOKEN)
    expected = {name: data for name, data in files(root).items() if name not in NOT_DOWNLOADED}
    assert files(data_dir) == expected  # exactly: no README, no .cache, nothing else
    assert not (data_dir / ".cache").exists() and leftovers(data_dir) == []
    assert summary == {"repo_id": REPO_ID, "revision": REVISION, "commit": REVISION,
                       "images": len(rows), "catalog_rows": len(rows),
                       "bytes": sum(map(len, expected.values())), "path": str(data_dir)}
    paths = [path for _, path, _ in hub.requests]
    assert paths[0].startswith(f"/api/datasets/{REPO_ID}/revision/{REVISION}")
    assert all(f"/{REVISION}" in path for path in paths)  # the pinned commit, every time
    assert not any(name in path for path in paths for name in NOT_DOWNLOADED)
    assert {auth for _, _, auth in hub.requests} == {f"Bearer {TOKEN}"}


def test_branch_is_resolved_to_its_commit(tmp_path: Path, repo) -> None:
    commit = "a" * 40
    with FakeHub(repo[0], REPO_ID, commit, refs={"v1.0": commit}) as server:
        summary = download_dataset(tmp_path / "data", revision="v1.0", endpoint=server.url,
                                   token=TOKEN, progress=False)
    assert (summary["revision"], summary["commit"]) == ("v1.0", commit)
    paths = [path for _, path, _ in server.requests]
    assert paths[0].startswith(f"/api/datasets/{REPO_ID}/revision/v1.0")
    assert all(f"/{commit}" in path for path in paths[1:])


def test_unreachable_endpoint_fails_fast_naming_fixes(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    start = time.perf_counter()
    with pytest.raises(AcquireError) as caught:
        download_dataset(tmp_path / "data", endpoint=endpoint, token=TOKEN, progress=False)
    assert time.perf_counter() - start < 5  # no retry loop
    assert caught.value.transient  # a scheduled run tries again later
    message = str(caught.value)
    assert "\n" not in message
    for part in (endpoint, "HF_ENDPOINT", "rarespecies acquire eol --catalog",
                 "rarespecies acquire sample"):
        assert part in message
    assert list(tmp_path.iterdir()) == []


def test_command_line_exits_75_when_the_hub_is_unreachable(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """75: try again later (the retrain flow retries `acquire` on it); 1 would mean "do not"."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{probe.getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    proc = run("rarespecies", "acquire", "huggingface", "--no-version", cwd=tmp_path,
               check=False)
    assert proc.returncode == 75, proc.stderr
    assert "cannot reach the Hugging Face Hub" in proc.stderr and "Traceback" not in proc.stderr


def test_offline_mode_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(AcquireError, match="HF_HUB_OFFLINE"):
        download_dataset(tmp_path / "data", endpoint="http://127.0.0.1:9", progress=False)


@pytest.mark.parametrize("failure", ["private-401", "forbidden-403", "gated-files"])
def test_access_refused_names_dataset_and_login(tmp_path: Path, hub: FakeHub,
                                                failure: str) -> None:
    if failure == "gated-files":
        hub.gated = True  # like the Hub: metadata readable, files 403 GatedRepo
    else:
        hub.deny = int(failure[-3:])
    with pytest.raises(AcquireError) as caught:
        download_dataset(tmp_path / "data", endpoint=hub.url, token=TOKEN, progress=False)
    message = str(caught.value)
    assert DATASET_URL in message and "HF_TOKEN" in message and "hf auth login" in message
    assert not caught.value.transient  # trying again cannot help
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("plain", [False, True], ids=["hub", "mirror-plain-404"])
def test_unknown_revision_is_named(tmp_path: Path, hub: FakeHub, plain: bool) -> None:
    hub.plain_errors = plain
    revision = "b" * 40
    with pytest.raises(AcquireError, match=f"revision '{revision}'.*not found"):
        download_dataset(tmp_path / "data", revision=revision, endpoint=hub.url, token=TOKEN,
                         progress=False)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_data_dir_needs_force(tmp_path: Path, hub: FakeHub, repo) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "old").mkdir(parents=True)
    (data_dir / "old/keep.txt").write_text("old data")
    with pytest.raises(AcquireError, match=r"not empty.*--force"):
        download_dataset(data_dir, endpoint=hub.url, token=TOKEN, progress=False)
    assert files(data_dir) == {"old/keep.txt": b"old data"} and hub.requests == []

    download_dataset(data_dir, endpoint=hub.url, token=TOKEN, force=True, progress=False)
    assert "old/keep.txt" not in files(data_dir)
    assert (data_dir / "metadata/rarespecies-catalog.csv").is_file()
    assert leftovers(data_dir) == []


def test_empty_data_dir_is_filled_without_force(tmp_path: Path, hub: FakeHub) -> None:
    (tmp_path / "data").mkdir()
    summary = download_dataset(tmp_path / "data", endpoint=hub.url, token=TOKEN, progress=False)
    assert summary["images"] == 6 and leftovers(tmp_path / "data") == []


def test_failure_mid_download_leaves_data_dir_untouched(tmp_path: Path, hub: FakeHub) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "keep.txt").write_text("old data")
    # The last image vanishes after the listing, so earlier files have been fetched.
    hub.missing = {[name for name in hub.files if name.startswith("dataset/")][-1]}
    with pytest.raises(AcquireError, match="could not be downloaded"):
        download_dataset(data_dir, endpoint=hub.url, token=TOKEN, force=True, progress=False)
    assert any(method == "GET" and "/resolve/" in path for method, path, _ in hub.requests)
    assert files(data_dir) == {"keep.txt": b"old data"} and leftovers(data_dir) == []


def test_interrupt_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             hub: FakeHub) -> None:
    def interrupted(*args, local_dir: Path, cache_dir: Path, **kwargs) -> str:
        # Staging is a sibling of data_dir and holds the Hub cache too.
        assert Path(local_dir).parent.parent == tmp_path
        assert Path(cache_dir).parent == Path(local_dir).parent
        (Path(local_dir) / "dataset/x").mkdir(parents=True)
        (Path(local_dir) / "dataset/x/partial.jpg").write_bytes(b"\xff\xd8")
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface, "snapshot_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        download_dataset(tmp_path / "data", endpoint=hub.url, token=TOKEN, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("drop", ["metadata/rarespecies-catalog.csv", "dataset"])
def test_unexpected_layout_is_refused(tmp_path: Path, repo, drop: str) -> None:
    served = tmp_path / "served"
    for name, data in files(repo[0]).items():
        if not name.startswith(drop):
            (served / name).parent.mkdir(parents=True, exist_ok=True)
            (served / name).write_bytes(data)
    with FakeHub(served, REPO_ID, REVISION) as server, pytest.raises(AcquireError) as caught:
        download_dataset(tmp_path / "data", endpoint=server.url, token=TOKEN, progress=False)
    assert "layout" in str(caught.value) and REVISION in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]
