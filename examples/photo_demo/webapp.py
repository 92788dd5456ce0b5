"""The producer of the photo demo: a small web app that hands its slow work to Sleipnir.

    POST /upload              body: a PNG or JPEG image (Content-Type image/png or image/jpeg)
    POST /reports/{month}     month as YYYY-MM; query ?seconds= how slow the report is
    GET  /jobs/{id}           where a job stands: state, attempt, result
    GET  /healthz

An upload is stored under ``$PHOTO_DEMO_DIR/uploads/`` and a ``resize`` job is
enqueued with ``resize.delay_async(name)`` from this process; the answer is
``202 Accepted`` with the job's status URL, in a few milliseconds, while the
resizing happens in the worker processes. The same holds for the monthly report,
which takes seconds.

    python webapp.py --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import uuid
from typing import Any

import uvicorn
from photo_tasks import UPLOADS, app, monthly_report, resize
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from sleipnir import SleipnirError

MAX_UPLOAD = 10 * 1024 * 1024
KINDS = {"image/png": (b"\x89PNG\r\n\x1a\n", ".png"), "image/jpeg": (b"\xff\xd8\xff", ".jpg")}
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def accepted(job_id: str) -> JSONResponse:
    url = f"/jobs/{job_id}"
    return JSONResponse(
        {"id": job_id, "status_url": url}, status_code=202, headers={"Location": url}
    )


def store(name: str, data: bytes) -> None:
    """Write the upload under a temporary name and rename it: a job never sees half a file."""
    path = UPLOADS / name
    tmp = path.with_name(f".{name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def upload(request: Request) -> JSONResponse:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in KINDS:
        return error(415, f"send image/png or image/jpeg, not {kind or 'nothing'!r}")
    length = request.headers.get("content-length") or "0"
    if not length.isdigit():
        return error(400, f"Content-Length {length!r} is not a number")
    if int(length) > MAX_UPLOAD:
        return error(413, f"an upload is at most {MAX_UPLOAD} bytes")
    data = await request.body()
    magic, suffix = KINDS[kind]
    if len(data) > MAX_UPLOAD:
        return error(413, f"an upload is at most {MAX_UPLOAD} bytes")
    if not data.startswith(magic):
        return error(422, f"the body is not what {kind} says it is")
    name = f"{uuid.uuid4().hex}{suffix}"  # our name, never the client's: no path tricks
    await asyncio.to_thread(store, name, data)
    try:
        handle = await resize.delay_async(name)
    except SleipnirError as exc:  # the broker is down: say so, keep nothing half-done
        (UPLOADS / name).unlink(missing_ok=True)
        return error(503, f"could not queue the job: {exc}")
    return accepted(handle.id)


async def report(request: Request) -> JSONResponse:
    month = request.path_params["month"]
    if not MONTH.match(month):
        return error(422, f"month must be YYYY-MM, not {month!r}")
    try:
        seconds = float(request.query_params.get("seconds", "3"))
    except ValueError:
        return error(422, "seconds must be a number")
    if not 0 <= seconds <= 60:
        return error(422, "seconds must be between 0 and 60")
    try:
        handle = await monthly_report.delay_async(month, seconds=seconds)
    except SleipnirError as exc:
        return error(503, f"could not queue the job: {exc}")
    return accepted(handle.id)


async def job(request: Request) -> JSONResponse:
    job_id = request.path_params["job_id"]
    state = await asyncio.to_thread(app.status, job_id)
    body: dict[str, Any] = {"id": job_id, "state": state.value}
    record = await asyncio.to_thread(app.results.get, job_id)
    if record is not None:
        body["attempt"] = record.attempt
        if record.value is not None:
            body["result"] = json.loads(record.value)
        if record.error:
            body["error"] = record.error.splitlines()[0]
    return JSONResponse(body, status_code=404 if state == "unknown" else 200)


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


web = Starlette(
    routes=[
        Route("/upload", upload, methods=["POST"]),
        Route("/reports/{month}", report, methods=["POST"]),
        Route("/jobs/{job_id}", job),
        Route("/healthz", healthz),
    ],
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    UPLOADS.mkdir(parents=True, exist_ok=True)
    uvicorn.run(web, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
