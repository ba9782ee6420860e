"""Screenshots of the built book's first screen, as a reader sees it: desktop (1280 px) and phone (390 px)
wide, in headless Chromium (apt-get install chromium), for the intro, the findings page, every notebook
page and the 'use it' pages. Written to book/screenshots/<page>-<width>.png as small palette PNGs.

Usage: make screenshots (after make run).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "book" / "_build" / "html"
OUT = ROOT / "book" / "screenshots"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}


def pages() -> list[str]:
    notebooks = sorted(p.stem for p in (HTML / "notebooks").glob("*.html"))
    return ["intro", "results", *[f"notebooks/{n}" for n in notebooks], "own_model", "own_method"]


def shoot(page: str, size: tuple[int, int], target: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile, tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "shot.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--disable-background-networking", "--disable-component-update", "--no-first-run",
                        f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                        "--virtual-time-budget=8000", f"--screenshot={raw}", (HTML / f"{page}.html").as_uri()],
                       check=True, capture_output=True, timeout=120)
        Image.open(raw).convert("RGB").quantize(colors=128).save(target, optimize=True)


def main() -> None:
    if not (HTML / "intro.html").exists():
        sys.exit("build the book first: make run")
    OUT.mkdir(parents=True, exist_ok=True)
    for page in pages():
        for name, size in SIZES.items():
            target = OUT / f"{page.replace('/', '-')}-{name}.png"
            shoot(page, size, target)
            print(f"{target.relative_to(ROOT)} ({target.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
