"""The pieces of resumable transfers that need no server: chunks cut from an offset, a receiver
that continues from one, the upload id, and the agent's record of confirmed uploads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.errors import BadOffset
from fedstream.tensors import ChunkReceiver, FlatBuffer, crc32c, iter_chunks, iter_chunks_from
from fedstream.transfer import upload_id_of
from fedstream_agent.transfers import KEEP_CONFIRMED, ConfirmedUploads
from fedstream_testing.helpers import buffers_of, layout_of, random_model


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 50), chunk=st.integers(1, 700), cut=st.floats(0, 1))
def test_an_upload_resumed_at_any_offset_rebuilds_the_same_bytes(seed, chunk, cut):
    model = random_model(seed, scale=2)
    layout = layout_of(model)
    whole = list(iter_chunks(layout, buffers_of(layout, model), chunk))
    start = whole[int(cut * (len(whole) - 1))].offset  # where the receiver got to before the cut
    first = FlatBuffer(layout)
    receiver = ChunkReceiver(layout, first.write)
    for c in whole:
        if c.offset >= start:
            break
        receiver.accept(c.offset, c.data, c.crc32c)

    resumed = ChunkReceiver(layout, first.write, start)
    rest = list(iter_chunks_from(layout, buffers_of(layout, model), start, chunk))
    for c in rest:
        resumed.accept(c.offset, c.data, c.crc32c)
    resumed.finish()

    assert bytes(first.data) == b"".join(bytes(c.data) for c in whole)
    assert all(c.crc32c == crc32c(c.data) and 0 < len(c.data) <= chunk for c in rest)
    assert rest[0].offset == start


def test_a_resume_offset_outside_the_layout_is_refused():
    model = random_model(1)
    layout = layout_of(model)
    with pytest.raises(BadOffset):
        ChunkReceiver(layout, lambda *_: None, layout.total_bytes + 1)
    with pytest.raises(BadOffset):
        list(iter_chunks_from(layout, buffers_of(layout, model), layout.total_bytes + 1))
    assert list(iter_chunks_from(layout, buffers_of(layout, model), layout.total_bytes)) == []


def test_the_upload_id_is_the_same_for_the_same_update_only():
    a, b = random_model(1), random_model(2)
    la = layout_of(a)
    assert upload_id_of(la, buffers_of(la, a)) == upload_id_of(la, buffers_of(la, a))
    assert upload_id_of(la, buffers_of(la, a)) != upload_id_of(la, buffers_of(la, b))
    assert len(upload_id_of(la, buffers_of(la, a))) <= 128


def test_confirmed_uploads_survive_a_restart_and_stay_bounded(tmp_path):
    path = tmp_path / "identity" / "confirmed-uploads.json"
    confirmed = ConfirmedUploads(path)
    for r in range(KEEP_CONFIRMED + 5):
        confirmed.add(("run-1", r))

    again = ConfirmedUploads(path)

    assert ("run-1", KEEP_CONFIRMED + 4) in again and ("run-1", 4) not in again
    assert ("run-1", 5) in again and ("run-2", 5) not in again
    path.write_text("{not json")
    assert ("run-1", 5) not in ConfirmedUploads(path)  # an unreadable file is not a reason to stop
