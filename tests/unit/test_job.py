"""The job's wire format, its ids and the states a job reports."""

from __future__ import annotations

import threading

import pytest

from sleipnir import DecodeError, EncodeError, JobState, PayloadTooLargeError
from sleipnir.job import Job, decode_job, encode_job, new_job_id

CROCKFORD = set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def test_a_job_survives_its_wire_format() -> None:
    job = Job(
        id="01",
        task="t",
        args=[1, "a", [2], None, 1.5],
        kwargs={"k": {"n": [True]}},
        queue="q",
        priority=3,
        enqueued_at=1.5,
        eta_at=2.5,
        headers={"trace": "x"},
    )
    body = encode_job(job)
    assert isinstance(body, bytes)
    assert decode_job(body) == job


def test_a_minimal_job_survives_its_wire_format_with_its_defaults() -> None:
    job = Job(id="01", task="t", enqueued_at=0.0)
    decoded = decode_job(encode_job(job))
    assert decoded == job
    assert (decoded.args, decoded.kwargs, decoded.queue, decoded.priority) == ([], {}, "default", 0)
    assert decoded.eta_at is None


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\x80\x81",
        b"[]",
        b"null",
        b'{"id": "x"}',
        b'{"id": 1, "task": "t", "enqueued_at": 0}',
        b'{"id": "x", "task": "t", "enqueued_at": 0, "args": {}}',
    ],
)
def test_bytes_that_are_not_a_job_raise_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="undecodable job"):
        decode_job(body)


def test_encode_refuses_what_json_cannot_carry() -> None:
    job = Job(id="01", task="t", args=[object()], enqueued_at=0.0)
    with pytest.raises(EncodeError, match="arguments of t are not JSON-serialisable"):
        encode_job(job)


def test_encode_refuses_a_body_over_the_limit() -> None:
    job = Job(id="01", task="t", args=["x" * 100], enqueued_at=0.0)
    size = len(encode_job(job))
    assert encode_job(job, max_payload_bytes=size) == encode_job(job)  # the limit itself is fine
    with pytest.raises(PayloadTooLargeError) as info:
        encode_job(job, max_payload_bytes=size - 1)
    assert (info.value.size, info.value.limit) == (size, size - 1)
    assert isinstance(info.value, EncodeError)


def test_job_states_are_the_documented_strings() -> None:
    documented = ["queued", "scheduled", "running", "retrying", "succeeded", "failed", "cancelled"]
    for value in documented:
        assert JobState(value) == value
    assert {s.value for s in JobState} == {*documented, "unknown"}
    assert {s for s in JobState if s.finished} == {
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.CANCELLED,
    }


def test_new_job_ids_are_26_crockford_characters_in_creation_order() -> None:
    ids = [new_job_id() for _ in range(2000)]
    assert all(len(i) == 26 and set(i) <= CROCKFORD for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_new_job_ids_are_unique_across_threads() -> None:
    found: list[list[str]] = [[] for _ in range(4)]

    def make(out: list[str]) -> None:
        out.extend(new_job_id() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(out,)) for out in found]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in found for i in out]
    assert len(set(every)) == len(every) == 8000
    for out in found:
        assert out == sorted(out)


def test_a_forked_child_does_not_repeat_its_parents_random_bits() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send 50 ids, leave at once
        os.close(read)
        os.write(write, " ".join(new_job_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    mine = [new_job_id() for _ in range(50)]
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    child = b"".join(chunks).decode().split()
    assert len(child) == 50
    # The last 16 characters are random bits only: a generator the child inherited
    # unchanged would write the very same ones.
    assert not {i[-16:] for i in mine} & {i[-16:] for i in child}
