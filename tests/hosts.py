"""Several hosts on one machine: network namespaces joined by a bridge.

Host ``n`` is the namespace ``zp<pid>h<n>`` with one interface, ``eth0``, at
``10.77.0.<n>/24``. Its other end is a port ``v<n>`` of the bridge ``br0``, which lives in a
namespace of its own (``zp<pid>br``): nothing is added to the machine's own network, and no
packet can leave these namespaces. Multicast is routed to ``eth0`` and flooded by the bridge
(no snooping, no querier needed). Everything is removed on :meth:`Hosts.close`, also when a
test fails. Needs root and iproute2.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from .conftest import ROOT

SUBNET = "10.77.0"


def why_not() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (run the suite as root, as CI does)"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's 'ip' command"
    return None


class Hosts:
    def __init__(self, n: int) -> None:
        self.prefix = f"zp{os.getpid()}"
        self.bridge = f"{self.prefix}br"
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []
        try:
            self._ip("netns", "add", self.bridge)
            self._ip("-n", self.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
            self._ip("-n", self.bridge, "link", "set", "br0", "up")
            for i in range(1, n + 1):
                ns = f"{self.prefix}h{i}"
                self._ip("netns", "add", ns)
                self.names.append(ns)
                self._ip("-n", ns, "link", "set", "lo", "up")
                self._ip("-n", self.bridge, "link", "add", f"v{i}", "type", "veth",
                         "peer", "name", "eth0", "netns", ns)
                self._ip("-n", self.bridge, "link", "set", f"v{i}", "master", "br0", "up")
                self._ip("-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
                self._ip("-n", ns, "link", "set", "eth0", "up")
                self._ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "eth0")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def ip(i: int) -> str:
        return f"{SUBNET}.{i}"

    def run(self, i: int, script: str, *args: str) -> subprocess.Popen:
        """Start ``python tests/<script> args`` on host ``i`` (stdin and stdout piped)."""
        p = subprocess.Popen(["ip", "netns", "exec", self.names[i - 1], sys.executable,
                              os.path.join(ROOT, "tests", script), *args], cwd=ROOT,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def link(self, i: int, up: bool) -> None:
        """Plug host ``i``'s cable in or out (its bridge port goes up or down)."""
        self._ip("-n", self.bridge, "link", "set", f"v{i}", "up" if up else "down")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        for ns in [*self.names, self.bridge]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)
