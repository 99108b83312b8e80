"""`rarespecies sample` / `ensure-data`: the committed data.dvc pins the regenerated sample."""

import json
import shutil

import pytest
import yaml

from conftest import ROOT, run

pytestmark = pytest.mark.slow


@pytest.fixture
def dvc_project(tmp_path):
    """An empty DVC project holding a copy of the committed data.dvc."""
    run("git", "init", "-q", cwd=tmp_path)
    run("dvc", "init", "-q", cwd=tmp_path)
    shutil.copy(ROOT / "data.dvc", tmp_path / "data.dvc")
    return tmp_path


def test_regenerated_sample_matches_committed_data_dvc(dvc_project):
    run("rarespecies", "ensure-data", cwd=dvc_project)
    status = run("dvc", "status", "--json", "data.dvc", cwd=dvc_project)
    assert status.stdout.strip() == "{}", status.stdout
    # The check can fail: one changed byte makes DVC report the data as modified.
    image = next((dvc_project / "data").rglob("*.jpg"))
    image.write_bytes(image.read_bytes()[:-1] + b"\0")
    assert run("dvc", "status", "--json", "data.dvc", cwd=dvc_project).stdout.strip() != "{}"
    # ensure-data notices and regenerates the pinned sample.
    run("rarespecies", "ensure-data", cwd=dvc_project)
    assert run("dvc", "status", "--json", "data.dvc", cwd=dvc_project).stdout.strip() == "{}"


def test_data_dvc_pinning_other_data_is_a_clear_error(dvc_project):
    pinned = yaml.safe_load((dvc_project / "data.dvc").read_text())
    pinned["outs"][0]["md5"] = "0" * 32 + ".dir"
    (dvc_project / "data.dvc").write_text(yaml.safe_dump(pinned))
    proc = run("rarespecies", "ensure-data", cwd=dvc_project, check=False)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]  # after the generator's progress bar
    assert "Traceback" not in proc.stderr
    assert last.startswith("rarespecies ensure-data: error: ") and "does not match data.dvc" in last
    assert "dvc pull" in last


