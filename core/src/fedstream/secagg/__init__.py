"""Secure aggregation (Bonawitz et al., CCS 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning"), complete graph of pairwise masks, with dropout recovery and
the paper's actively secure variant (section 6: signed keys, a consistency check of the
survivors): the aggregator learns the sum of the survivors' quantized updates and nothing about
any single one, also when it deviates from the protocol, within the limits ``signing`` states.

Pure protocol code, no sockets: ``client.ClientSession`` is one agent's side of one round,
``server.ServerSession`` the aggregator's. Cryptographic primitives come from ``cryptography``
(``crypto``); Shamir secret sharing (``shamir``), the mask generator (``prg``) and the fixed-point
ring (``quantize``) are protocol level; signatures and certificate checks (``signing``) are
``cryptography``'s over the agents' TLS identities.
"""

from __future__ import annotations

# Elements of the ring Z_2^64 (numpy uint64 wraps) and the fixed point they hold.
RING_BITS = 64
FRACTION_BITS = 24
# X25519 keys, mask seeds and the secrets Shamir shares are all this long.
KEY_BYTES = 32
