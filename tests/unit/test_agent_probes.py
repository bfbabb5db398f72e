"""The agent's diagnostics without a socket: endpoints parsed, a server certificate judged
against the configured authority, repeated retry lines kept quiet, the protocol policy."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
from cryptography import x509

from fedstream.errors import IncompatibleProtocol
from fedstream.pki import CertificateAuthority, Identity
from fedstream.protocol import PROTOCOL_VERSION, accepted_range, check_agent_protocol
from fedstream_agent.probes import ProbeFailed, QuietRepeats, check_server_certificate, split_endpoint

HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("scheduler.example:50051", ("scheduler.example", 50051)),
    ("dns:///scheduler.example:443", ("scheduler.example", 443)),
    ("[::1]:50053", ("::1", 50053)),
    ("10.0.0.7:1", ("10.0.0.7", 1)),
])
def test_endpoints_are_split_into_host_and_port(endpoint, expected):
    assert split_endpoint(endpoint) == expected


@pytest.mark.parametrize("endpoint", ["scheduler.example", "scheduler.example:", ":50051", "host:99999", "host:port"])
def test_a_malformed_endpoint_is_named(endpoint):
    with pytest.raises(ProbeFailed) as e:
        split_endpoint(endpoint)
    assert e.value.step == "dns" and repr(endpoint) in e.value.reason


def server_cert(ca: CertificateAuthority, names: tuple[str, ...] = ("scheduler.example", "10.0.0.7")) -> x509.Certificate:
    ident = ca.issue_identity(Identity(ca.tenant, "service", "scheduler"), HOUR, names)
    return x509.load_pem_x509_certificate(ident.cert_pem)


def test_a_server_certificate_of_the_configured_authority_naming_the_host_passes():
    ca = CertificateAuthority.create("alpha")

    by_name = check_server_certificate(server_cert(ca), "scheduler.example", ca.cert_pem, "/etc/ca.pem")
    by_address = check_server_certificate(server_cert(ca), "10.0.0.7", ca.cert_pem, "/etc/ca.pem")

    assert "signed by the CA in /etc/ca.pem" in by_name and "names scheduler.example" in by_name
    assert "names 10.0.0.7" in by_address


def test_another_authoritys_server_certificate_is_named_with_its_issuer():
    ours, theirs = CertificateAuthority.create("alpha"), CertificateAuthority.create("beta")

    with pytest.raises(ProbeFailed) as e:
        check_server_certificate(server_cert(theirs), "scheduler.example", ours.cert_pem, "/etc/ca.pem")

    assert e.value.step == "tls"
    assert e.value.reason.startswith("the server's certificate is not signed by the CA in /etc/ca.pem "
                                     "(issuer: CN=fedstream beta CA,O=beta; that CA is CN=fedstream alpha CA,O=alpha)")


def test_a_server_certificate_not_naming_the_host_dialled_says_which_names_it_has():
    ca = CertificateAuthority.create("alpha")

    with pytest.raises(ProbeFailed) as e:
        check_server_certificate(server_cert(ca), "schedulr.example", ca.cert_pem, "/etc/ca.pem")

    assert "does not name 'schedulr.example' (it names scheduler.example, 10.0.0.7)" in e.value.reason


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_same_retry_line_is_logged_once_a_minute_with_the_count_left_out(caplog):
    clock = Clock()
    quiet = QuietRepeats(logging.getLogger("probe-test"), every_s=60.0, clock=clock)

    with caplog.at_level(logging.WARNING, logger="probe-test"):
        for second in range(0, 61, 10):  # 0, 10, ..., 60
            clock.now = second
            quiet.log(logging.WARNING, "scheduler a:1: tcp: refused", f"scheduler a:1: tcp: refused; retrying ({second})")
        clock.now = 61
        quiet.log(logging.WARNING, "scheduler a:1: tls: other CA", "scheduler a:1: tls: other CA; retrying")

    assert [r.getMessage() for r in caplog.records] == [
        "scheduler a:1: tcp: refused; retrying (0)",
        "scheduler a:1: tcp: refused; retrying (60) (the same 5 more times in the last 60 s)",
        "scheduler a:1: tls: other CA; retrying",
    ]


def test_the_control_plane_accepts_its_own_and_the_previous_protocol_and_unversioned_agents_as_1():
    assert accepted_range(PROTOCOL_VERSION) == (PROTOCOL_VERSION - 1, PROTOCOL_VERSION)
    assert check_agent_protocol(0) == 1  # an agent from before the field
    assert check_agent_protocol(PROTOCOL_VERSION) == PROTOCOL_VERSION
    assert check_agent_protocol(4, control=5) == 4


@pytest.mark.parametrize(("agent", "control", "says"), [
    (3, 2, "newer than the control plane's protocol 2 (it accepts agents of protocol 1 to 2): upgrade the control plane first"),
    (2, 4, "older than the control plane's protocol 4 accepts (it accepts agents of protocol 3 to 4): upgrade the agent"),
    (0, 3, "this agent speaks fedstream protocol 1, older than"),
])
def test_agents_outside_the_range_are_refused_naming_both_versions(agent, control, says):
    with pytest.raises(IncompatibleProtocol) as e:
        check_agent_protocol(agent, control)
    assert says in e.value.public and e.value.code == "incompatible_protocol"