def test_sample_command_reports_what_it_wrote(tmp_path):
    proc = run("rarespecies", "sample", "--tiny", "--out", str(tmp_path / "d"), cwd=tmp_path)
    assert "synthetic images of 4 families" in proc.stdout
    assert (tmp_path / "d/metadata.csv").is_file()
    bad = run("rarespecies", "sample", "--tiny", "--seed", "-1", "--out", str(tmp_path / "e"),
              cwd=tmp_path, check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


def test_data_comes_from_the_remote_when_it_can(dvc_project, tmp_path_factory):
    run("rarespecies", "ensure-data", cwd=dvc_project)
    remote = tmp_path_factory.mktemp("remote")
    run("dvc", "remote", "add", "-d", "store", str(remote), cwd=dvc_project)
    run("dvc", "push", "-q", "data.dvc", cwd=dvc_project)

    def forget_data():
        shutil.rmtree(dvc_project / "data")
        shutil.rmtree(dvc_project / ".dvc/cache")

    forget_data()
    proc = run("rarespecies", "ensure-data", cwd=dvc_project)
    assert "pulled from the DVC remote" in proc.stdout and "wrote" not in proc.stdout
    forget_data()
    run("dvc", "remote", "modify", "store", "url", str(remote / "gone"), cwd=dvc_project)
    proc = run("rarespecies", "ensure-data", cwd=dvc_project)
    assert "could not provide" in proc.stdout and "synthetic images" in proc.stdout
    assert run("dvc", "status", "--json", "data.dvc", cwd=dvc_project).stdout.strip() == "{}"


def test_acquire_sample_fills_data_and_versions_it(tmp_path):
    run("git", "init", "-q", cwd=tmp_path)
    run("dvc", "init", "-q", cwd=tmp_path)
    proc = run("rarespecies", "acquire", "sample", "--tiny", cwd=tmp_path)
    assert "versioned data/ with DVC" in proc.stdout
    pinned = yaml.safe_load((tmp_path / "data.dvc").read_text())
    assert pinned["outs"][0]["path"] == "data" and pinned["outs"][0]["nfiles"] > 20
    assert run("dvc", "status", "--json", "data.dvc", cwd=tmp_path).stdout.strip() == "{}"


def test_acquire_outside_a_dvc_project_names_the_fix(tmp_path):
    proc = run("rarespecies", "acquire", "sample", "--tiny", cwd=tmp_path, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last.startswith("rarespecies acquire sample: error: `dvc add data` failed")
    assert "--no-version" in last
    assert (tmp_path / "data/metadata.csv").is_file()  # the data is there, only unversioned
    run("rarespecies", "acquire", "sample", "--tiny", "--no-version", cwd=tmp_path)


def _eol_catalog(folder, server, faults: list[str]) -> None:
    """`folder/licenses.csv`: the smallest real EOL images, one per fault of the local server."""
    import csv
    import hashlib

    from conftest import EOL_SAMPLE, require_shared

    with require_shared(EOL_SAMPLE / "metadata.csv").open(newline="") as handle:
        rows = sorted(csv.DictReader(handle),
                      key=lambda r: (EOL_SAMPLE / r["file_path"]).stat().st_size)[:len(faults)]
    catalog = [{"eol_content_id": r["eol_content_id"], "eol_page_id": r["eol_page_id"],
                "md5": hashlib.md5((EOL_SAMPLE / r["file_path"]).read_bytes()).hexdigest(),
                "eol_full_size_copy_url": server.url(fault, r["file_path"]),
                "phylum": r["phylum"], "family": r["family"]}
               for r, fault in zip(rows, faults, strict=True)]
    with (folder / "licenses.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(catalog[0]))
        writer.writeheader()
        writer.writerows(catalog)


def test_acquire_eol_downloads_versions_and_feeds_ingest(tmp_path, monkeypatch):
    from eol_server import EolServer

    from rarespecies.data.ingest import ingest

    from conftest import EOL_SAMPLE

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    run("git", "init", "-q", cwd=tmp_path)
    run("dvc", "init", "-q", cwd=tmp_path)
    with EolServer(EOL_SAMPLE) as server:
        _eol_catalog(tmp_path, server, ["ok", "fail-once", "missing"])
        proc = run("rarespecies", "acquire", "eol", "--catalog", "licenses.csv", "--retries",
                   "1", "--timeout", "5", cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr  # a 404: the same command fails the same way
    assert "3 rows: 2 downloaded, 0 already present, 1 failed, 0 refused" in proc.stdout
    assert "1 cannot succeed as listed" in proc.stderr
    assert "versioned data/ with DVC" in proc.stdout and (tmp_path / "data.dvc").is_file()
    report = json.loads((tmp_path / "reports/acquire_eol.json").read_text())
    assert [p["reason"] for p in report["problems"]] == ["HTTP 404"]
    result = ingest(tmp_path / "data", tmp_path / "out/images", tmp_path / "out/manifest.csv",
                    tmp_path / "out/ingest.json", max_side=64, max_pixels=10**9,
                    jpeg_quality=90, workers=1, progress=False)
    assert result["ingested"] == 2 and result["quarantined"] == 0


def test_acquire_eol_exits_75_when_a_rerun_may_fetch_what_failed(tmp_path, monkeypatch):
    from eol_server import EolServer

    from conftest import EOL_SAMPLE

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with EolServer(EOL_SAMPLE) as server:
        _eol_catalog(tmp_path, server, ["fail"])  # HTTP 500 every time
        proc = run("rarespecies", "acquire", "eol", "--catalog", "licenses.csv", "--retries",
                   "0", "--no-version", cwd=tmp_path, check=False)
    assert proc.returncode == 75, proc.stderr
    assert "1 images failed" in proc.stderr and "run the same command again" in proc.stderr
