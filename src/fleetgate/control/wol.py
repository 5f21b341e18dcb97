"""Wake-on-LAN: the magic packet (6 x 0xff, then the MAC 16 times) over UDP."""

from __future__ import annotations

import socket


def magic_packet(mac: str) -> bytes:
    """The 102-byte payload for ``aa:bb:cc:dd:ee:ff`` (``-`` or no separators also taken)."""
    digits = mac.replace(":", "").replace("-", "")
    raw = bytes.fromhex(digits)
    if len(raw) != 6:
        raise ValueError(f"{mac!r} is not a MAC address")
    return b"\xff" * 6 + raw * 16


def send_magic_packet(mac: str, address: str = "255.255.255.255", port: int = 9) -> None:
    """Send one packet; broadcast is enabled so a subnet broadcast address works."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.sendto(magic_packet(mac), (address, port))
