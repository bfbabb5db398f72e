"""Emulated WAN links for benchmarks: sites in network namespaces of their own, each joined to
this namespace by a veth pair whose two ends are rate-limited by the kernel's token bucket
filter (``tc qdisc ... tbf``). Latency is not the kernel's here (netem is often missing):
``fedstream_testing.wan_relay`` adds it.

Every site reaches this namespace at one address, ``Sites.host_ip``, held by the host end of
each veth pair (a /32 with a route per site), so one listener serves all sites. Names carry
this process's id, so concurrent runs do not collide and ``sweep_stale`` can remove what a
killed run left behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from types import TracebackType

PREFIX = "fsw"
TBF_LATENCY_MS = 25


def _tool(name: str) -> str:
    """The full path of an iproute2 program (RuntimeError when it is missing)."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        raise RuntimeError(f"{name} (iproute2) is not installed")
    return path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([_tool("ip"), *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def _tc(*args: str) -> None:
    done = subprocess.run([_tool("tc"), *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"tc {' '.join(args)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why emulated links cannot be made here (None when they can): root, iproute2, network
    namespaces, veth pairs and tbf are each tried."""
    if os.geteuid() != 0:
        return "not root: network namespaces and traffic shaping need root (CAP_NET_ADMIN)"
    probe = Sites(1, tag=f"{os.getpid():x}p")
    try:
        probe.up()
        probe.shape(LinkShape(10, 0))
    except RuntimeError as e:
        return f"cannot make an emulated link: {e}"
    finally:
        probe.down()
    return None


@dataclass(frozen=True)
class LinkShape:
    """A link's rate (Mbit/s, each way), round-trip time (ms) and, optionally, a cut of every
    connection each ``cut_every_s`` seconds."""

    rate_mbit: float
    rtt_ms: float
    cut_every_s: float | None = None

    @classmethod
    def parse(cls, text: str) -> LinkShape:
        """``RATE/RTT`` or ``RATE/RTT/cutN``: Mbit/s, milliseconds, seconds (``100/40/cut20``)."""
        m = re.fullmatch(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)(?:/cut(\d+(?:\.\d+)?))?", text.strip())
        if m is None:
            raise ValueError(f"link {text!r}: expected RATE_MBIT/RTT_MS[/cutSECONDS], e.g. 100/40 or 100/40/cut20")
        return cls(float(m[1]), float(m[2]), float(m[3]) if m[3] else None)

    @property
    def spec(self) -> str:
        cut = f"/cut{self.cut_every_s:g}" if self.cut_every_s else ""
        return f"{self.rate_mbit:g}/{self.rtt_ms:g}{cut}"

    @property
    def label(self) -> str:
        cut = f", cut every {self.cut_every_s:g} s" if self.cut_every_s else ""
        return f"{self.rate_mbit:g} Mbit/s, {self.rtt_ms:g} ms RTT{cut}"

    @property
    def bytes_per_s(self) -> float:
        return self.rate_mbit * 1e6 / 8


class Sites:
    """``count`` network namespaces, site i reaching ``host_ip`` over its own shaped veth pair.

    ``up`` makes them (removing whatever it made if a step fails), ``down`` removes them;
    as a context manager, both.
    """

    def __init__(self, count: int, tag: str | None = None) -> None:
        if not 1 <= count <= 200:
            raise ValueError("sites: between 1 and 200")
        self.count = count
        self.tag = tag or f"{os.getpid():x}"
        octet = 64 + int(self.tag.rstrip("p"), 16) % 128 + (1 if self.tag.endswith("p") else 0)
        self.host_ip = f"10.{octet}.0.1"
        self._site_ips = [f"10.{octet}.{i + 1}.2" for i in range(count)]
        self._made: list[int] = []

    def namespace(self, i: int) -> str:
        return f"{PREFIX}{self.tag}n{i}"

    def _host_dev(self, i: int) -> str:
        return f"{PREFIX}{self.tag}h{i}"

    def _site_dev(self, i: int) -> str:
        return f"{PREFIX}{self.tag}s{i}"

    def site_ip(self, i: int) -> str:
        return self._site_ips[i]

    def exec_prefix(self, i: int) -> list[str]:
        """The command prefix that runs a program inside site ``i``."""
        return [_tool("ip"), "netns", "exec", self.namespace(i)]

    def up(self) -> Sites:
        try:
            for i in range(self.count):
                self._make(i)
        except BaseException:
            self.down()
            raise
        return self

    def _make(self, i: int) -> None:
        ns, host, site = self.namespace(i), self._host_dev(i), self._site_dev(i)
        _ip("netns", "add", ns)
        self._made.append(i)
        _ip("link", "add", host, "type", "veth", "peer", "name", site)
        _ip("link", "set", site, "netns", ns)
        _ip("addr", "add", f"{self.host_ip}/32", "dev", host)
        _ip("link", "set", host, "up")
        _ip("route", "add", f"{self.site_ip(i)}/32", "dev", host, "src", self.host_ip)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"{self.site_ip(i)}/32", "dev", site)
        _ip("-n", ns, "link", "set", site, "up")
        _ip("-n", ns, "route", "add", f"{self.host_ip}/32", "dev", site, "src", self.site_ip(i))

    def shape(self, link: LinkShape) -> None:
        """Limits both directions of every site's link to ``link.rate_mbit`` (tbf; the
        burst is at least 10 ms at the rate, the queue at most 25 ms)."""
        burst = max(64 << 10, int(link.bytes_per_s / 100))
        tbf = ["root", "tbf", "rate", f"{link.rate_mbit:g}mbit", "burst", str(burst),
               "latency", f"{TBF_LATENCY_MS}ms"]
        for i in self._made:
            _tc("qdisc", "replace", "dev", self._host_dev(i), *tbf)
            _tc("-n", self.namespace(i), "qdisc", "replace", "dev", self._site_dev(i), *tbf)

    def down(self) -> None:
        """Removes every namespace and link made here; errors are ignored (idempotent)."""
        for i in self._made:
            _ip("link", "del", self._host_dev(i), check=False)
            _ip("netns", "del", self.namespace(i), check=False)
        self._made.clear()

    def __enter__(self) -> Sites:
        return self.up()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.down()


def sweep_stale() -> list[str]:
    """Removes the namespaces and links of runs whose process is gone; their names."""
    gone = []
    listed = _ip("netns", "list", check=False).stdout.split()
    links = re.findall(rf"\d+: ({PREFIX}[0-9a-f]+p?h\d+)[@:]", _ip("-o", "link", "show", check=False).stdout)
    for name in [n for n in listed if n.startswith(PREFIX)] + links:
        m = re.fullmatch(rf"{PREFIX}([0-9a-f]+)p?[nh]\d+", name)
        if m is None or _alive(int(m[1], 16)):
            continue
        _ip("link", "del", name, check=False) if name in links else _ip("netns", "del", name, check=False)
        gone.append(name)
    return gone


def _alive(pid: int) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 0)
        return True
    return False
