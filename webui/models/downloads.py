"""Downloads from the hub into the models folder: progress, cancel, resume, sha256 check, disk check.

A download is planned first (:func:`plan`: which repo files, where each lands, how many bytes), then run
(:meth:`DownloadManager.run`). Bytes go to ``models/.downloads/<sha256>.part`` through
``huggingface_hub``'s own ``http_get`` (it retries a dropped connection from where it stopped); a part
left by a killed process is resumed with an HTTP Range request, so nothing is fetched twice. Each file's
sha256 is checked against the hub's LFS metadata *before* it is moved into place: a file that does not
match is deleted and the download fails saying so. Every destination is checked to stay inside the
models folder whatever the repo's file names say, and pickle weights are skipped unless ``allow_pickle``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from webui.files import write_atomic
from webui.models.hub import (
    PICKLE_SUFFIXES,
    SOURCE_FILE,
    SPLIT,
    HubConfig,
    HubError,
    Memory,
    RemoteFile,
    RepoFiles,
    UnsafeRepoPath,
    check_repo_id,
    fetch_small,
    hub_errors,
    repo_files,
    safe_repo_path,
    sidecar,
    split_part,
)
from webui.paths import UnsafeName, safe_name

STAGING = ".downloads"
DISK_MARGIN = 64 * 2**20  # keep this much free beyond the download itself
PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "IQ4_XS", "Q8_0")
FOLDER_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".md", ".tiktoken")
LICENCE_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "LICENCE.md")
RECENT_JOBS = 50


class DownloadError(HubError):
    """A download that cannot start or did not finish, with the reason."""


class DiskFull(DownloadError):
    """Not enough free space for the download."""


class ChecksumMismatch(DownloadError):
    """A file whose sha256 is not the one the hub's LFS metadata states."""


class Cancelled(DownloadError):
    """The user cancelled the download."""


def free_bytes(folder: Path) -> int:
    """Free space on the file system holding ``folder`` (tests patch this to fake a full disk)."""
    return shutil.disk_usage(folder).free


# -- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One repo file and the path (relative to the models folder) it will have."""

    file: RemoteFile
    dest: str


