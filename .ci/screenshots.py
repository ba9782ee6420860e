"""Full-page screenshots of the built book, as a reader sees it: desktop (1280 px) and phone (390 px,
mobile viewport) wide, in headless Chromium (apt-get install chromium), for the intro, the method and
findings pages, every notebook page and the 'use it' pages. Written to book/screenshots/<page>-<width>.png
as small palette PNGs.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no port, no extra
package): the page is loaded at the width, MathJax is waited for, and the whole page is captured
(Page.captureScreenshot beyond the viewport, at the layout's content size).

Usage: make screenshots (after make run); or .ci/screenshots.py --html DIR --out DIR [PAGE ...].
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
OUT = ROOT / "book" / "screenshots"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
MAX_HEIGHT = 16384
"""Chromium's largest capture, in CSS pixels: a longer page is cut there."""


def pages(html: Path) -> list[str]:
    notebooks = sorted(p.stem for p in (html / "notebooks").glob("*.html"))
    return ["intro", "method", "results", *[f"notebooks/{n}" for n in notebooks], "own_model", "own_method"]


class Browser:
    """Headless Chromium on a DevTools pipe: :meth:`call` sends a command and returns its result."""

    def __init__(self, chromium: str, profile: str) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def pipes() -> None:  # the child's fds 3 (commands in) and 4 (replies out)
            os.dup2(to_chrome, 3)
            os.dup2(from_chrome, 4)

        self._process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--no-first-run", "--mute-audio",
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer, self._id = b"", 0
        self.events: list[dict[str, Any]] = []

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        command = {"id": self._id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._write, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait(self, event: str) -> None:
        """Until ``event`` arrives (or has arrived since the last wait)."""
        while not any(e.get("method") == event for e in self.events):
            self.events.append(self._message())
        self.events.clear()

    def close(self) -> None:
        try:
            self.call("Browser.close")
        finally:
            self._process.wait(timeout=30)
            os.close(self._write)
            os.close(self._read)


def shoot(browser: Browser, url: str, size: tuple[int, int], target: Path) -> None:
    """The whole page at ``url``, ``size[0]`` CSS px wide (a mobile viewport below 600), as a palette PNG."""
    target_id = browser.call("Target.createTarget", url="about:blank")["targetId"]
    session = browser.call("Target.attachToTarget", targetId=target_id, flatten=True)["sessionId"]
    width, height = size
    browser.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height, deviceScaleFactor=1,
                 mobile=width < 600)
    browser.call("Page.enable", session)
    browser.call("Page.navigate", session, url=url)
    browser.wait("Page.loadEventFired")
    browser.call("Runtime.evaluate", session, awaitPromise=True, expression=(
        "(window.MathJax && MathJax.startup && MathJax.startup.promise ? MathJax.startup.promise : Promise.resolve())"
        ".then(() => document.fonts.ready).then(() => new Promise(r => setTimeout(r, 300)))"))
    content = browser.call("Page.getLayoutMetrics", session)["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": width, "height": min(max(content["height"], height), MAX_HEIGHT), "scale": 1}
    shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True, clip=clip)
    browser.call("Target.closeTarget", targetId=target_id)
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")
    image.quantize(colors=128).save(target, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=HTML, help="the built book (default book/_build/html)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the PNGs go (default book/screenshots)")
    parser.add_argument("pages", nargs="*", help="pages to shoot, e.g. intro notebooks/03_main_results (default: all)")
    args = parser.parse_args()
    if not (args.html / "intro.html").exists():
        sys.exit("build the book first: make run")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium: apt-get install chromium")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        browser = Browser(chromium, profile)
        try:
            for page in args.pages or pages(args.html):
                for name, size in SIZES.items():
                    target = args.out / f"{page.replace('/', '-')}-{name}.png"
                    shoot(browser, (args.html / f"{page}.html").as_uri(), size, target)
                    print(f"{target} ({target.stat().st_size // 1024} KB)", flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
