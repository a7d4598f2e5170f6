"""Issue 14: search, fit badges, download with progress, resume, sha256, disk, path and gated checks, offline.

Real ``huggingface_hub`` code against the local fake hub in ``tests/fake_hub.py`` (real HTTP, real files:
the embedded Gemma GGUF). Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from conftest import INGLENOOK, REPO
from fake_hub import FakeFile, FakeHub, FakeRepo, card, gguf_repo, serve_hub

from backends.gguf_file import read_header
from webui.models import downloads as dl
from webui.models.catalog import Catalog
from webui.models.downloads import DownloadManager, destination, remove_model
from webui.models.facts import gguf_facts
from webui.models.hub import (
    GatedRepo,
    HubConfig,
    HubOffline,
    Memory,
    UnsafeRepoPath,
    parse_quant,
    provenance,
    repo_files,
    search,
    split_part,
)
from webui.models.memory import estimate_memory

GOOD_TOKEN = "hf_test_token_with_access_0123456789"
GEMMA_REPO = "acme/gemma-270m-GGUF"
GEMMA_FILE = "gemma-270m-GGUF-Q4_K_M.gguf"


def _blob(n: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


@pytest.fixture(scope="module")
def hub(gemma_path: Path):
    h = FakeHub(tokens={GOOD_TOKEN})
    h.add(gguf_repo(GEMMA_REPO, gemma_path, downloads=5000, likes=40))
    h.add(gguf_repo("acme/slow-GGUF", gemma_path, downloads=3))
    h.add(FakeRepo("acme/multi-GGUF", {
        "README.md": FakeFile(card("acme/multi-GGUF", "mit"), lfs=False),
        "multi-Q8_0.gguf": FakeFile(_blob(96 * 1024, 1)),
        "multi.IQ4_XS.gguf": FakeFile(_blob(48 * 1024, 2)),
        "multi-F16-00001-of-00002.gguf": FakeFile(_blob(64 * 1024, 3)),
        "multi-F16-00002-of-00002.gguf": FakeFile(_blob(64 * 1024, 4)),
        "mmproj-multi-f16.gguf": FakeFile(_blob(32 * 1024, 5)),
    }, tags=["gguf"], license="mit", downloads=900, likes=90))  # fmt: skip
    h.add(FakeRepo("acme/corrupt-GGUF", {"corrupt-Q8_0.gguf": FakeFile(_blob(512 * 1024, 6), corrupt_at=300_001)},
                   tags=["gguf"], downloads=2))  # fmt: skip
    escape = {"../../x.gguf": FakeFile(_blob(4096, 7)), "ok-Q4_0.gguf": FakeFile(_blob(4096, 8))}
    h.add(FakeRepo("acme/escape-GGUF", escape, tags=["gguf"], downloads=1))
    h.add(FakeRepo("acme/gated-GGUF", {"gated-Q4_K_M.gguf": FakeFile(_blob(64 * 1024, 9))}, tags=["gguf"], gated=True,
                   license="llama3", downloads=4))  # fmt: skip
    h.add(FakeRepo("acme/notes", {"README.md": FakeFile(b"# notes\n", lfs=False)}, tags=["text"], downloads=10**6))
    with serve_hub(h):
        yield h


@pytest.fixture
def env(hub: FakeHub, monkeypatch, tmp_path: Path) -> dict[str, Path]:
    """HF_ENDPOINT at the fake hub, no token, online; fresh models and user_data folders."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    hub.reset_counts()
    return {"models": tmp_path / "models", "user_data": tmp_path / "user_data"}


def _config(env) -> HubConfig:
    return HubConfig.load(env["user_data"])


def _cli_env(hub: FakeHub, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    return {**clean, "HF_ENDPOINT": hub.url, "PYTHONPATH": str(REPO), **extra}


def _cli(hub: FakeHub, *args: str, input: str | None = None, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*INGLENOOK, *args], capture_output=True, text=True, timeout=300, input=input, cwd=REPO,
                          env=_cli_env(hub, **extra))  # fmt: skip


