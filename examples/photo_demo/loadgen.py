"""The load generator of the photo demo: makes images with Pillow and uploads them at once.

Each image is a few coloured shapes on a gradient, numbered, 800x600, every other
one PNG and JPEG. All uploads start together over ``concurrency`` connections;
the time of each request, from its sending to the 202, is kept for the summary.
"""

from __future__ import annotations

import asyncio
import io
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image, ImageDraw

SIZE = (800, 600)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the producer said to one request."""

    status: int
    job_id: str | None
    status_url: str | None
    seconds: float
    error: str | None = None


def make_image(number: int, rng: random.Random) -> tuple[bytes, str]:
    """One generated image, encoded; returns (bytes, content type)."""
    gradient = Image.linear_gradient("L").resize(SIZE).rotate(rng.randrange(360))
    tint = tuple(rng.randrange(256) for _ in range(3))
    image = Image.merge("RGB", [gradient.point(lambda v, t=t: (v + t) % 256) for t in tint])
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.randrange(SIZE[0]), rng.randrange(SIZE[1])
        r = rng.randrange(20, 140)
        fill = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=fill)
    draw.text((20, 20), f"photo #{number}", fill=(255, 255, 255), font_size=48)
    out = io.BytesIO()
    if number % 2:
        image.save(out, "PNG", compress_level=1)
        return out.getvalue(), "image/png"
    image.save(out, "JPEG", quality=90)
    return out.getvalue(), "image/jpeg"


def make_images(count: int, seed: int = 7) -> list[tuple[bytes, str]]:
    rng = random.Random(seed)
    return [make_image(n, rng) for n in range(1, count + 1)]


async def post(
    client: httpx.AsyncClient, path: str, content: bytes | None, kind: str | None
) -> Answer:
    headers = {"Content-Type": kind} if kind else {}
    began = time.perf_counter()
    try:
        response = await client.post(path, content=content, headers=headers)
    except httpx.HTTPError as exc:
        return Answer(0, None, None, time.perf_counter() - began, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - began
    body = response.json() if response.headers.get("content-type") == "application/json" else {}
    if response.status_code != 202:
        return Answer(response.status_code, None, None, seconds, body.get("error", response.text))
    return Answer(202, body["id"], body["status_url"], seconds)


async def upload_all(
    base_url: str,
    images: list[tuple[bytes, str]],
    reports: list[str],
    *,
    concurrency: int = 32,
    report_seconds: float = 3.0,
    on_answer: Callable[[Answer], None] | None = None,
) -> tuple[list[Answer], list[Answer]]:
    """Send every upload and report request at once; return (upload answers, report answers)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0) as client:
        gate = asyncio.Semaphore(concurrency)  # so that a request is timed from its sending,
        # not from when it began to wait for a free connection

        async def one(path: str, content: bytes | None, kind: str | None) -> Answer:
            async with gate:
                answer = await post(client, path, content, kind)
            if on_answer is not None:
                on_answer(answer)
            return answer

        report_calls = [
            one(f"/reports/{month}?seconds={report_seconds}", None, None) for month in reports
        ]
        upload_calls = [one("/upload", data, kind) for data, kind in images]
        answers = await asyncio.gather(*report_calls, *upload_calls)
    return list(answers[len(reports) :]), list(answers[: len(reports)])


async def fetch_states(
    base_url: str, urls: list[str], concurrency: int = 16
) -> list[dict[str, Any]]:
    """GET every status URL from the producer; return the bodies."""
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        responses = await asyncio.gather(*(client.get(url) for url in urls))
    return [r.json() for r in responses]
