"""The building blocks of secure aggregation: Shamir sharing, the mask generator, the fixed-point
ring and the sealing of shares."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.errors import InvalidArgument, SecureAggregationFailed
from fedstream.secagg import FRACTION_BITS, prg, shamir
from fedstream.secagg.crypto import KeyPair, agree, context, open_sealed, public_of, seal
from fedstream.secagg.quantize import check_ring, dequantize, error_bound, quantize


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 9), data=st.data())
def test_any_threshold_of_shares_reconstructs_and_fewer_do_not(n, data):
    t = data.draw(st.integers(1, n))
    secret = os.urandom(32)
    shares = shamir.split(secret, list(range(1, n + 1)), t)

    for xs in itertools.islice(itertools.combinations(sorted(shares), t), 20):
        assert shamir.reconstruct({x: shares[x] for x in xs}) == secret
    if t > 1:
        fewer = {x: shares[x] for x in sorted(shares)[: t - 1]}
        assert shamir.reconstruct(fewer) != secret


def test_shares_refuse_malformed_wire_forms():
    with pytest.raises(InvalidArgument, match="must be 66 bytes"):
        shamir.from_bytes(b"\x01" * 65)
    with pytest.raises(InvalidArgument, match="below the field's prime"):
        shamir.from_bytes(b"\xff" * 66)
    assert shamir.from_bytes(shamir.to_bytes(12345)) == 12345


@settings(max_examples=30, deadline=None)
@given(offset=st.integers(0, 100), count=st.integers(0, 60), cut=st.integers(0, 60))
def test_a_mask_chunk_at_an_offset_is_the_same_slice_of_the_whole_stream(offset, count, cut):
    seed = bytes(range(32))
    whole = prg.mask(seed, 0, offset + count)
    cut = min(cut, count)

    left = prg.mask(seed, offset, cut)
    right = prg.mask(seed, offset + cut, count - cut)

    assert np.array_equal(np.concatenate([left, right]), whole[offset:])
    assert whole.dtype == np.uint64


def test_masks_of_different_seeds_differ():
    assert not np.array_equal(prg.mask(bytes(32), 0, 8), prg.mask(bytes([1] * 32), 0, 8))


def test_quantization_round_trips_within_half_a_unit_and_clips():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.3, size=10_000)

    back = dequantize(quantize(x, 3, clip_range=1.0)) / 3

    clipped = np.clip(x, -1.0, 1.0)
    assert np.max(np.abs(back - clipped)) <= 0.5 / 2**FRACTION_BITS / 3 + 1e-15
    assert back.max() <= 1.0 and back.min() >= -1.0


def test_the_quantization_error_of_a_weighted_mean_is_within_its_bound():
    rng = np.random.default_rng(2)
    changes = [rng.normal(0, 0.05, size=50_000) for _ in range(10)]
    weights = [int(w) for w in rng.integers(1, 500, size=10)]
    ring = np.zeros(50_000, dtype=np.uint64)
    for change, w in zip(changes, weights, strict=True):
        ring += quantize(change, w, clip_range=1.0)

    mean = dequantize(ring) / sum(weights)

    exact = sum(w * c for w, c in zip(weights, changes, strict=True)) / sum(weights)
    err = np.abs(mean - exact)
    assert err.max() <= error_bound(sum(weights), 10) + 1e-15
    # Measured: max 8.9e-11, RMS 2.3e-11 at total weight 2311 (bound 1.3e-10): each rounding is
    # off by at most 2^-25, divided by the total weight.
    assert float(np.sqrt(np.mean(err**2))) <= error_bound(sum(weights), 10)


def test_negative_values_survive_the_ring_as_twos_complement():
    assert dequantize(quantize(np.array([-0.5, 0.25, -1e-9]), 1, 1.0)).tolist() == [-0.5, 0.25, -0.0]


def test_non_finite_changes_and_bad_weights_are_refused():
    with pytest.raises(InvalidArgument, match="non-finite"):
        quantize(np.array([np.nan]), 1, 1.0)
    with pytest.raises(InvalidArgument, match="weight must be an integer"):
        quantize(np.array([0.0]), 0, 1.0)
    with pytest.raises(InvalidArgument, match="weight must be an integer"):
        quantize(np.array([0.0]), True, 1.0)  # type: ignore[arg-type]


def test_the_ring_check_refuses_a_sum_that_could_wrap():
    check_ring(2**38, 1.0)
    with pytest.raises(SecureAggregationFailed, match="the ring would overflow"):
        check_ring(2**39, 1.0)


def test_agreement_is_symmetric_and_bound_to_its_context():
    a, b = KeyPair.generate(), KeyPair.generate()
    info = context("run", "round", "mask", "a", "b")

    assert agree(a.secret, b.public, info) == agree(b.secret, a.public, info)
    assert agree(a.secret, b.public, info) != agree(
        a.secret, b.public, context("run", "round2", "mask", "a", "b")
    )
    assert public_of(a.secret) == a.public


def test_a_sealed_share_opens_only_under_its_key_and_associated_data():
    key = os.urandom(32)
    sealed = seal(key, b"share", b"run|round|a|b")

    assert open_sealed(key, sealed, b"run|round|a|b") == b"share"
    assert open_sealed(key, sealed, b"run|round|a|c") is None
    assert open_sealed(os.urandom(32), sealed, b"run|round|a|b") is None
    assert open_sealed(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"run|round|a|b") is None
    assert open_sealed(key, b"short", b"") is None


def test_context_parts_cannot_be_shifted_between_fields():
    assert context("r", "1", "ab", "c") != context("r", "1", "a", "bc")


def test_a_degenerate_peer_key_is_refused():
    with pytest.raises(InvalidArgument, match="not a usable X25519 key"):
        agree(KeyPair.generate().secret, bytes(32), b"info")