# -- names -----------------------------------------------------------------------------------------------------------
def test_quantization_and_split_parts_are_read_from_gguf_file_names():
    assert parse_quant("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "Q4_K_M"
    assert parse_quant("qwen2.5-7b-instruct.IQ4_XS.gguf") == "IQ4_XS"
    assert parse_quant("phi-4-Q8_0.gguf") == "Q8_0"
    assert parse_quant("model-f16.gguf") == "F16"
    assert parse_quant("big-model-BF16-00001-of-00003.gguf") == "BF16"
    assert parse_quant("gemma-3-27b-it-UD-Q4_K_XL.gguf") == "UD-Q4_K_XL"
    assert parse_quant("no-quant-here.gguf") == ""
    assert split_part("big-model-Q4_K_M-00002-of-00003.gguf") == (2, 3)
    assert split_part("model-Q4_K_M.gguf") is None


def test_no_repo_file_name_reaches_outside_the_models_folder(tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    for evil in ("../../x.gguf", "/etc/passwd", "a/../../b.gguf", "..", "a\\..\\b.gguf", "C:/x.gguf", "a/\x00.gguf"):
        with pytest.raises((UnsafeRepoPath, ValueError)):
            destination(models, evil)
    (models / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafeRepoPath):
        destination(models, "link/x.gguf")  # a symlink inside the folder that leads out of it
    assert destination(models, "tiny/config.json") == models / "tiny" / "config.json"


# -- search and files ------------------------------------------------------------------------------------------------
def test_search_lists_only_loadable_repos_best_first_with_their_facts(env):
    results = search(_config(env), "GGUF")
    names = [r.repo for r in results]
    assert names[:2] == [GEMMA_REPO, "acme/multi-GGUF"]  # by downloads
    assert "acme/notes" not in [r.repo for r in search(_config(env), "")]  # not GGUF/safetensors/GPTQ
    gemma = results[0]
    assert (gemma.author, gemma.license, gemma.architecture, gemma.parameters) == ("acme", "gemma", "gemma3",
                                                                                   268098176)  # fmt: skip
    assert gemma.formats == ["gguf"] and gemma.downloads == 5000 and gemma.likes == 40 and gemma.last_modified
    assert [r.repo for r in search(_config(env), "GGUF", sort="likes")][:2] == ["acme/multi-GGUF", GEMMA_REPO]
    gated = next(r for r in results if r.repo == "acme/gated-GGUF")
    assert gated.gated and gated.license == "llama3"


def test_files_are_grouped_by_quantization_with_split_parts_and_mmproj_beside(env):
    files = repo_files(_config(env), "acme/multi-GGUF", 4096, Memory(ram=16 * 2**30))
    by_quant = {c.quant: c for c in files.gguf}
    assert set(by_quant) == {"Q8_0", "IQ4_XS", "F16"}
    f16 = by_quant["F16"]
    assert [f.path for f in f16.files] == ["multi-F16-00001-of-00002.gguf", "multi-F16-00002-of-00002.gguf"]
    assert f16.size == 2 * 64 * 1024
    assert [f.path for f in files.mmproj] == ["mmproj-multi-f16.gguf"]
    assert all(len(f.sha256 or "") == 64 for c in files.gguf for f in c.files)  # the LFS metadata
    assert files.license == "mit" and "license: mit" in files.card
    assert by_quant["Q8_0"].fit["verdict"] == "ram" and "KV cache unknown" in by_quant["Q8_0"].fit["label"]


def test_fit_badges_use_the_model_tabs_estimate_from_the_remote_header(env, gemma_path: Path, hub: FakeHub):
    plenty, little = Memory(ram=16 * 2**30), Memory(ram=200 * 2**20)
    files = repo_files(_config(env), GEMMA_REPO, 2048, plenty)
    [choice] = files.gguf
    local = estimate_memory(gguf_facts(read_header(gemma_path), gemma_path.stat().st_size), 2048)
    assert choice.fit["total"] == local.total and choice.fit["kv_cache"] == local.kv_cache > 0
    assert choice.fit["verdict"] == "ram" and choice.fit["label"].startswith("🟢 fits in RAM")
    assert hub.bytes_served(GEMMA_REPO, GEMMA_FILE) < gemma_path.stat().st_size / 10  # the header only
    assert repo_files(_config(env), GEMMA_REPO, 2048, little).gguf[0].fit["verdict"] == "won't fit"
    gpu = repo_files(_config(env), GEMMA_REPO, 2048, Memory(ram=16 * 2**30, vram=250 * 2**20)).gguf[0].fit
    assert gpu["verdict"] == "partial" and 0 < gpu["layers_on_gpu"] < 18 and "layers in VRAM" in gpu["label"]
    assert repo_files(_config(env), GEMMA_REPO, 2048, Memory(ram=None, vram=8 * 2**30)).gguf[0].fit["verdict"] == "vram"


# -- downloads -------------------------------------------------------------------------------------------------------
def test_a_download_reports_progress_checks_sha256_and_keeps_the_licence_and_card_beside_it(env, gemma_path, hub):
    manager = DownloadManager(env["models"], env["user_data"])
    job = manager.prepare(f"{GEMMA_REPO}:q4_k_m")
    seen: list[dict] = []
    manager.run(job, lambda j: seen.append(j.as_dict()))
    assert job.state == "done", job.error
    target = env["models"] / GEMMA_FILE
    assert target.read_bytes() == gemma_path.read_bytes()
    size = gemma_path.stat().st_size
    assert hub.bytes_served(GEMMA_REPO, GEMMA_FILE) == size  # once, whole
    running = [s["bytes"] for s in seen if s["state"] == "running"]
    assert len(running) > 10 and running == sorted(running) and running[-1] == size
    assert seen[-1]["percent"] == 100.0 and seen[-1]["speed"] > 0
    assert any(s["eta_s"] is not None for s in seen)
    source = provenance(target)
    assert source["repo"] == GEMMA_REPO and source["license"] == "gemma" and "license: gemma" in source["card"]
    assert (env["models"] / f"{GEMMA_FILE}.hub" / "LICENSE").read_text().startswith("Gemma Terms")
    assert not list((env["models"] / ".downloads").iterdir())
    hit = Catalog(env["models"]).find(GEMMA_FILE)
    assert hit is not None and hit[1].quantization == "Q4_K_M"  # the model tab lists it, nothing else new
    assert [v.name for v in Catalog(env["models"]).variants()] == [GEMMA_FILE]


def test_a_split_model_lands_whole_with_its_mmproj_in_its_sidecar(env):
    manager = DownloadManager(env["models"], env["user_data"])
    job = manager.run(manager.prepare("acme/multi-GGUF:F16"))
    assert job.state == "done", job.error
    assert sorted(p.name for p in env["models"].glob("*.gguf")) == ["multi-F16-00001-of-00002.gguf",
                                                                    "multi-F16-00002-of-00002.gguf"]  # fmt: skip
    assert (env["models"] / "multi-F16-00001-of-00002.gguf.hub" / "mmproj-multi-f16.gguf").stat().st_size == 32 * 1024
    removed = remove_model(env["models"], "multi-F16-00001-of-00002.gguf")
    assert len(removed) == 3 and not list(env["models"].glob("multi*"))


def test_a_killed_download_resumes_and_fetches_only_the_rest(env, hub, gemma_path):
    size = gemma_path.stat().st_size
    hub.repos["acme/slow-GGUF"].delay_per_chunk = 0.02
    proc = subprocess.Popen([*INGLENOOK, "pull", "acme/slow-GGUF:Q4_K_M", "--models-dir", str(env["models"]),
                             "--user-data", str(env["user_data"])], cwd=REPO, env=_cli_env(hub),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    staging = env["models"] / ".downloads"
    deadline = time.monotonic() + 120
    while sum(p.stat().st_size for p in staging.glob("*.part")) < 20 * 2**20 if staging.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, "the download did not start"
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    [part] = staging.glob("*.part")
    had = part.stat().st_size
    assert 0 < had < size and not (env["models"] / "slow-GGUF-Q4_K_M.gguf").exists()
    hub.repos["acme/slow-GGUF"].delay_per_chunk = 0
    before = -1
    while hub.bytes_served("acme/slow-GGUF", "slow-GGUF-Q4_K_M.gguf") != before:  # the dead stream's last chunk
        before = hub.bytes_served("acme/slow-GGUF", "slow-GGUF-Q4_K_M.gguf")
        time.sleep(0.5)
    hub.reset_counts()
    result = _cli(hub, "pull", "acme/slow-GGUF:Q4_K_M", "--json", "--models-dir", str(env["models"]),
                  "--user-data", str(env["user_data"]))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert hub.bytes_served("acme/slow-GGUF", "slow-GGUF-Q4_K_M.gguf") == size - had  # only the rest
    assert json.loads(result.stdout)["fetched"] == size - had
    assert (env["models"] / "slow-GGUF-Q4_K_M.gguf").read_bytes() == gemma_path.read_bytes()


def test_a_network_drop_midway_resumes_without_fetching_anything_twice(env, hub, gemma_path):
    hub.repos[GEMMA_REPO].drop_once_at = 100 * 2**20 + 12345
    try:
        manager = DownloadManager(env["models"], env["user_data"])
        job = manager.run(manager.prepare(GEMMA_REPO))
        dropped = hub.repos[GEMMA_REPO].drop_once_at is None  # the server cut the connection once
    finally:
        hub.repos[GEMMA_REPO].drop_once_at = None
    assert dropped and job.state == "done", job.error
    assert hub.bytes_served(GEMMA_REPO, GEMMA_FILE) == gemma_path.stat().st_size  # the rest, not all again
    assert (env["models"] / GEMMA_FILE).read_bytes() == gemma_path.read_bytes()


def test_a_corrupted_byte_is_refused_and_the_file_deleted(env):
    manager = DownloadManager(env["models"], env["user_data"])
    job = manager.run(manager.prepare("acme/corrupt-GGUF"))
    assert job.state == "failed" and "sha256" in job.error and "deleted" in job.error
    assert not (env["models"] / "corrupt-Q8_0.gguf").exists()
    assert not list((env["models"] / ".downloads").glob("*.part"))


def test_a_full_disk_is_refused_before_anything_is_fetched(env, monkeypatch, hub):
    monkeypatch.setattr(dl, "free_bytes", lambda folder: 100 * 2**20)
    with pytest.raises(dl.DiskFull, match=r"needs 241\.4 MB more .* has 100\.0 MB free \(short by"):
        DownloadManager(env["models"], env["user_data"]).prepare(GEMMA_REPO)
    assert hub.bytes_served(GEMMA_REPO, GEMMA_FILE) == 0


def test_a_file_name_that_climbs_out_is_refused_and_nothing_lands_outside(env, tmp_path):
    files = repo_files(_config(env), "acme/escape-GGUF", 4096, Memory(ram=None))
    assert files.unsafe == ["../../x.gguf"] and [c.quant for c in files.gguf] == ["Q4_0"]
    with pytest.raises(UnsafeRepoPath):
        DownloadManager(env["models"], env["user_data"]).prepare("acme/escape-GGUF:../../x.gguf")
    job = DownloadManager(env["models"], env["user_data"]).prepare("acme/escape-GGUF")
    assert [i.dest for i in job.plan.items] == ["ok-Q4_0.gguf"]
    climbed = (env["models"] / "../../x.gguf").resolve()  # where the name points, outside the models folder
    assert not climbed.exists() and not list(env["models"].rglob("x.gguf"))


def test_a_gated_repo_needs_a_token_which_goes_only_to_the_hub_and_is_never_printed(env, hub):
    with pytest.raises(GatedRepo, match=f"accept its terms at {hub.url}/acme/gated-GGUF"):
        DownloadManager(env["models"], env["user_data"]).prepare("acme/gated-GGUF")
    args = ("pull", "acme/gated-GGUF", "--models-dir", str(env["models"]), "--user-data", str(env["user_data"]))
    wrong = _cli(hub, *args, HF_TOKEN="hf_wrong_token")
    assert wrong.returncode == 1 and "gated" in wrong.stderr and "hf_wrong_token" not in wrong.stderr + wrong.stdout
    login = _cli(hub, "hub", "login", "--user-data", str(env["user_data"]), input=GOOD_TOKEN + "\n")
    assert login.returncode == 0 and GOOD_TOKEN not in login.stdout + login.stderr
    token_file = env["user_data"] / "hub" / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    ok = _cli(hub, *args)
    assert ok.returncode == 0, ok.stderr
    assert GOOD_TOKEN not in ok.stdout + ok.stderr
    assert f"Bearer {GOOD_TOKEN}" in hub.auth_seen
    assert (env["models"] / "gated-Q4_K_M.gguf").stat().st_size == 64 * 1024
    assert _cli(hub, "hub", "logout", "--user-data", str(env["user_data"])).returncode == 0
    assert not token_file.exists()


def test_offline_is_one_line_and_local_models_still_work(env, hub, monkeypatch, gemma_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOffline, match="HF_HUB_OFFLINE"):
        search(_config(env), "gemma")
    result = _cli(hub, "models", "search", "gemma", HF_HUB_OFFLINE="1")
    assert result.returncode == 1 and result.stderr.strip().count("\n") == 0 and "offline" in result.stderr
    unreachable = "http://127.0.0.1:9"  # the discard port: nothing listens
    result = _cli(hub, "models", "search", "gemma", HF_ENDPOINT=unreachable)
    assert result.returncode == 1 and result.stderr.startswith("error: offline: cannot reach http://127.0.0.1:9")
    env["models"].mkdir()
    os.link(gemma_path, env["models"] / "local.gguf")
    listing = _cli(hub, "models", "list", "--json", "--models-dir", str(env["models"]), HF_HUB_OFFLINE="1")
    assert listing.returncode == 0 and json.loads(listing.stdout)["models"][0]["name"] == "local"


def test_cli_search_download_and_rm(env, hub):
    result = _cli(hub, "models", "search", "multi", "--json", "--files")
    assert result.returncode == 0, result.stderr
    [found] = json.loads(result.stdout)["results"]
    assert found["repo"] == "acme/multi-GGUF" and {c["quant"] for c in found["files"]["gguf"]} == {"Q8_0", "IQ4_XS",
                                                                                                 "F16"}  # fmt: skip
    text = _cli(hub, "models", "search", "multi", "--files")
    assert "acme/multi-GGUF:IQ4_XS" in text.stdout and "mit" in text.stdout
    where = ("--models-dir", str(env["models"]), "--user-data", str(env["user_data"]))
    got = _cli(hub, "models", "download", "acme/multi-GGUF:multi-Q8_0.gguf", "--json", *where)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["state"] == "done" and (env["models"] / "multi-Q8_0.gguf").is_file()
    assert "%" in got.stderr  # the progress line
    missing = _cli(hub, "models", "download", "acme/multi-GGUF:Q2_K", *where)
    assert missing.returncode == 1 and "Q8_0" in missing.stderr  # the quantizations there are
    keep = _cli(hub, "models", "rm", "multi-Q8_0.gguf", "--models-dir", str(env["models"]), input="n\n")
    assert keep.returncode == 1 and (env["models"] / "multi-Q8_0.gguf").is_file()
    gone = _cli(hub, "models", "rm", "multi-Q8_0.gguf", "--yes", "--models-dir", str(env["models"]))
    assert gone.returncode == 0 and not list(env["models"].glob("multi-Q8_0*"))


# -- API -------------------------------------------------------------------------------------------------------------
@pytest.fixture
def api(env):
    """The real API app (keys on) over an empty models folder, through Starlette's test client."""
    from fastapi.testclient import TestClient

    from webui.api.auth import protect
    from webui.app import App
    from webui.server import build_api_server
    from webui.settings import Settings

    app = App.create(Settings(models_dir=env["models"], user_data=env["user_data"], api_key="user-key",
                              admin_key="admin-key"))  # fmt: skip
    server = build_api_server(app)
    protect(server, app.settings)
    try:
        with TestClient(server, base_url="http://127.0.0.1") as client:
            yield app, client
    finally:
        app.close()


ADMIN = {"Authorization": "Bearer admin-key"}
USER = {"Authorization": "Bearer user-key"}


def _events(response) -> list[dict]:
    found = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            found.append(json.loads(line[len("data: ") :]))
    return found


def test_api_downloads_with_sse_progress_and_the_model_appears_without_a_restart(api, gemma_path):
    app, client = api
    assert client.get("/v1/models", headers=USER).json()["data"] == []
    refused = client.post("/v1/internal/models/download", json={"model": GEMMA_REPO}, headers=USER)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    with client.stream("POST", "/v1/internal/models/download", json={"model": f"{GEMMA_REPO}:Q4_K_M"},
                       headers=ADMIN) as response:  # fmt: skip
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)
    assert events[-1]["state"] == "done" and events[-1]["bytes"] == gemma_path.stat().st_size
    assert events[-1]["license"] == "gemma"
    ids = [m["id"] for m in client.get("/v1/models", headers=USER).json()["data"]]
    assert ids == ["gemma-270m-GGUF-Q4_K_M"]
    listed = client.get("/v1/internal/models/downloads", headers=USER).json()["data"]
    assert [(d["target"], d["state"]) for d in listed] == [(GEMMA_FILE, "done")]


def test_api_errors_are_clear_and_a_download_can_be_cancelled(api, hub):
    app, client = api
    gated = client.post("/v1/internal/models/download", json={"model": "acme/gated-GGUF"}, headers=ADMIN)
    assert gated.status_code == 403 and f"{hub.url}/acme/gated-GGUF" in gated.json()["error"]["message"]
    escape = client.post("/v1/internal/models/download", json={"model": "acme/escape-GGUF:../../x.gguf"},
                         headers=ADMIN)  # fmt: skip
    assert escape.status_code == 400 and escape.json()["error"]["code"] == "unsafe_path"
    bad = client.post("/v1/internal/models/download", json={"model": "not a repo"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_repo"
    missing = client.post("/v1/internal/models/download", json={"model": "acme/nothing"}, headers=ADMIN)
    assert missing.status_code == 404 and "acme/nothing was not found" in missing.json()["error"]["message"]
    hub.repos["acme/slow-GGUF"].delay_per_chunk = 0.05
    try:
        started = client.post("/v1/internal/models/download", json={"model": "acme/slow-GGUF", "stream": False},
                              headers=ADMIN)  # fmt: skip
        assert started.status_code == 202
        job_id = started.json()["id"]
        deadline = time.monotonic() + 60
        while client.get(f"/v1/internal/models/downloads/{job_id}", headers=USER).json()["bytes"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.delete(f"/v1/internal/models/downloads/{job_id}", headers=USER).status_code == 403
        assert client.delete(f"/v1/internal/models/downloads/{job_id}", headers=ADMIN).status_code == 200
        while (state := client.get(f"/v1/internal/models/downloads/{job_id}", headers=USER).json()["state"]) in (
            "running", "queued"):  # fmt: skip
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert state == "cancelled"
        assert not list((app.settings.models_dir / ".downloads").glob("*.part"))
        assert not (app.settings.models_dir / "slow-GGUF-Q4_K_M.gguf").exists()
    finally:
        hub.repos["acme/slow-GGUF"].delay_per_chunk = 0


# -- safetensors folders ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_safetensors_repo_downloads_as_a_folder_without_pickle_weights(env, hub, tiny_llama):
    from fake_hub import folder_repo

    repo = folder_repo("acme/tiny-llama", tiny_llama)
    repo.files["pytorch_model.bin"] = FakeFile(b"\x80\x04pickle" * 100)
    hub.add(repo)
    files = repo_files(_config(env), "acme/tiny-llama", 2048, Memory(ram=16 * 2**30))
    assert files.folder["kind"] == "hf" and files.folder["fit"]["kv_cache"] > 0 and not files.gguf
    manager = DownloadManager(env["models"], env["user_data"])
    job = manager.run(manager.prepare("acme/tiny-llama"))
    assert job.state == "done", job.error
    assert any("pytorch_model.bin" in s for s in job.plan.skipped)
    folder = env["models"] / "tiny-llama"
    assert not (folder / "pytorch_model.bin").exists()
    assert (folder / "model.safetensors").read_bytes() == (tiny_llama / "model.safetensors").read_bytes()
    [variant] = Catalog(env["models"]).variants()
    assert variant.kind == "hf" and variant.error == "" and provenance(folder)["repo"] == "acme/tiny-llama"
    with_pickle = manager.prepare("acme/tiny-llama", allow_pickle=True)
    assert "tiny-llama/pytorch_model.bin" in [i.dest for i in with_pickle.plan.items]


def _safetensors(tensors: dict[str, tuple[str, list[int]]]) -> bytes:
    """A valid safetensors file with zero-filled tensors (dtype, shape)."""
    size = {"I32": 4, "F16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        n = size[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + b"\0" * offset


def test_a_gptq_repo_shows_its_quantization_config_and_lands_as_a_gptq_folder(env, hub):
    quant = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 128,
              "quantization_config": quant}  # fmt: skip
    weights = _safetensors({"model.layers.0.mlp.up_proj.qweight": ("I32", [16, 256]),
                            "model.layers.0.mlp.up_proj.scales": ("F16", [4, 256])})  # fmt: skip
    hub.add(FakeRepo("acme/tiny-GPTQ", {"config.json": FakeFile(json.dumps(config).encode(), lfs=False),
                                        "model.safetensors": FakeFile(weights),
                                        "README.md": FakeFile(card("acme/tiny-GPTQ", "mit"), lfs=False)},
                     tags=["safetensors", "gptq"], config=config, license="mit"))  # fmt: skip
    files = repo_files(_config(env), "acme/tiny-GPTQ", 1024, Memory(ram=16 * 2**30))
    assert files.folder["kind"] == "gptq" and files.folder["quantization_config"] == quant
    assert files.folder["size"] == len(weights) and files.folder["fit"]["kv_cache"] == 2 * 2 * (32 + 32) * 2 * 1024
    manager = DownloadManager(env["models"], env["user_data"])
    job = manager.run(manager.prepare("acme/tiny-GPTQ"))
    assert job.state == "done", job.error
    [variant] = Catalog(env["models"]).variants()
    assert (variant.name, variant.kind, variant.quantization) == ("tiny-GPTQ", "gptq", "GPTQ 4-bit g32")
    assert remove_model(env["models"], "tiny-GPTQ") == [env["models"] / "tiny-GPTQ"]
    assert not (env["models"] / "tiny-GPTQ").exists()


def test_a_different_file_of_the_same_name_is_never_overwritten(env):
    env["models"].mkdir(parents=True)
    mine = env["models"] / "multi-Q8_0.gguf"
    mine.write_bytes(b"my own model")
    manager = DownloadManager(env["models"], env["user_data"])
    with pytest.raises(dl.DownloadError, match="already exists .* delete or rename it first"):
        manager.prepare("acme/multi-GGUF:Q8_0")
    mine.write_bytes(b"\0" * (96 * 1024))  # the same size, other bytes: caught by the sha256 before any fetch
    job = manager.run(manager.prepare("acme/multi-GGUF:Q8_0"))
    assert job.state == "failed" and "nothing was overwritten" in job.error
    assert mine.read_bytes() == b"\0" * (96 * 1024)
