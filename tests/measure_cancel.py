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


def one(url: str, model: str, command: list[str]) -> dict:
    """One abort: the client's abort time and the server's record of the generation it left."""
    before = last_id(url)
    client = subprocess.Popen([*command, str(STAY_MS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        event = json.loads(client.stdout.readline() or "{}")
        if event.get("event") != "aborted":
            raise RuntimeError(f"the client did not abort: {event} {client.stderr.read()[-2000:]}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            data = httpx.get(f"{url}/v1/internal/generations").json()["data"]
            if data and data[-1]["id"] != before:
                record = data[-1]
                break
            time.sleep(0.005)
        else:
            raise RuntimeError("no record of the generation within 60 s")
        record["still_running"] = client.poll() is None
        return {"abort_t": event["t"], **record}
    finally:
        client.kill()
        client.wait()


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
            hog = cpu_hog() if args.busy else None
            with hog or open(__file__):  # noqa: SIM115 (a no-op context when not busy)
                for name, make in CLIENTS.items():
                    rows = [one(url, model.stem, make(f"{url}/v1", model.stem)) for _ in range(args.runs)]
                    notice = [r["cancelled_at"] - r["abort_t"] for r in rows if r["cancelled_at"]]
                    free = [r["ended_at"] - r["abort_t"] for r in rows if r["ended_at"] and r["cancelled_at"]]
                    reasons = sorted({r["finish_reason"] for r in rows})
                    tokens = [r["completion_tokens"] for r in rows]
                    print(json.dumps({"client": name, "busy": args.busy, "cancelled": len(notice),
                                      "notice_ms_median": round(statistics.median(notice), 1) if notice else None,
                                      "free_ms_median": round(statistics.median(free), 1) if free else None,
                                      "free_ms_max": round(max(free), 1) if free else None,
                                      "finish": reasons, "tokens": tokens}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