@dataclass
class Plan:
    repo: str
    commit: str
    target: str  # the name in the models folder that appears in the Model tab: a .gguf file or a folder
    kind: str  # "gguf" or "folder"
    items: list[Item]
    license: str = ""
    card: str = ""
    skipped: list[str] = field(default_factory=list)  # pickle weights left out, with why

    @property
    def total(self) -> int:
        return sum(i.file.size for i in self.items)


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``REPO[:QUANT|:FILE]`` → (repo, what after the colon or None)."""
    repo, _, pick = spec.partition(":")
    return check_repo_id(repo.strip()), (pick.strip() or None)


def plan(files: RepoFiles, pick: str | None = None, allow_pickle: bool = False) -> Plan:
    """Which files to fetch for ``pick`` (a quantization such as ``Q4_K_M``, a file path, or None for the
    default: Q4_K_M or the nearest GGUF, else the whole safetensors/GPTQ folder), and where each goes."""
    if pick is not None:
        unsafe = next((f for f in files.files if f.path == pick and f.unsafe), None)
        if unsafe is not None or (pick and ".." in PurePosixPath(pick).parts):
            raise UnsafeRepoPath(f"refusing {pick!r}: the name would leave the models folder")
    choice = None
    if files.gguf:
        if pick is None:
            by_quant = {c.quant.upper(): c for c in files.gguf}
            choice = next((by_quant[q] for q in PREFERRED_QUANTS if q in by_quant), files.gguf[0])
        else:
            choice = next((c for c in files.gguf if c.quant.upper() == pick.upper()), None)
            choice = choice or next((c for c in files.gguf if any(f.path == pick for f in c.files)), None)
    if choice is not None:
        items = [Item(f, _flat_name(f.path)) for f in choice.files]
        target = items[0].dest
        mmproj = files.mmproj[:1]  # offered beside its model: into the model's sidecar folder
        items += [Item(f, f"{target}.hub/{_flat_name(f.path)}") for f in mmproj]
        return Plan(files.repo, files.commit, target, "gguf", items, files.license, files.card)
    if pick is not None and files.gguf:
        quants = ", ".join(c.quant for c in files.gguf)
        raise DownloadError(f"{files.repo} has no {pick!r}; its quantizations: {quants}")
    if pick is not None:
        single = next((f for f in files.files if f.path == pick and not f.unsafe), None)
        if single is None:
            raise DownloadError(f"{files.repo} has no file {pick!r}")
        _check_pickle(single.path, allow_pickle)
        item = Item(single, _flat_name(single.path))
        return Plan(files.repo, files.commit, item.dest, "gguf", [item], files.license, files.card)
    if not files.folder:
        raise DownloadError(f"{files.repo} has no GGUF or safetensors weights our loaders can load")
    folder = safe_name(files.repo.split("/")[1], "model folder")
    items, skipped = [], []
    for f in files.files:
        name = PurePosixPath(f.path).name
        if f.unsafe or name.startswith("."):
            continue
        if name.lower().endswith(PICKLE_SUFFIXES):
            if not allow_pickle:
                skipped.append(f"{f.path} (pickle weights can run code: --allow-pickle to fetch them)")
                continue
        elif not (name.lower().endswith(FOLDER_SUFFIXES) or name in LICENCE_FILES or name == "tokenizer.model"):
            continue
        items.append(Item(f, f"{folder}/{safe_repo_path(f.path)}"))
    return Plan(files.repo, files.commit, folder, "folder", items, files.license, files.card, skipped)


def _flat_name(path: str) -> str:
    name = PurePosixPath(safe_repo_path(path)).name
    try:
        return safe_name(name, "file name")
    except UnsafeName as exc:
        raise UnsafeRepoPath(str(exc)) from None


def _check_pickle(path: str, allow_pickle: bool) -> None:
    if path.lower().endswith(PICKLE_SUFFIXES) and not allow_pickle:
        raise DownloadError(
            f"{path} is pickle weights, which can run code when loaded: pass --allow-pickle to fetch it"
        )


def destination(models_dir: Path, relative: str) -> Path:
    """``models_dir / relative`` checked part by part and after resolving: never outside the models folder."""
    parts = safe_repo_path(relative).parts
    for p in parts:
        if not p.startswith("."):  # ".hub" sidecars and ".downloads" are ours
            safe_name(p, "file name")
    path = models_dir.joinpath(*parts)
    root = models_dir.resolve()
    if not path.resolve().is_relative_to(root) or path.resolve() == root:
        raise UnsafeRepoPath(f"refusing {relative!r}: it would land outside {models_dir}")
    return path


# -- running -------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One download, as the UI, the API and the CLI show it."""

    id: str
    plan: Plan
    state: str = "queued"  # queued, running, verifying, done, failed, cancelled
    done: int = 0  # bytes on disk (resumed bytes included)
    fetched: int = 0  # bytes fetched by this run
    error: str = ""
    file: str = ""
    started: float = field(default_factory=time.time)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def total(self) -> int:
        return self.plan.total

    def as_dict(self) -> dict:
        elapsed = max(1e-6, (self.finished or time.time()) - self.started)
        speed = self.fetched / elapsed if self.fetched else 0.0
        left = max(0, self.total - self.done)
        return {
            "id": self.id, "repo": self.plan.repo, "target": self.plan.target, "kind": self.plan.kind,
            "state": self.state, "bytes": self.done, "total": self.total, "fetched": self.fetched,
            "percent": round(100 * self.done / self.total, 1) if self.total else 100.0,
            "speed": round(speed), "eta_s": round(left / speed, 1) if speed and self.state == "running" else None,
            "file": self.file, "error": self.error or None, "license": self.plan.license,
            "skipped": self.plan.skipped, "started": self.started, "finished": self.finished,
        }  # fmt: skip


class _Progress:
    """The progress-bar class ``huggingface_hub.file_download.http_get`` is given: counts bytes into the job
    and stops the transfer (between chunks) when the job is cancelled."""

    def __init__(self, job: Job, on_update: Callable[[Job], None] | None, **_kwargs) -> None:
        self.job, self.on_update = job, on_update

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, n: int = 1) -> None:
        if self.job.cancel_event.is_set():
            raise Cancelled(f"cancelled: {self.job.plan.target}")
        self.job.done += n
        self.job.fetched += n
        if self.on_update is not None:
            self.on_update(self.job)

    def close(self) -> None:
        return None


