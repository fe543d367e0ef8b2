"""Rendezvous (highest-random-weight) hashing: which live member of a group owns a service.

Each (service, member) pair gets a weight from a stable hash (blake2b, the same on every host
and Python run, unlike ``hash()``); the member with the highest weight owns the service. A
member joining takes over only the services where it now weighs most (about 1/N of them); a
member leaving hands over only its own. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping


def weight(service: str, member: str) -> int:
    """The stable weight of ``member`` for ``service``."""
    digest = hashlib.blake2b(service.encode() + b"\x00" + member.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(service: str, members: Iterable[str]) -> str | None:
    """The member owning ``service`` (ties, which a 64-bit hash makes rare, go to the greater
    id); ``None`` when there are no members."""
    best: tuple[int, str] | None = None
    for member in members:
        candidate = (weight(service, member), member)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]


def assign(services: Iterable[str], members: Iterable[str]) -> dict[str, str | None]:
    """Every service's owner among ``members``."""
    live = sorted(set(members))
    return {service: owner(service, live) for service in services}


def moved(before: Mapping[str, str | None], after: Mapping[str, str | None]) -> set[str]:
    """The services whose owner differs between two assignments."""
    return {s for s in after if before.get(s) != after[s]}
