"""Finding models on a Hugging Face hub: search, a repo's files grouped by quantization, fit badges, licences.

Everything goes through the real ``huggingface_hub`` client (``HfApi.list_models``, ``model_info``,
``list_repo_tree``). The hub is the user's: ``HF_ENDPOINT`` (a mirror, or the test suite's local fake hub)
and ``HF_HUB_OFFLINE`` are read at call time, not import time, so one process can follow a changed
environment. The token comes from ``HF_TOKEN`` or ``inglenook hub login`` (``user_data/hub/token``, 0600)
and is only ever sent to that endpoint; it is never logged or printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from backends.base import ModelLoadError
from backends.gguf_file import read_header
from webui.models.facts import Facts, gguf_facts
from webui.models.memory import MemoryEstimate, estimate_memory

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_FILE = "token"
SIDECAR_SUFFIX = ".hub"  # <model>.hub/ beside a downloaded GGUF (or inside a downloaded folder): card, licence
SOURCE_FILE = "source.json"
LOADABLE_TAGS = ("gguf", "safetensors", "gptq")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
HEADER_PREFIX_BYTES = 16 * 2**20  # enough for a GGUF header with a 260k-token vocabulary
MAX_CARD_BYTES = 512 * 1024
REACH_TIMEOUT_S = 5
SEARCH_EXPAND = ["author", "downloads", "likes", "lastModified", "gated", "tags", "cardData", "config",
                 "gguf", "safetensors", "library_name", "pipeline_tag"]  # fmt: skip
SORTS = {"downloads": "downloads", "likes": "likes", "recent": "lastModified"}

# GGUF file-name conventions: "model-Q4_K_M.gguf", "model.IQ4_XS.gguf", "model-f16-00001-of-00003.gguf"
SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
QUANT = re.compile(
    r"(?:^|[-._])((?:UD-)?(?:I?Q\d(?:_[A-Z0-9]+)*|TQ\d_\d|MXFP4(?:_MOE)?|BF16|F16|F32|FP16|FP32))(?=[-._]|$)",
    re.IGNORECASE,
)


class HubError(Exception):
    """A hub request that failed, with a message a person can act on."""


class HubOffline(HubError):
    """No hub: HF_HUB_OFFLINE is set, or the endpoint cannot be reached."""


class GatedRepo(HubError):
    """A gated or private repo this token may not read."""


class BadRepoId(HubError):
    """Not an ``owner/name`` repo id."""


class RepoNotFound(HubError):
    """No such repo (or a private one this token cannot see)."""


class UnsafeRepoPath(HubError):
    """A file name in a repo that would land outside the models folder."""


# -- configuration -------------------------------------------------------------------------------------------------
@dataclass
class HubConfig:
    """Where the hub is and who we are to it, read from the environment and ``user_data/hub/`` at call time."""

    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    offline: bool = False

    @classmethod
    def load(cls, user_data: Path, env: dict[str, str] | None = None) -> HubConfig:
        env = dict(os.environ if env is None else env)
        offline = str(env.get("HF_HUB_OFFLINE", "")).strip().upper() in ("1", "ON", "YES", "TRUE")
        endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        token = (env.get("HF_TOKEN") or "").strip() or read_token(user_data)
        return cls(endpoint, token, offline)

    def repo_url(self, repo: str) -> str:
        return f"{self.endpoint}/{repo}"


def token_path(user_data: Path) -> Path:
    return user_data / "hub" / TOKEN_FILE


def read_token(user_data: Path) -> str | None:
    try:
        return token_path(user_data).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def save_token(user_data: Path, token: str) -> Path:
    """Store the token readable by this user only (0600, created so: never briefly world-readable)."""
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("a hub token is one word with no spaces")
    path = token_path(user_data)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return path


def forget_token(user_data: Path) -> bool:
    path = token_path(user_data)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


# -- names ---------------------------------------------------------------------------------------------------------
def check_repo_id(repo: str) -> str:
    """``owner/name`` with the hub's characters only (it becomes part of URLs and folder names)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}", repo or "") or ".." in repo:
        raise BadRepoId(f"{repo!r} is not a hub repo id (owner/name)")
    return repo


