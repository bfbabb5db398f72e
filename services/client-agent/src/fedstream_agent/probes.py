"""Probes of one control-plane endpoint, each giving a precise reason when it fails: DNS, TCP,
and TLS against the configured authority. `fedstream-agent check` runs them step by step; the
agent's retry logs use them to say why an endpoint is unavailable (``explain``), and
``QuietRepeats`` keeps a retry that fails the same way from filling the log."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from fedstream.pki import TlsIdentity

log = logging.getLogger(__name__)

# Answers that say nothing of why: the probes find out.
VAGUE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class ProbeFailed(Exception):
    """Step ``step`` ("dns", "tcp", "tls") failed for ``reason``."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """host and port of ``host:port`` (``[v6]:port``; gRPC's ``dns:///`` prefix allowed).
    Raises ProbeFailed when it is not one."""
    target = endpoint.removeprefix("dns:///").removeprefix("dns:")
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = target.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ProbeFailed("dns", f"{endpoint!r} is not host:port")
    return host, int(port)


def resolve(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """The addresses ``host`` resolves to. Raises ProbeFailed("dns")."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ProbeFailed("dns", f"host {host!r} does not resolve ({e.strerror})") from None
    out: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    for family, _, _, _, sockaddr in infos:
        addr = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if addr not in out:
            out.append(addr)
    return out


def connect(addrs: list[tuple[socket.AddressFamily, tuple[str, int]]], timeout: float) -> socket.socket:
    """A TCP connection to the first address that accepts one. Raises ProbeFailed("tcp")
    naming why each address failed."""
    why: list[str] = []
    for family, sockaddr in addrs:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except ConnectionRefusedError:
            why.append(f"{sockaddr[0]} port {sockaddr[1]}: connection refused (nothing listens there)")
        except TimeoutError:
            why.append(f"{sockaddr[0]} port {sockaddr[1]}: no answer within {timeout:g} s "
                       "(a firewall dropping packets, or the wrong address)")
        except OSError as e:
            why.append(f"{sockaddr[0]} port {sockaddr[1]}: {e.strerror or e}")
        sock.close()
    raise ProbeFailed("tcp", "; ".join(why) or "no address to connect to")


def tls_handshake(
    sock: socket.socket, host: str, ca_pem: bytes, ca_file: Path | str, client: TlsIdentity | None,
    enrollment: bool = False,
) -> str:
    """A TLS handshake on ``sock`` (closed after), the server's certificate checked as gRPC
    checks it: signed by the authority in ``ca_file``, current, naming ``host``. With
    ``client``, the server must also accept that certificate. Returns a description of the
    server's certificate; raises ProbeFailed("tls") naming what is wrong. ``enrollment``: the
    server is the enrollment port, which must not ask for a client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # verified below, to say precisely what is wrong
    ctx.set_alpn_protocols(["h2"])
    with tempfile.TemporaryDirectory() as private:  # made 0700: the key does not leak
        if client is not None:
            (Path(private) / "cert.pem").write_bytes(client.cert_pem)
            (Path(private) / "key.pem").write_bytes(client.key_pem)
            ctx.load_cert_chain(Path(private) / "cert.pem", Path(private) / "key.pem")
        try:
            with ctx.wrap_socket(sock, server_hostname=None if _is_ip(host) else host) as tls:
                der = tls.getpeercert(binary_form=True)
                if client is not None:
                    _refused_client(tls)
                elif enrollment:
                    _wants_a_client(tls)
        except ssl.SSLError as e:
            raise ProbeFailed("tls", f"the TLS handshake failed ({e.reason or e}): is this a TLS port of "
                              "fedstream (not a plaintext server, or another service)?") from None
        except OSError as e:
            raise ProbeFailed("tls", f"the connection closed during the TLS handshake ({e.strerror or e})") from None
    if not der:
        raise ProbeFailed("tls", "the server sent no certificate")
    return check_server_certificate(x509.load_der_x509_certificate(der), host, ca_pem, ca_file)


def _closed_after_handshake(tls: ssl.SSLSocket) -> ssl.SSLError | bool:
    """Whether the server closed the connection on the first read (an alert: the SSLError);
    False when it sent data or waited for the client's first request."""
    tls.settimeout(1.0)
    try:
        return tls.recv(1) == b""
    except TimeoutError:
        return False
    except ssl.SSLError as e:
        return e
    except OSError:
        return True


def _wants_a_client(tls: ssl.SSLSocket) -> None:
    """Raises ProbeFailed when the server, shown no client certificate, closes the connection
    after the handshake: it asks for one, as the scheduler's gRPC port does (the enrollment
    port, the only one an agent reaches without a certificate, asks for none)."""
    closed = _closed_after_handshake(tls)
    if closed is False:
        return
    alert = f" ({closed.reason or closed})" if isinstance(closed, ssl.SSLError) else ""
    raise ProbeFailed("tls", f"the server asks for a client certificate and closed the connection without one{alert}: "
                      "this looks like the scheduler's gRPC port, not its enrollment port (default 50053): set "
                      "FEDSTREAM_AGENT_TLS__ENROLL_ENDPOINT to the enrollment port")


def _refused_client(tls: ssl.SSLSocket) -> None:
    """With TLS 1.3 a server checks the client's certificate after the client's handshake is
    done: a refusal arrives as an alert, or as the connection closed, on the first read."""
    closed = _closed_after_handshake(tls)
    if isinstance(closed, ssl.SSLError):
        raise ProbeFailed("tls", f"the server refused this agent's certificate ({closed.reason or closed}): it is not "
                          "signed by the authority the server trusts, or names another tenant")
    if closed:
        raise ProbeFailed("tls", "the server refused this agent's certificate (it closed the connection after "
                          "the handshake): it is not signed by the authority the server trusts, or names another "
                          "tenant")


def check_server_certificate(cert: x509.Certificate, host: str, ca_pem: bytes, ca_file: Path | str) -> str:
    """Raises ProbeFailed("tls") unless ``cert`` is signed by the authority ``ca_pem`` (read
    from ``ca_file``), current and names ``host``."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    issuer = cert.issuer.rfc4514_string()
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ProbeFailed("tls", f"the server's certificate is not signed by the CA in {ca_file} (issuer: {issuer}; "
                          f"that CA is {ca.subject.rfc4514_string()}): another tenant's control plane, or the "
                          "wrong CA file") from None
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        raise ProbeFailed("tls", f"the server's certificate expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if now < cert.not_valid_before_utc:
        start = f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M}"
        raise ProbeFailed("tls", f"the server's certificate is valid only from {start} UTC (is this machine's "
                          "clock right?)")
    names = _names(cert)
    if not _matches(host, names):
        raise ProbeFailed("tls", f"the server's certificate does not name {host!r} (it names {', '.join(names) or 'no host'}): "
                          "dial one of those names, or add this one to the server's tls.server_names")
    return f"server certificate {cert.subject.rfc4514_string()} signed by the CA in {ca_file}, names {host}"


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _matches(host: str, names: list[str]) -> bool:
    if _is_ip(host):
        return any(_is_ip(n) and ipaddress.ip_address(n) == ipaddress.ip_address(host) for n in names)
    host = host.lower().rstrip(".")
    for name in (n.lower() for n in names):
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


def probe(endpoint: str, ca_pem: bytes | None, ca_file: Path | str, client: TlsIdentity | None,
          timeout: float = 3.0, enrollment: bool = False) -> None:
    """DNS, TCP and (with ``ca_pem``) TLS for ``endpoint``; raises ProbeFailed at the first
    that fails."""
    host, port = split_endpoint(endpoint)
    sock = connect(resolve(host, port), timeout)
    if ca_pem is None:
        sock.close()
        return
    tls_handshake(sock, host, ca_pem, ca_file, client, enrollment)


def explain(error: grpc.RpcError, endpoint: str, ca_pem: bytes | None, ca_file: Path | str,
            client: TlsIdentity | None, enrollment: bool = False) -> str:
    """Why a call to ``endpoint`` failed: for UNAVAILABLE and DEADLINE_EXCEEDED, the first
    probe that fails (DNS, refused, TLS verification, the certificate refused), else the
    status and the server's message. ``enrollment``: ``endpoint`` is the enrollment port."""
    code = error.code() if isinstance(error, grpc.Call) else None
    details = (error.details() if isinstance(error, grpc.Call) else None) or str(error)
    if code not in VAGUE:
        return f"{code.name if code else 'error'}: {details}"
    try:
        probe(endpoint, ca_pem, ca_file, client, enrollment=enrollment)
    except ProbeFailed as e:
        return f"{e.step}: {e.reason}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return "no answer before the deadline (the endpoint accepts connections but does not answer in time)"
    return f"unavailable ({details})"


class QuietRepeats:
    """Logs a line; the same line again (by ``key``) at most once per ``every_s`` seconds,
    saying how many repeats were left out meanwhile."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._key: str | None = None
        self._at = 0.0
        self._left_out = 0

    def log(self, level: int, key: str, msg: str) -> None:
        now = self.clock()
        if key == self._key and now - self._at < self.every_s:
            self._left_out += 1
            return
        if key == self._key and self._left_out:
            msg += f" (the same {self._left_out} more times in the last {now - self._at:.0f} s)"
        self._key, self._at, self._left_out = key, now, 0
        self.logger.log(level, "%s", msg)
