"""Free TCP ports on this machine, for the servers a caller is about to start."""

from __future__ import annotations

import socket


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS picks as free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pick_port(preferred: int, host: str = "127.0.0.1") -> int:
    """`preferred` if free, else (or when it is 0) a free port the OS picks."""
    if preferred and port_is_free(preferred, host):
        return preferred
    return free_port(host)
