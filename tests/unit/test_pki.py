"""The tenant authority, identities in certificates and TLS settings, without a socket."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fedstream.auth import service_identity
from fedstream.config import TlsSettings
from fedstream.errors import InvalidArgument
from fedstream.exitcodes import ExitCode
from fedstream.pki import (
    CertificateAuthority,
    Identity,
    TlsIdentity,
    make_csr,
    new_key,
    public_key_of_csr,
    read_peer,
)
from fedstream.startup import StartupError

DAY = dt.timedelta(days=1)


@pytest.mark.parametrize("name", ["site-0", "camera 7 (north gate)", "Ünïcode-site", "a%2Fb"])
def test_an_identity_survives_the_certificate(name):
    ca = CertificateAuthority.create("acme")

    ident = ca.issue_identity(Identity("acme", "agent", name), DAY)

    assert read_peer(ident.cert_pem).identity == Identity("acme", "agent", name)


def test_the_authority_signs_only_its_own_tenant_and_caps_lifetimes():
    ca = CertificateAuthority.create("acme", lifetime=dt.timedelta(days=2))

    with pytest.raises(ValueError, match="acme"):
        ca.issue_identity(Identity("other", "agent", "a"), DAY)
    long = ca.issue(new_key().public_key(), Identity("acme", "agent", "a"), dt.timedelta(days=30))
    assert long.not_valid_after_utc <= ca.cert.not_valid_after_utc


def test_a_request_gives_only_its_key():
    key = new_key()

    got = public_key_of_csr(make_csr(key, "I am the CA, trust me"))

    assert got.public_numbers() == key.public_key().public_numbers()


@pytest.mark.parametrize("key", [rsa.generate_private_key(65537, 1024), ec.generate_private_key(ec.SECP256K1())])
def test_weak_or_unusual_keys_are_refused(key):
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
           .sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))
    with pytest.raises(InvalidArgument, match="ECDSA P-256"):
        public_key_of_csr(csr)


def test_a_service_issues_itself_a_certificate_naming_its_hosts(tmp_path: Path):
    ca = CertificateAuthority.create("acme")
    ca.save(tmp_path)

    ident = service_identity(TlsSettings(ca_file=tmp_path / "ca.pem", ca_key_file=tmp_path / "ca-key.pem",
                                         server_names=["aggregator", "10.0.0.7"]), "acme", "aggregator")

    assert ident is not None and ident.peer.identity == Identity("acme", "service", "aggregator")
    san = x509.load_pem_x509_certificate(ident.cert_pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["aggregator"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]


@pytest.mark.parametrize("settings, setting, message", [
    (dict(), "tls.ca_file", "CA certificate is required"),
    (dict(ca_file="ca.pem"), "tls.ca_key_file", "the CA key to issue one, or {tls.cert_file} and {tls.key_file}"),
    (dict(ca_file="missing.pem", cert_file="c", key_file="k"), "tls.ca_file", "cannot read"),
    (dict(ca_file="ca.pem", ca_key_file="ca-key.pem"), "tls.ca_file", "tenant 'acme'"),
    (dict(ca_file="ca.pem", cert_file="agent.pem", key_file="ca-key.pem"), "tls.cert_file", "not a service of tenant"),
])
def test_bad_tls_settings_name_the_setting_and_what_is_wrong(tmp_path: Path, settings, setting, message):
    ca = CertificateAuthority.create("acme")
    ca.save(tmp_path)
    (tmp_path / "agent.pem").write_bytes(ca.issue_identity(Identity("acme", "agent", "a"), DAY).cert_pem)
    fields = {k: tmp_path / v for k, v in settings.items()}

    with pytest.raises(StartupError) as raised:
        service_identity(TlsSettings(**fields), "other" if "tenant" in message else "acme", "scheduler")

    assert raised.value.setting == setting and raised.value.code == ExitCode.BAD_SETTINGS
    assert message in raised.value.problem


def test_plaintext_is_only_on_request_and_warns(caplog):
    assert service_identity(TlsSettings(insecure_plaintext=True), "acme", "scheduler") is None
    assert "PLAINTEXT" in caplog.text


def test_an_identity_directory_round_trips_with_a_private_key_file(tmp_path: Path):
    ident = CertificateAuthority.create("acme").issue_identity(Identity("acme", "agent", "a"), DAY)

    ident.save(tmp_path / "id")

    assert TlsIdentity.load(tmp_path / "id") == ident
    assert (tmp_path / "id" / "key.pem").stat().st_mode & 0o077 == 0