class DownloadManager:
    """The downloads of one process (the server's are what the panel and ``/v1/internal/models/downloads`` list)."""

    def __init__(self, models_dir: Path, user_data: Path) -> None:
        self.models_dir = models_dir
        self.user_data = user_data
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def config(self) -> HubConfig:
        return HubConfig.load(self.user_data)

    # -- planning
    def prepare(self, spec: str, allow_pickle: bool = False, n_ctx: int = 4096) -> Job:
        """Look the repo up and plan ``REPO[:QUANT|:FILE]``; checks the disk; raises HubError subclasses."""
        repo, pick = parse_spec(spec)
        files = repo_files(self.config(), repo, n_ctx, Memory(None), with_fit=False)
        job = Job(uuid.uuid4().hex[:12], plan(files, pick, allow_pickle))
        if files.gated and job.plan.items:
            self._check_access(job.plan)
        self._check_disk(job.plan)
        with self._lock:
            running = [j for j in self._jobs.values() if j.plan.target == job.plan.target and j.state in
                       ("queued", "running", "verifying")]  # fmt: skip
            if running:
                raise DownloadError(f"{job.plan.target} is already downloading (job {running[0].id})")
            self._jobs[job.id] = job
            for old in [j.id for j in self._jobs.values() if j.finished][:-RECENT_JOBS]:
                del self._jobs[old]
        return job

    def _check_access(self, p: Plan) -> None:
        """A gated repo: ask for the first file's metadata (HEAD) now, so "no access" is said before starting."""
        from huggingface_hub import get_hf_file_metadata, hf_hub_url

        config = self.config()
        url = hf_hub_url(p.repo, p.items[0].file.path, revision=p.commit or None, endpoint=config.endpoint)
        with hub_errors(config, p.repo):
            get_hf_file_metadata(url, token=config.token or False)

    def _check_disk(self, p: Plan) -> None:
        self.models_dir.mkdir(parents=True, exist_ok=True)
        need = 0
        for item in p.items:
            have = self._part(item.file).stat().st_size if self._part(item.file).exists() else 0
            dest = destination(self.models_dir, item.dest)
            if dest.exists() and (not dest.is_file() or dest.stat().st_size != item.file.size):
                raise DownloadError(f"{item.dest} already exists in the models folder and is not {p.repo}'s "
                                    f"{item.file.path}: delete or rename it first")  # fmt: skip
            if not dest.exists():
                need += max(0, item.file.size - have)
        free = free_bytes(self.models_dir)
        if need + DISK_MARGIN > free:
            short = _size(need + DISK_MARGIN - free)
            raise DiskFull(f"not enough disk space for {p.target}: it needs {_size(need)} more and "
                           f"{self.models_dir} has {_size(free)} free (short by {short})")  # fmt: skip

    # -- jobs
    def jobs(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started, reverse=True)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.state in ("queued", "running", "verifying"):
            job.cancel_event.set()
        return job

    def start(self, job: Job) -> threading.Thread:
        """Run ``job`` on a thread of its own (the UI and the API)."""
        thread = threading.Thread(target=self.run, args=(job,), name=f"inglenook-download-{job.id}", daemon=True)
        thread.start()
        return thread

    def run(self, job: Job, on_update: Callable[[Job], None] | None = None) -> Job:
        """Download every file of the job, verify, move into place, write the card and licence beside it.
        Never raises: the job's state and error say how it ended."""
        job.state, job.started = "running", time.time()
        config = self.config()
        try:
            for item in job.plan.items:
                if job.cancel_event.is_set():
                    raise Cancelled(f"cancelled: {job.plan.target}")
                job.file = item.file.path
                self._fetch(config, job, item, on_update)
            self._write_sidecar(config, job.plan)
            job.state = "done"
        except Cancelled as exc:
            job.state, job.error = "cancelled", str(exc)
            for item in job.plan.items:
                self._part(item.file).unlink(missing_ok=True)
        except (HubError, OSError, UnsafeName) as exc:
            job.state, job.error = "failed", str(exc)
        except Exception as exc:  # a bug, not the user's fault: reported on the job, the server keeps serving
            job.state, job.error = "failed", f"internal error: {type(exc).__name__}: {exc}"
        job.finished = time.time()
        if on_update is not None:
            on_update(job)
        return job

    def _part(self, f: RemoteFile) -> Path:
        key = f.sha256 or hashlib.sha256(f.path.encode()).hexdigest()
        return self.models_dir / STAGING / f"{key}.part"

    def _fetch(self, config: HubConfig, job: Job, item: Item, on_update) -> None:
        from huggingface_hub import hf_hub_url
        from huggingface_hub.file_download import http_get
        from huggingface_hub.utils import build_hf_headers

        dest = destination(self.models_dir, item.dest)
        if dest.exists():
            if dest.is_file() and dest.stat().st_size == item.file.size and _sha_ok(dest, item.file.sha256):
                job.done += item.file.size  # already here, whole
                return
            raise DownloadError(f"{item.dest} already exists in the models folder and is not {job.plan.repo}'s "
                                f"{item.file.path}: delete or rename it first (nothing was overwritten)")  # fmt: skip
        part = self._part(item.file)
        part.parent.mkdir(parents=True, exist_ok=True)
        have = part.stat().st_size if part.exists() else 0
        if have > item.file.size:
            part.unlink()
            have = 0
        job.done += have
        url = hf_hub_url(job.plan.repo, item.file.path, revision=job.plan.commit or None, endpoint=config.endpoint)
        headers = build_hf_headers(token=config.token or False)
        with part.open("ab") as f, hub_errors(config, job.plan.repo):
            http_get(url, f, resume_size=have, headers=headers, expected_size=item.file.size,
                     displayed_filename=item.file.path,
                     tqdm_class=lambda **kw: _Progress(job, on_update, **kw))  # fmt: skip
        job.state = "verifying"
        if on_update is not None:
            on_update(job)
        if not _sha_ok(part, item.file.sha256):
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{item.file.path} does not match the sha256 the hub states "
                                   f"({item.file.sha256[:12]}…): the download was deleted; try again")  # fmt: skip
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
        job.state = "running"

    def _write_sidecar(self, config: HubConfig, p: Plan) -> None:
        folder = sidecar(destination(self.models_dir, p.target))
        folder.mkdir(parents=True, exist_ok=True)
        source = {"repo": p.repo, "commit": p.commit, "url": config.repo_url(p.repo), "license": p.license,
                  "files": [i.file.path for i in p.items], "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                  time.gmtime())}  # fmt: skip
        if p.card:
            write_atomic(folder / "README.md", p.card.encode("utf-8"))
        for name in LICENCE_FILES:
            data = fetch_small(config, p.repo, name)
            if data:
                write_atomic(folder / "LICENSE", data)
                source["license_file"] = "LICENSE"
                break
        write_atomic(folder / SOURCE_FILE, json.dumps(source, indent=2).encode("utf-8"))


def _sha_ok(path: Path, expected: str | None) -> bool:
    if not expected:
        return True
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * 2**20):
            digest.update(chunk)
    return digest.hexdigest() == expected.lower()


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def remove_model(models_dir: Path, name: str) -> list[Path]:
    """Delete a model (a GGUF file with its split parts, or a folder) and its sidecar; the paths removed."""
    path = destination(models_dir, safe_name(name, "model name"))
    if not path.exists():
        raise DownloadError(f"no {name!r} in {models_dir}")
    removed = []
    targets = [path]
    if path.is_file() and path.name.lower().endswith(".gguf"):
        if split_part(path.name):
            stem = SPLIT.sub("", path.name)
            targets = sorted(p for p in models_dir.glob(f"{stem}-*-of-*.gguf") if SPLIT.sub("", p.name) == stem)
        targets.append(sidecar(path))
    for t in targets:
        if t.is_dir():
            shutil.rmtree(t)
            removed.append(t)
        elif t.exists():
            t.unlink()
            removed.append(t)
    return removed
