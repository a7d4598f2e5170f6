"""Issue 18 item 2, the drive-by, in a real browser: a page on ``http://evil.test`` (mapped to 127.0.0.1 in
Chromium) uploads ``script.py`` to a server reached under an ``--allowed-host`` name and calls the install
handler with the visitor's cookies. Refused; the server's own page may still post (so the test can fail).
"""

from __future__ import annotations

import contextlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_fixtures import serve
from conftest import free_port

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# What the attacker's page runs: upload, then the install handler by fn_index, cookies included.
ATTACK_JS = """async (target) => {
    const out = {};
    try {
        const form = new FormData();
        form.append('files', new Blob(['import os\\nos.system("touch /tmp/pwned")\\n']), 'script.py');
        const r = await fetch(target + '/gradio_api/upload', {method: 'POST', body: form, credentials: 'include'});
        out.upload = r.status;
        out.paths = await r.json();
    } catch (e) { out.upload = 'blocked: ' + e.message; }
    try {
        const r = await fetch(target + '/gradio_api/queue/join', {
            method: 'POST', credentials: 'include', headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({data: ['/tmp'], fn_index: 0, session_hash: 'evil'})});
        out.join = r.status;
    } catch (e) { out.join = 'blocked: ' + e.message; }
    try {
        const r = await fetch(target + '/v1/chat/completions', {
            method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{"messages": []}'});
        out.api = r.status;
    } catch (e) { out.api = 'blocked: ' + e.message; }
    return out;
}"""


@contextlib.contextmanager
def evil_site() -> Iterator[int]:
    """A plain page on another port: the attacker's origin."""

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            body = b"<html><body>cute cats</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()


def test_a_page_on_another_origin_cannot_upload_or_install(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    with serve(models, tmp_path / "ud", load=False, allowed_hosts=["mybox.test"]) as s, evil_site() as evil_port:
        port = s.url.rsplit(":", 1)[1]
        target = f"http://mybox.test:{port}"
        installed_before = {e.name for e in s.app.extensions.list()}
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), headless=True,
                args=["--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP evil.test 127.0.0.1, "
                      "MAP mybox.test 127.0.0.1"],
            )  # fmt: skip
            try:
                page = browser.new_page()
                page.goto(f"{target}/")  # the visitor has used the app: its cookies exist for mybox.test
                own = page.evaluate(ATTACK_JS, target)
                page.goto(f"http://evil.test:{evil_port}/")
                attack = page.evaluate(ATTACK_JS, target)
            finally:
                browser.close()
        assert own["upload"] == 200, own  # the server's own page may post: the check is by origin
        for step in ("upload", "join", "api"):
            assert str(attack[step]).startswith("blocked"), attack
        assert {e.name for e in s.app.extensions.list()} == installed_before