def safe_repo_path(path: str) -> PurePosixPath:
    """A repo file path as relative parts that cannot leave the folder they are joined to; else UnsafeRepoPath."""
    parts = PurePosixPath(path).parts
    bad = (not path or "\\" in path or "\x00" in path or path.startswith("/") or not parts
           or any(p in ("", ".", "..") or ":" in p for p in parts))  # fmt: skip
    if bad:
        raise UnsafeRepoPath(f"refusing the repo file {path!r}: its name would leave the models folder")
    return PurePosixPath(*parts)


def parse_quant(filename: str) -> str:
    """The quantization a GGUF file name states (``Q4_K_M``, ``IQ4_XS``, ``Q8_0``, ``F16``), upper-case, or ""."""
    stem = SPLIT.sub(".gguf", PurePosixPath(filename).name)
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    found = QUANT.findall(stem)
    return found[-1].upper() if found else ""


def split_part(filename: str) -> tuple[int, int] | None:
    """(part, of) for split GGUF files (``-00001-of-00003.gguf``), else None."""
    m = SPLIT.search(filename)
    return (int(m.group(1)), int(m.group(2))) if m else None


def is_mmproj(filename: str) -> bool:
    return "mmproj" in PurePosixPath(filename).name.lower()


# -- what the hub tells us -----------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """One repo in a search, with the facts people choose by."""

    repo: str
    author: str = ""
    downloads: int = 0
    likes: int = 0
    license: str = ""
    gated: bool = False
    last_modified: str = ""
    formats: list[str] = field(default_factory=list)
    architecture: str = ""
    parameters: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # from the LFS pointer; None for small files kept in git
    quant: str = ""
    part: tuple[int, int] | None = None
    unsafe: str = ""  # why this file may not be downloaded (a name that leaves the folder)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GGUFChoice:
    """One quantization of a GGUF repo: its file(s) (several for a split model), total size and fit badge."""

    quant: str
    files: list[RemoteFile]
    size: int
    fit: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What the user picks: the (first) file's name."""
        return self.files[0].path

    def as_dict(self) -> dict:
        return {"quant": self.quant, "name": self.name, "size": self.size, "fit": self.fit,
                "files": [f.as_dict() for f in self.files]}  # fmt: skip


@dataclass
class RepoFiles:
    """A repo's files as choices: GGUF quantizations, mmproj files, or one safetensors/GPTQ folder."""

    repo: str
    commit: str
    license: str
    gated: bool
    card: str  # the README (model card), bounded
    files: list[RemoteFile]
    gguf: list[GGUFChoice] = field(default_factory=list)
    mmproj: list[RemoteFile] = field(default_factory=list)
    folder: dict = field(default_factory=dict)  # safetensors/GPTQ: total size, dtype, quantization_config, fit
    unsafe: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"repo": self.repo, "commit": self.commit, "license": self.license, "gated": self.gated,
                "gguf": [c.as_dict() for c in self.gguf], "mmproj": [f.as_dict() for f in self.mmproj],
                "folder": self.folder, "unsafe": self.unsafe}  # fmt: skip


def _api(config: HubConfig):
    if config.offline:
        raise HubOffline("offline (HF_HUB_OFFLINE is set): search and downloads are off; local models work as usual")
    from huggingface_hub import HfApi

    _reachable(config)
    return HfApi(endpoint=config.endpoint, token=config.token or False)


def _reachable(config: HubConfig) -> None:
    """One quick request first: the client's own retries would take half a minute to say "no network"."""
    import httpx2
    from huggingface_hub.utils import get_session

    try:
        get_session().head(config.endpoint, timeout=REACH_TIMEOUT_S)
    except httpx2.TransportError as exc:
        raise HubOffline(f"offline: cannot reach {config.endpoint} ({type(exc).__name__})") from None


