"""Cancel-to-free per client (README, "Speed"): each client streams from ``inglenook serve`` on the embedded gemma,
lets go after 4 chunks and stays running; we time, on the machine's one clock, the client's abort → the server
seeing it (the record's ``cancelled_at``) → the generation giving the engine up (``ended_at``).

Clients: the official ``openai`` Python client (``close()``, leaving a ``with``), the ``openai`` npm package
(``break``, ``controller.abort()``, an AbortSignal) and the Vercel AI SDK (an AbortSignal; ``break`` out of
``experimental_streamTextLowMemory``; ``break`` out of ``streamText``, which keeps reading the response).
Run: ``PYTHONPATH=. python tests/measure_cancel.py [--runs 5] [--busy]`` (``--busy``: beside a busy-loop on one
core; the Node clients need ``cd tests/js && npm install``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from webui.bench.contention import cpu_hog
from webui.models.folder import ensure_default_model
from webui.serve import free_port, process_server

TESTS = Path(__file__).resolve().parent
CHUNKS, STAY_MS = 4, 4000
HELD_S = 20  # a generation still running this long after its client let go is "held"
PYTHON = [sys.executable, str(TESTS / "abort_stream.py")]
NODE_OPENAI = ["node", str(TESTS / "js" / "abort_stream.mjs")]
VERCEL = ["node", str(TESTS / "js" / "vercel.mjs")]
CLIENTS = {  # name: the command after (BASE_URL, MODEL) are known
    "python close()": lambda url, m: [*PYTHON, url, m, str(CHUNKS), "close"],
    "python with": lambda url, m: [*PYTHON, url, m, str(CHUNKS), "with"],
    "node openai break": lambda url, m: [*NODE_OPENAI, url, m, str(CHUNKS), "break"],
    "node openai abort()": lambda url, m: [*NODE_OPENAI, url, m, str(CHUNKS), "abort"],
    "node openai signal": lambda url, m: [*NODE_OPENAI, url, m, str(CHUNKS), "signal"],
    "vercel ai signal": lambda url, m: [*VERCEL, "abort", url, m, str(CHUNKS), "signal"],
    "vercel ai lowmem break": lambda url, m: [*VERCEL, "abort", url, m, str(CHUNKS), "lowmem-break"],
    "vercel ai break": lambda url, m: [*VERCEL, "abort", url, m, str(CHUNKS), "break"],  # never lets go: see README
}  # fmt: skip


def last_id(url: str) -> str | None:
    data = httpx.get(f"{url}/v1/internal/generations").json()["data"]
    return data[-1]["id"] if data else None


def one(url: str, model: str, command: list[str]) -> dict | None:
    """One abort: the client's abort time and the server's record of the generation it left; None when the reply
    ended before the client let go. A generation still running HELD_S after the abort is recorded as held (the
    client is then killed, which closes its socket)."""
    before = last_id(url)
    client = subprocess.Popen([*command, str(STAY_MS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    event: dict = {}
    try:
        event = json.loads(client.stdout.readline() or "{}")
        if event.get("event") != "aborted":
            return None
        deadline = time.monotonic() + HELD_S
        while time.monotonic() < deadline:
            data = httpx.get(f"{url}/v1/internal/generations").json()["data"]
            if data and data[-1]["id"] != before:
                return {"abort_t": event["t"], "held": False, **data[-1]}
            time.sleep(0.005)
        return {"abort_t": event["t"], "held": True}
    finally:
        client.kill()
        client.wait()
        while last_id(url) == before and event.get("event") == "aborted":  # the engine is free for the next run
            time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", action="store_true", help="beside a busy-loop on one core")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = ensure_default_model(folder / "models")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "webui", "serve", "--port", str(port), "--models-dir", str(folder / "models"),
                   "--user-data", str(folder / "ud"), "--model", model.name]  # fmt: skip
        with (folder / "log").open("w") as log, process_server(command, url, log, timeout_s=300):
            with cpu_hog() if args.busy else contextlib.nullcontext():
                for name, make in CLIENTS.items():
                    runs = [one(url, model.stem, make(f"{url}/v1", model.stem)) for _ in range(args.runs)]
                    rows = [r for r in runs if r is not None and not r["held"]]
                    notice = [r["cancelled_at"] - r["abort_t"] for r in rows if r["cancelled_at"]]
                    free = [r["ended_at"] - r["abort_t"] for r in rows if r["ended_at"] and r["cancelled_at"]]
                    print(json.dumps({"client": name, "busy": args.busy, "cancelled": len(notice),
                                      "held_over_20s": sum(1 for r in runs if r and r["held"]),
                                      "ended_before_abort": runs.count(None),
                                      "notice_ms_median": round(statistics.median(notice), 1) if notice else None,
                                      "free_ms_median": round(statistics.median(free), 1) if free else None,
                                      "free_ms_max": round(max(free), 1) if free else None,
                                      "finish": sorted({r["finish_reason"] for r in rows}),
                                      "tokens": [r["completion_tokens"] for r in rows]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
