"""Take the README's screenshots from the real page: ``python -m webui.screenshots OUTDIR``.

Starts the app on the embedded model (a models folder and user data of its own, in a temporary folder), opens
it in headless Chromium (Debian's ``/usr/bin/chromium`` through playwright), has one short exchange, and saves
chat, model, parameters, characters, notebook, extensions, dark and mobile shots (1440×900 and 390×844,
palette PNGs). Run it again whenever the UI changes.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from webui.serve import free_port, process_server

CHROMIUM = Path("/usr/bin/chromium")
DESKTOP = {"width": 1440, "height": 900}
MOBILE = {"width": 390, "height": 844}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"]


@contextlib.contextmanager
def serving(folder: Path, timeout_s: float = 180) -> Iterator[str]:
    """``inglenook serve`` on the embedded model in ``folder``; yields its URL once /healthz answers."""
    from webui.models.folder import ensure_default_model

    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    ensure_default_model(models)
    port = free_port()
    command = [sys.executable, "-m", "webui", "serve", "--port", str(port), "--models-dir", str(models),
               "--user-data", str(folder / "user_data")]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    log_path = folder / "server.log"
    with log_path.open("w") as log:
        with process_server(command, url, log, timeout_s=timeout_s, explain=lambda: f"see {log_path}"):
            yield url


def _open(page, url: str) -> None:
    page.goto(url, wait_until="load")
    page.wait_for_selector("#chat-input textarea", timeout=60_000)
    page.wait_for_function(
        "() => (document.querySelector('#prompt-tokens')?.innerText || '').includes('tokens')", timeout=60_000
    )


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(600)


def _save(page, out: Path, name: str) -> Path:
    path = out / f"{name}.png"
    page.screenshot(path=str(path))
    _optimise(path)
    return path


def _optimise(path: Path) -> None:
    """A 256-colour palette PNG: a UI shot stays readable at a fraction of the size."""
    from PIL import Image

    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def _exchange(page) -> None:
    """One short reply, so the chat shot shows a conversation with its stats line."""
    _tab(page, "Parameters")
    box = page.get_by_label("number input for Max new tokens")
    for _ in range(10):  # a just-shown tab may still be mounting its inputs
        box.fill("40")
        box.press("Tab")
        page.wait_for_timeout(250)
        if box.input_value() == "40":
            break
    _tab(page, "Chat")
    page.click("#new-chat")
    page.fill("#chat-input textarea", "Write two sentences about a cosy fireplace.")
    page.press("#chat-input textarea", "Enter")
    page.wait_for_selector("#chatbot .inglenook-stats", timeout=120_000)
    page.wait_for_timeout(500)


def take(out: Path) -> list[Path]:
    """Every screenshot into ``out``; returns their paths."""
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="inglenook-shots-") as tmp, serving(Path(tmp)) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport=DESKTOP).new_page()
            _open(page, url)
            _exchange(page)
            saved.append(_save(page, out, "chat"))
            for tab in ("Model", "Parameters", "Characters", "Notebook", "Extensions"):
                _tab(page, tab)
                saved.append(_save(page, out, tab.lower()))
            dark = browser.new_context(viewport=DESKTOP).new_page()
            _open(dark, f"{url}/?__theme=dark")
            saved.append(_save(dark, out, "dark"))
            mobile = browser.new_context(viewport=MOBILE, is_mobile=True, has_touch=True).new_page()
            _open(mobile, url)
            saved.append(_save(mobile, out, "mobile"))
            browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m webui.screenshots", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="where the PNGs go (docs/screenshots for the README)")
    args = parser.parse_args(argv)
    if not CHROMIUM.exists():
        print(f"error: {CHROMIUM} is not installed (apt install chromium)", file=sys.stderr)
        return 1
    try:
        for path in take(args.outdir):
            print(path)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