@contextlib.contextmanager
def hub_errors(config: HubConfig, repo: str | None = None):
    """Turn the client's exceptions into one-line messages (a token never appears in them)."""
    import httpx2  # huggingface_hub's own HTTP client (a fork of httpx)
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        yield
    except GatedRepoError:
        raise GatedRepo(f"{repo} is gated: accept its terms at {config.repo_url(repo or '')} and log in "
                        "(HF_TOKEN or 'inglenook hub login') with a token that has access") from None  # fmt: skip
    except RepositoryNotFoundError:
        raise RepoNotFound(f"{repo} was not found on {config.endpoint} (private repos need a token)") from None
    except OfflineModeIsEnabled:
        raise HubOffline("offline (HF_HUB_OFFLINE is set): search and downloads are off") from None
    except (httpx2.TransportError, ConnectionError) as exc:
        raise HubOffline(f"offline: cannot reach {config.endpoint} ({type(exc).__name__})") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        if status in (401, 403):
            raise GatedRepo(f"{repo} needs access: {config.repo_url(repo or '')} (HTTP {status})") from None
        raise HubError(f"the hub answered HTTP {status} for {repo or 'the search'}") from None


def search(config: HubConfig, query: str, sort: str = "downloads", limit: int = 20) -> list[SearchResult]:
    """Repos matching ``query`` that our loaders can load (GGUF, safetensors, GPTQ), best first by ``sort``."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}")
    api = _api(config)
    found: list[SearchResult] = []
    with hub_errors(config):
        for info in api.list_models(search=query or None, sort=SORTS[sort], limit=max(1, limit) * 3,
                                    expand=SEARCH_EXPAND):  # fmt: skip
            result = _result(info)
            if result.formats:
                found.append(result)
            if len(found) >= limit:
                break
    return found


def _result(info) -> SearchResult:
    tags = [str(t).lower() for t in (info.tags or [])]
    config = info.config if isinstance(info.config, dict) else {}
    quant = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else {}
    formats = [t for t in LOADABLE_TAGS if t in tags]
    if quant.get("quant_method") == "gptq" and "gptq" not in formats:
        formats.append("gptq")
    gguf = info.gguf if isinstance(info.gguf, dict) else {}
    params = None
    if gguf.get("total"):
        params = int(gguf["total"])
    elif info.safetensors is not None and getattr(info.safetensors, "total", None):
        params = int(info.safetensors.total)
    architectures = config.get("architectures") or []
    return SearchResult(
        repo=info.id,
        author=info.author or info.id.split("/")[0],
        downloads=int(info.downloads or 0),
        likes=int(info.likes or 0),
        license=_licence_of(info),
        gated=bool(info.gated),
        last_modified=info.last_modified.isoformat() if info.last_modified else "",
        formats=formats,
        architecture=str(gguf.get("architecture") or config.get("model_type") or (architectures or [""])[0]),
        parameters=params,
    )


def _licence_of(info) -> str:
    card = info.card_data
    licence = getattr(card, "license", None) if card is not None else None
    if not licence:
        licence = next((t.split(":", 1)[1] for t in (info.tags or []) if str(t).startswith("license:")), "")
    if licence == "other":
        licence = getattr(card, "license_name", None) or "other"
    return str(licence or "")


def repo_files(config: HubConfig, repo: str, n_ctx: int = 4096, memory: Memory | None = None,
               with_fit: bool = True) -> RepoFiles:  # fmt: skip
    """A repo's files with sizes and LFS sha256, grouped into what can be downloaded, each with a fit badge
    (``with_fit=False``: no badges, and no Range request for a GGUF header)."""
    check_repo_id(repo)
    api = _api(config)
    with hub_errors(config, repo):
        info = api.model_info(repo, expand=["sha", "gated", "cardData", "tags", "config", "gguf", "safetensors"])
        tree = [e for e in api.list_repo_tree(repo, recursive=True) if hasattr(e, "size")]
    files, unsafe = [], []
    for entry in tree:
        rf = RemoteFile(entry.path, int(entry.size), entry.lfs.sha256 if entry.lfs else None, parse_quant(entry.path),
                        split_part(entry.path))  # fmt: skip
        try:
            safe_repo_path(entry.path)
        except UnsafeRepoPath as exc:
            rf.unsafe = str(exc)
            unsafe.append(entry.path)
        files.append(rf)
    result = RepoFiles(repo, info.sha or "", _licence_of(info), bool(info.gated), "", files, unsafe=unsafe)
    result.card = _card(config, repo, files)
    memory = memory or Memory.now()
    safe = [f for f in files if not f.unsafe]
    ggufs = [f for f in safe if f.path.lower().endswith(".gguf")]
    result.mmproj = [f for f in ggufs if is_mmproj(f.path)]
    models = [f for f in ggufs if not is_mmproj(f.path)]
    groups: dict[str, list[RemoteFile]] = {}
    for f in models:
        key = SPLIT.sub("", f.path) if f.part else f.path
        groups.setdefault(key, []).append(f)
    facts = _remote_gguf_facts(config, repo, min(models, key=lambda f: f.size)) if models and with_fit else None
    for group in groups.values():
        group.sort(key=lambda f: f.part or (0, 0))
        size = sum(f.size for f in group)
        choice = GGUFChoice(group[0].quant or "?", group, size)
        choice.fit = fit_badge(facts, size, n_ctx, memory) if with_fit else {}
        result.gguf.append(choice)
    result.gguf.sort(key=lambda c: c.size)
    weights = [f for f in safe if f.path.endswith(".safetensors")]
    if weights and not models:
        result.folder = _folder_summary(info, weights, n_ctx, memory)
    return result


def _card(config: HubConfig, repo: str, files: list[RemoteFile]) -> str:
    readme = next((f for f in files if f.path == "README.md"), None)
    if readme is None or readme.size > MAX_CARD_BYTES:
        return ""
    data = fetch_small(config, repo, "README.md")
    return data.decode("utf-8", errors="replace") if data else ""


def fetch_small(config: HubConfig, repo: str, path: str, limit: int = MAX_CARD_BYTES) -> bytes | None:
    """A small file of a repo (the card, the licence), bounded; None when it cannot be had."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    url = hf_hub_url(repo, path, endpoint=config.endpoint)
    headers = build_hf_headers(token=config.token or False, headers={"Range": f"bytes=0-{limit - 1}"})
    data = bytearray()
    try:
        with hub_errors(config, repo), get_session().stream("GET", url, headers=headers, follow_redirects=True) as r:
            if r.status_code not in (200, 206):
                return None
            for chunk in r.iter_bytes():  # read no further than the limit, even from a server that ignores Range
                data += chunk
                if len(data) >= limit:
                    break
    except HubError:
        return None
    return bytes(data[:limit])


