"""The tasks of the photo demo: resize an uploaded image, build a monthly report.

Both the producer (``webapp.py``) and the workers (``sleipnir run photo_tasks:app``)
import this module. ``SLEIPNIR_BROKER`` names the broker and ``PHOTO_DEMO_DIR`` the
directory holding ``uploads/`` (what the producer stored) and ``output/`` (what the
workers make).

Delivery is at least once: a job whose worker was killed runs again. So every file
is written under a temporary name and renamed into place: a second run replaces
the first's output whole, and a run cut short leaves no half-written image.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from PIL import Image, ImageStat

from sleipnir import App, Context

app = App.from_env()

DATA = Path(os.environ.get("PHOTO_DEMO_DIR", "photo-demo-data")).absolute()
UPLOADS = DATA / "uploads"
OUTPUT = DATA / "output"
WIDTHS = (480, 240, 96)
"""The sizes made of each upload: a web view, a preview, a thumbnail."""


def _replace(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


@app.task(queue="demo-images", retries=3)
def resize(name: str) -> dict[str, object]:
    """Make a JPEG of each width in WIDTHS from ``uploads/<name>``; return their names."""
    source = UPLOADS / name
    OUTPUT.mkdir(parents=True, exist_ok=True)
    made = []
    with Image.open(source) as image:
        image.load()
        rgb = image.convert("RGB")
    for width in WIDTHS:
        copy = rgb.copy()
        copy.thumbnail((width, width), Image.Resampling.LANCZOS)
        out = OUTPUT / f"{Path(name).stem}-{width}.jpg"
        _replace(out, partial(copy.save, format="JPEG", quality=85))
        made.append(out.name)
    return {"upload": name, "size": list(rgb.size), "outputs": made}


@app.task(queue="demo-reports", retries=1)
def monthly_report(ctx: Context, month: str, seconds: float = 3.0) -> dict[str, object]:
    """A slow job: sums up the month's uploads into ``output/report-<month>.json``.

    The ``seconds`` of waiting stand in for the slow queries a real report runs;
    the point is that the web request that asked for it did not wait. It reports
    its progress (the dashboard's "Running jobs" shows it) and stops if cancelled.
    """
    began = time.monotonic()
    uploads = sorted(UPLOADS.glob("*.*"))
    total_bytes = 0
    brightness = []
    sample = uploads[:50]  # a sample: the mean brightness of the first 50
    steps = len(sample) + 10
    for i, path in enumerate(sample, 1):
        total_bytes += path.stat().st_size
        with Image.open(path) as image:
            brightness.append(ImageStat.Stat(image.convert("L")).mean[0])
        ctx.progress(i, steps)
    left = max(0.0, seconds - (time.monotonic() - began))
    for i in range(10):  # the "slow queries", in ten parts
        ctx.progress(len(sample) + i, steps)
        ctx.wait(left / 10)
    ctx.progress(steps, steps)
    report = {
        "month": month,
        "uploads": len(uploads),
        "sampled_bytes": total_bytes,
        "mean_brightness": round(sum(brightness) / len(brightness), 1) if brightness else None,
    }
    OUTPUT.mkdir(parents=True, exist_ok=True)
    out = OUTPUT / f"report-{month}.json"
    _replace(out, lambda p: p.write_text(json.dumps(report, indent=1)))
    return {"month": month, "outputs": [out.name]}
