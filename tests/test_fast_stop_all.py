"""``/v1/internal/stop-generation`` with a model that decodes several generations together (fast tier, the fake
loader's ``parallel``): the stop ends every generation running, not just one of them."""

from __future__ import annotations

import threading
import time

from conftest import write_fake
from fastapi.testclient import TestClient

from webui.server import build_api_server


def test_stop_generation_ends_every_running_generation_of_a_batching_model(make_fake_app, fake_models):
    write_fake(fake_models, "batched", reply=" ".join(f"w{i}" for i in range(400)), token_delay_ms=20, parallel=2)
    app = make_fake_app("batched.fake")
    finishes: dict[int, int] = {}  # completion tokens of each

    with TestClient(build_api_server(app)) as client:

        def ask(i: int) -> None:
            body = {"prompt": f"hello {i}", "max_tokens": 400, "temperature": 0}
            finishes[i] = client.post("/v1/completions", json=body).json()["usage"]["completion_tokens"]

        threads = [threading.Thread(target=ask, args=(i,), daemon=True) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(app.engine._active) < 2 and time.monotonic() < deadline:  # both are decoding
            time.sleep(0.02)
        assert len(app.engine._active) == 2
        assert client.post("/v1/internal/stop-generation").json() == {"stopped": True}
        for t in threads:
            t.join(60)
    assert len(finishes) == 2 and all(n < 400 for n in finishes.values()), finishes  # both stopped early