def _remote_gguf_facts(config: HubConfig, repo: str, sample: RemoteFile) -> Facts | None:
    """Architecture facts (layers, KV heads) from the smallest GGUF's header, read with one Range request.

    The prefix is written into a sparse file of the full size, so :func:`backends.gguf_file.read_header`
    (bounded, validating) reads it as it would the whole file; nothing else is downloaded.
    """
    data = fetch_small(config, repo, sample.path, limit=min(sample.size, HEADER_PREFIX_BYTES))
    if not data:
        return None
    with tempfile.TemporaryDirectory(prefix="inglenook-gguf-") as tmp:
        path = Path(tmp) / "head.gguf"
        with path.open("wb") as f:
            f.write(data)
            f.truncate(sample.size)
        try:
            return gguf_facts(read_header(path), sample.size)
        except (ModelLoadError, OSError, ValueError):
            return None


def _folder_summary(info, weights: list[RemoteFile], n_ctx: int, memory: Memory) -> dict:
    config = info.config if isinstance(info.config, dict) else {}
    quant = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else None
    size = sum(f.size for f in weights)
    dtype = ""
    if info.safetensors is not None and getattr(info.safetensors, "parameters", None):
        dtype = max(info.safetensors.parameters, key=info.safetensors.parameters.get)
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    facts = None
    layers = config.get("num_hidden_layers", text.get("num_hidden_layers"))
    heads = config.get("num_attention_heads", text.get("num_attention_heads"))
    if layers and heads:
        hidden = int(config.get("hidden_size", text.get("hidden_size", 0)) or 0)
        head_dim = int(config.get("head_dim", 0) or 0) or (hidden // int(heads) if heads else 0)
        kv = int(config.get("num_key_value_heads", text.get("num_key_value_heads", heads)) or heads)
        facts = Facts(n_layers=int(layers), n_kv_heads=kv, key_length=head_dim, value_length=head_dim)
    return {"size": size, "dtype": dtype, "quantization_config": quant,
            "kind": "gptq" if quant and quant.get("quant_method") == "gptq" else "hf",
            "fit": fit_badge(facts, size, n_ctx, memory)}  # fmt: skip


# -- fit -----------------------------------------------------------------------------------------------------------
@dataclass
class Memory:
    """Memory a model could use now: RAM (MemAvailable) and free VRAM (None where there is no GPU)."""

    ram: int | None
    vram: int | None = None

    @classmethod
    def now(cls) -> Memory:
        from webui.models.memory import available_memory

        return cls(available_memory(), free_vram())


def free_vram() -> int | None:
    """Free memory of the first NVIDIA GPU (nvidia-smi), or None."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.free", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=5, check=True).stdout  # fmt: skip
        return int(out.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def fit_badge(facts: Facts | None, size: int, n_ctx: int, memory: Memory) -> dict:
    """Fits in VRAM / in VRAM with N layers / in RAM / tight / does not fit, from the Model tab's estimate
    (:func:`webui.models.memory.estimate_memory`: weights + KV cache at ``n_ctx`` + compute allowance)."""
    facts = facts or Facts()
    # the header's tensor bytes for the file it was read from; other quantizations in proportion to their size
    weights = facts.weights_bytes * size // facts.file_size if facts.weights_bytes and facts.file_size else size
    estimate: MemoryEstimate = estimate_memory(facts, n_ctx, available=memory.ram, weights=weights)
    badge = {"total": estimate.total, "kv_cache": estimate.kv_cache, "n_ctx": n_ctx, "layers_on_gpu": 0}
    if memory.vram and facts.n_layers:
        if estimate.total <= 0.9 * memory.vram:
            return {**badge, "verdict": "vram", "layers_on_gpu": facts.n_layers,
                    "label": f"🟢 fits in VRAM ({_gb(estimate.total)})"}  # fmt: skip
        per_layer = max(1, (estimate.weights + estimate.overhead) // facts.n_layers)
        room = int(0.9 * memory.vram) - estimate.kv_cache
        layers = max(0, min(facts.n_layers, room // per_layer))
        if layers and estimate.verdict in ("fits", "tight"):
            return {**badge, "verdict": "partial", "layers_on_gpu": layers,
                    "label": f"🟡 {layers}/{facts.n_layers} layers in VRAM, the rest in RAM"}  # fmt: skip
    verdict = estimate.verdict
    kv_note = "" if facts.n_layers else " (KV cache unknown)"
    label = {"fits": f"🟢 fits in RAM ({_gb(estimate.total)}){kv_note}",
             "tight": f"🟡 tight in RAM ({_gb(estimate.total)} of {_gb(memory.ram or 0)}){kv_note}",
             "won't fit": f"🔴 does not fit ({_gb(estimate.total)} > {_gb(memory.ram or 0)})",
             "unknown": f"⚪ {_gb(estimate.total)} needed; free memory unknown"}[verdict]  # fmt: skip
    return {**badge, "verdict": "ram" if verdict == "fits" else verdict, "label": label}


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


# -- provenance beside a download ----------------------------------------------------------------------------------
def sidecar(model_path: Path) -> Path:
    """Where a downloaded model's card, licence and source live: ``<file>.hub/`` beside a GGUF file, or
    ``.hub/`` inside a downloaded folder."""
    return (
        model_path / SIDECAR_SUFFIX if model_path.is_dir() else model_path.with_name(model_path.name + SIDECAR_SUFFIX)
    )


def provenance(model_path: Path) -> dict | None:
    """What was recorded when ``model_path`` was downloaded: repo, commit, licence, card path; None if nothing."""
    folder = sidecar(model_path)
    try:
        source = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(source, dict):
        return None
    card = folder / "README.md"
    source["card"] = card.read_text(encoding="utf-8", errors="replace")[:MAX_CARD_BYTES] if card.is_file() else ""
    return source
