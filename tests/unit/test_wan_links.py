"""The emulated links' vocabulary: link specs as bench/wan.py takes them."""

from __future__ import annotations

import pytest

from fedstream_testing.wan_links import LinkShape


def test_a_link_spec_reads_rate_round_trip_and_cuts():
    link = LinkShape.parse("100/40/cut12")

    assert link == LinkShape(100.0, 40.0, 12.0)
    assert link.spec == "100/40/cut12" and link.bytes_per_s == 12.5e6
    assert link.label == "100 Mbit/s, 40 ms RTT, cut every 12 s"
    assert LinkShape.parse(" 20/150 ") == LinkShape(20.0, 150.0, None)


@pytest.mark.parametrize("text", ["100", "100/", "fast/40", "100/40/12", "100/40/cut", "-1/40"])
def test_a_malformed_link_spec_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match="RATE_MBIT/RTT_MS"):
        LinkShape.parse(text)
