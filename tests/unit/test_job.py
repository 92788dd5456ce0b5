from __future__ import annotations

import pytest

from sleipnir import DecodeError
from sleipnir.job import Job, decode_job, encode_job


def test_a_job_survives_its_wire_format() -> None:
    job = Job(id="01", task="t", args=[1, "a", [2]], kwargs={"k": None}, queue="q",
              priority=3, enqueued_at=1.5, eta_at=2.5, headers={"trace": "x"})  # fmt: skip
    assert decode_job(encode_job(job)) == job


@pytest.mark.parametrize(
    "body", [b"", b"\x80\x81", b"[]", b'{"id": "x"}', b'{"id": 1, "task": "t", "enqueued_at": 0}']
)
def test_bytes_that_are_not_a_job_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="undecodable job"):
        decode_job(body)
