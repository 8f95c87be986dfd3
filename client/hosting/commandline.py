"""What every FastProxy command shares on its command line: one-line errors, addresses."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import NoReturn


class OneLineArgumentParser(argparse.ArgumentParser):
    """Bad flags end the process with one clear line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def fail(prog: str, message: str, status: int = 2) -> NoReturn:
    """Ends a command with one clear line on stderr."""
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(status)


def read_flag_file(prog: str, path: str | None, flag: str) -> bytes | None:
    """The bytes of the file a flag names (None without the flag); ends the command with one
    line when it cannot be read."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        fail(prog, f"{flag} {path}: cannot be read ({exc.strerror})")


def host_port(value: str) -> str:
    """argparse type for HOST:PORT (IPv6 hosts in brackets)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


def host_ports(value: str) -> str:
    """argparse type for one HOST:PORT or several, comma-separated (replicas of a Center)."""
    for part in value.split(","):
        host_port(part.strip())
    return ",".join(part.strip() for part in value.split(","))


def is_loopback(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
