"""Secure aggregation against a malicious aggregator, in process: every agent refuses a roster
entry whose keys were substituted, whose certificate names another agent, comes from another
authority or expired, an agent the scheduler did not select and a shrunk roster, before it
shares any key; and it reveals no share unless at least the threshold of survivors signed the
same survivors it did (a server showing agents different survivors gets nothing)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from fedstream.errors import InvalidArgument, PermissionDenied, ProtocolViolation
from fedstream.pki import Identity, TlsIdentity, cert_pem, key_pem
from fedstream.privacy import SecureAggregationSpec
from fedstream.secagg.client import ClientSession, ClientStep
from fedstream.secagg.crypto import KeyPair
from fedstream.secagg.messages import AdvertiseKeys, Roster, SurvivorSignature, UnmaskRequest
from fedstream.secagg.server import ServerSession
from fedstream.secagg.signing import Credentials, Signer, Trust, signature_valid
from fedstream_testing.secagg import Authority

SPEC = SecureAggregationSpec(max_dropout=0.4, clip_range=1.0, step_timeout_s=5.0)
IDS = [f"agent-{i}" for i in range(5)]
AUTHORITY = Authority()
CREDENTIALS = AUTHORITY.all([*IDS, "outsider"])


def sessions(ids=IDS, participants=IDS, credentials=CREDENTIALS, round_id="round-1"):
    return {a: ClientSession("run-1", round_id, a, SPEC, credentials[a], participants) for a in ids}


def advertised(clients, participants=IDS) -> tuple[ServerSession, Roster]:
    server = ServerSession("run-1", "round-1", participants, SPEC)
    for c in clients.values():
        server.advertise(c.advertise())
    return server, server.close_advertise()


def with_entry(roster: Roster, entry: AdvertiseKeys) -> Roster:
    entries = tuple(entry if e.agent_id == entry.agent_id else e for e in roster.entries)
    return Roster(entries, roster.participants, roster.threshold)


def refused_by_all(clients, roster, victim: str, words: str) -> None:
    """Every agent but ``victim`` refuses ``roster`` naming ``victim`` and why, sharing nothing."""
    for a, c in clients.items():
        if a == victim:
            continue
        with pytest.raises(ProtocolViolation, match=f"roster entry '{victim}' refused: .*{words}"):
            c.share_keys(roster)
        assert c.step is ClientStep.ADVERTISED and not c._held


def test_a_substituted_key_breaks_the_signature_and_every_agent_refuses_the_roster():
    clients = sessions()
    _, roster = advertised(clients)
    mine = KeyPair.generate()  # the aggregator's own key, in place of agent-1's
    real = next(e for e in roster.entries if e.agent_id == "agent-1")

    forged = with_entry(roster, dataclasses.replace(real, s_pk=mine.public))

    refused_by_all(clients, forged, "agent-1", "signature over its keys does not verify")


def test_keys_signed_with_another_agent_s_certificate_are_refused():
    clients = sessions()
    _, roster = advertised(clients)
    # agent-2's identity signs keys advertised under agent-1's name (a Sybil made of a real site).
    impostor = ClientSession("run-1", "round-1", "agent-1", SPEC, CREDENTIALS["agent-2"], IDS).advertise()

    refused_by_all(clients, with_entry(roster, impostor), "agent-1", "is for agent 'agent-2'")


def test_a_certificate_of_another_authority_is_refused():
    clients = sessions()
    _, roster = advertised(clients)
    rogue = Authority()  # same tenant name, another CA key: what an aggregator could make itself
    fake = ClientSession("run-1", "round-1", "agent-1", SPEC, rogue.credentials("agent-1"), IDS).advertise()

    refused_by_all(clients, with_entry(roster, fake), "agent-1", "not issued by tenant 't1''s authority")


def test_an_expired_certificate_is_refused():
    clients = sessions()
    _, roster = advertised(clients)
    stale = ClientSession("run-1", "round-1", "agent-1", SPEC, AUTHORITY.expired("agent-1"), IDS).advertise()

    refused_by_all(clients, with_entry(roster, stale), "agent-1", "the certificate expired at")


def test_keys_signed_for_another_round_are_refused():
    clients = sessions()
    _, roster = advertised(clients)
    replayed = sessions(["agent-1"], round_id="round-0")["agent-1"].advertise()

    refused_by_all(clients, with_entry(roster, replayed), "agent-1", "signed for another round")


def test_an_agent_the_scheduler_did_not_select_cannot_join_the_roster():
    clients = sessions()
    _, roster = advertised(clients)
    outsider = ClientSession("run-1", "round-1", "outsider", SPEC, CREDENTIALS["outsider"], [*IDS, "outsider"])
    padded = Roster((*roster.entries, outsider.advertise()), roster.participants, roster.threshold)

    with pytest.raises(ProtocolViolation, match="names agent 'outsider', which the scheduler did not select"):
        clients["agent-0"].share_keys(padded)


@pytest.mark.parametrize(("keep", "participants", "threshold"), [
    (1, 1, 1),  # this agent alone: its input would be the "sum"
    (2, 5, 3),  # fewer entries than the threshold
    (3, 3, 2),  # a participant count the scheduler did not choose
])
def test_a_shrunk_roster_is_refused(keep, participants, threshold):
    clients = sessions()
    _, roster = advertised(clients)

    shrunk = Roster(roster.entries[:keep], participants, threshold)

    with pytest.raises(ProtocolViolation, match="does not follow the round's settings"):
        clients["agent-0"].share_keys(shrunk)
    assert clients["agent-0"].step is ClientStep.ADVERTISED


def _uploaded() -> tuple[ServerSession, dict[str, ClientSession]]:
    """A round where every agent shared keys and uploaded (the masks themselves do not matter)."""
    clients = sessions()
    server, roster = advertised(clients)
    for c in clients.values():
        server.share_keys(c.share_keys(roster))
    server.close_share()
    for a, c in clients.items():
        c.receive_shares(server.deliver(a))
        server.uploaded(a, 1)
    return server, clients


@pytest.mark.parametrize("forwarded", ["all", "matching"])
def test_different_survivors_shown_to_different_agents_reveal_no_share(forwarded):
    _, clients = _uploaded()
    everyone = tuple(IDS)  # U3 as agent-0 and agent-1 are told
    without_4 = tuple(IDS[:4])  # U3 as agent-2 and agent-3 are told: agent-4 "dropped"
    shown = {"agent-0": everyone, "agent-1": everyone, "agent-2": without_4, "agent-3": without_4}
    signatures = {a: clients[a].confirm(u3) for a, u3 in shown.items()}

    for a, u3 in shown.items():
        sent = [s for b, s in signatures.items() if forwarded == "all" or shown[b] == u3]
        key_of = tuple(sorted(set(IDS) - set(u3)))
        request = UnmaskRequest(seed_of=u3, key_of=key_of, signatures=tuple(sent))
        words = "is not over the survivors this agent signed" if forwarded == "all" else "below the threshold 3"
        with pytest.raises(ProtocolViolation, match=f"refused to unmask: .*{words}"):
            clients[a].unmask(request)
        assert clients[a].step is ClientStep.CONFIRMED  # nothing revealed


def test_an_unmask_request_for_other_survivors_than_signed_is_refused():
    server, clients = _uploaded()
    survivors = server.close_upload()
    for c in clients.values():
        server.confirm(c.confirm(survivors))
    request = server.close_consistency()

    changed = UnmaskRequest(seed_of=tuple(IDS[:4]), key_of=(IDS[4],), signatures=request.signatures)
    with pytest.raises(ProtocolViolation, match="not the ones this agent signed"):
        clients["agent-0"].unmask(changed)
    duplicated = dataclasses.replace(request, signatures=(*request.signatures, request.signatures[0]))
    with pytest.raises(ProtocolViolation, match="distinct survivors"):
        clients["agent-0"].unmask(duplicated)
    assert {s.owner for s in clients["agent-0"].unmask(request).seeds} == set(IDS)


def test_a_client_signs_only_a_list_of_survivors_that_can_unmask():
    _, clients = _uploaded()

    with pytest.raises(ProtocolViolation, match="include this agent"):
        clients["agent-0"].confirm(IDS[1:])
    with pytest.raises(ProtocolViolation, match="number at least the threshold 3"):
        clients["agent-0"].confirm(IDS[:2])
    with pytest.raises(ProtocolViolation, match="distinct agents that shared keys"):
        clients["agent-0"].confirm([*IDS[:3], "outsider"])
    clients["agent-0"].confirm(IDS)
    with pytest.raises(ProtocolViolation, match="cannot confirm the survivors in step confirmed"):
        clients["agent-0"].confirm(IDS)


def test_an_honest_aggregator_with_the_tenant_s_authority_refuses_what_agents_would():
    clients = sessions()
    server = ServerSession("run-1", "round-1", IDS, SPEC)
    trust = CREDENTIALS["agent-0"].trust
    good = clients["agent-1"].advertise()

    with pytest.raises(InvalidArgument, match="signature over the advertised keys does not verify"):
        server.advertise(dataclasses.replace(good, c_pk=KeyPair.generate().public), trust)
    with pytest.raises(PermissionDenied, match="is for agent 'agent-2'"):
        server.advertise(dataclasses.replace(good, certificate=CREDENTIALS["agent-2"].signer.certificate), trust)
    with pytest.raises(InvalidArgument, match=r"not a DER X\.509 certificate"):
        server.advertise(dataclasses.replace(good, certificate=b"not a certificate"), trust)
    assert server.figures()["advertised_keys"] == 0
    server.advertise(good, trust)
    for a in ("agent-0", "agent-2", "agent-3", "agent-4"):
        server.advertise(clients[a].advertise(), trust)
    roster = server.close_advertise()
    for c in clients.values():
        server.share_keys(c.share_keys(roster))
    server.close_share()
    for a, c in clients.items():
        c.receive_shares(server.deliver(a))
        server.uploaded(a, 1)
    survivors = server.close_upload()
    other = clients["agent-1"].confirm(IDS[:4])  # over another list
    with pytest.raises(InvalidArgument, match="signature over the survivors does not verify"):
        server.confirm(other, trust)
    with pytest.raises(PermissionDenied, match="'outsider' is not a survivor"):
        server.confirm(SurvivorSignature("outsider", b"x"), trust)
    server.confirm(clients["agent-0"].confirm(survivors), trust)
    assert server.figures()["signed_survivors"] == 1


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_identities_with_rsa_and_ed25519_keys_sign_and_verify(kind):
    key = rsa.generate_private_key(65537, 2048) if kind == "rsa" else ed25519.Ed25519PrivateKey.generate()
    ca = AUTHORITY.ca
    cert = ca.issue(key.public_key(), Identity("t1", "agent", "agent-9"), dt.timedelta(hours=1))  # type: ignore[arg-type]
    creds = Credentials.of(TlsIdentity(ca.cert_pem, cert_pem(cert), key_pem(key)))  # type: ignore[arg-type]

    public = creds.trust.agent_key(creds.signer.certificate, "agent-9")

    assert signature_valid(public, creds.signer.sign(b"keys"), b"keys")
    assert not signature_valid(public, creds.signer.sign(b"keys"), b"other keys")


def test_a_trust_of_another_tenant_refuses_this_tenant_s_agents():
    other = Trust(AUTHORITY.ca.cert_pem, "t2")

    with pytest.raises(PermissionDenied, match="not agent 'agent-0' of tenant 't2'"):
        other.agent_key(CREDENTIALS["agent-0"].signer.certificate, "agent-0")
    with pytest.raises(ValueError, match="PEM"):
        Signer(b"not a key", b"")
