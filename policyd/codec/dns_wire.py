"""The DNS wire format (RFC 1035 4), only as far as policyd's lookups need it.

One query out (RD and AD set, EDNS(0) without DO: RFC 6840 5.7), one response in: the
header, the question, and the resource records of the answer and authority sections with
the data of the types policyd reads (A, AAAA, CNAME, MX, TLSA, TXT, SOA), plus Extended DNS
Errors from the OPT record (RFC 8914). Sans-I/O and small on purpose: dnspython's general
parser costs far more per message than a lookup of ours may (the cold-path profile of
issue 14). The only exception that leaves :func:`decode_response` is
:class:`DnsWireError`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final, NamedTuple

from policyd.core.names import MAX_LABEL, fold

MAX_NAME: Final = 255  # octets in wire form (RFC 1035 2.3.4)
MAX_POINTERS: Final = 64  # compression pointers followed per name: loops end here

FLAG_QR: Final = 0x8000
FLAG_TC: Final = 0x0200
FLAG_RD: Final = 0x0100
FLAG_AD: Final = 0x0020  # RFC 4035 3.2.3, RFC 6840 5.7

TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_SOA: Final = 6
TYPE_MX: Final = 15
TYPE_TXT: Final = 16
TYPE_AAAA: Final = 28
TYPE_OPT: Final = 41
TYPE_TLSA: Final = 52
CLASS_IN: Final = 1
OPTION_EDE: Final = 15  # RFC 8914 2

TYPES: Final = {
    "A": TYPE_A,
    "CNAME": TYPE_CNAME,
    "SOA": TYPE_SOA,
    "MX": TYPE_MX,
    "TXT": TYPE_TXT,
    "AAAA": TYPE_AAAA,
    "TLSA": TYPE_TLSA,
}

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


class DnsWireError(ValueError):
    """A name that cannot be sent, or a response that cannot be read."""


# Records, responses and chains are named tuples: one is built for every record of every
# response on the cold path, and a tuple costs a fraction of a frozen dataclass's __init__.


class Rr(NamedTuple):
    """One resource record: ``data`` by type: A/AAAA address text; CNAME target name;
    MX (preference, exchange); TLSA (usage, selector, mtype, data); TXT tuple of strings;
    SOA its MINIMUM field; anything else the raw bytes. Names are lower case, no final dot
    ("" is the root)."""

    name: str
    rtype: int
    ttl: int
    data: object


class Response(NamedTuple):
    qid: int
    flags: int
    rcode: int  # with the EDNS extended bits
    qname: str
    qtype: int
    answer: tuple[Rr, ...]
    authority: tuple[Rr, ...]
    ede: tuple[tuple[int, str], ...]  # (info code, extra text)

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def authentic(self) -> bool:
        return bool(self.flags & FLAG_AD)


def encode_name(name: str) -> bytes:
    """``name`` (ASCII, absolute, final dot optional) in wire form."""
    text = name.rstrip(".")
    out = bytearray()
    if text:
        for label in text.split("."):
            raw = label.encode("ascii", "strict") if label.isascii() else b""
            if not raw or len(raw) > MAX_LABEL:
                raise DnsWireError(f"cannot send name {name!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > MAX_NAME:
        raise DnsWireError(f"name too long: {name!r}")
    return bytes(out)


def encode_query(qid: int, name: str, qtype: int, payload: int) -> bytes:
    """A recursive query with AD set and an OPT record without DO."""
    header = _HEADER.pack(qid, FLAG_RD | FLAG_AD, 1, 0, 0, 1)
    question = encode_name(name) + struct.pack("!HH", qtype, CLASS_IN)
    opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, payload, 0, 0)
    return header + question + opt


def _name(wire: bytes, offset: int, seen: dict[int, str] | None = None) -> tuple[str, int]:
    """The name at ``offset`` and the offset after it (compression followed). ``seen``
    maps offsets to the names already read there in this message: a pointer to one (the
    question's name, as most owner names are) ends the walk with that name."""
    start = offset
    labels: list[str] = []
    end = -1
    hops = 0
    total = 0
    while True:
        if offset >= len(wire):
            raise DnsWireError("name runs past the message")
        length = wire[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(wire):
                raise DnsWireError("truncated compression pointer")
            hops += 1
            if hops > MAX_POINTERS:
                raise DnsWireError("compression loop")
            if end < 0:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | wire[offset + 1]
            known = seen.get(offset) if seen is not None else None
            if known is not None:
                if known:
                    total += len(known) + 1
                    if total > MAX_NAME:
                        raise DnsWireError("name too long")
                    labels.append(known)
                break
            continue
        if length & 0xC0:
            raise DnsWireError("unknown label type")
        offset += 1
        if length == 0:
            break
        label = wire[offset : offset + length]
        if len(label) != length:
            raise DnsWireError("label runs past the message")
        total += length + 1
        if total > MAX_NAME:
            raise DnsWireError("name too long")
        labels.append(label.decode("latin-1").lower())
        offset += length
    name = ".".join(labels)
    if seen is not None:
        seen[start] = name
    return name, (end if end >= 0 else offset)


def _rdata(wire: bytes, rtype: int, start: int, end: int) -> object:
    data = wire[start:end]
    if rtype == TYPE_A:
        if len(data) != 4:
            raise DnsWireError("bad A record")
        return f"{data[0]}.{data[1]}.{data[2]}.{data[3]}"  # as ipaddress writes it, 3x faster
    if rtype == TYPE_AAAA:
        if len(data) != 16:
            raise DnsWireError("bad AAAA record")
        return str(ipaddress.IPv6Address(data))
    if rtype == TYPE_CNAME:
        target, after = _name(wire, start)
        if after != end:
            raise DnsWireError("bad CNAME record")
        return target
    if rtype == TYPE_MX:
        if len(data) < 3:
            raise DnsWireError("bad MX record")
        exchange, after = _name(wire, start + 2)
        if after != end:
            raise DnsWireError("bad MX record")
        return (int.from_bytes(data[:2], "big"), exchange)
    if rtype == TYPE_TLSA:
        if len(data) < 3:
            raise DnsWireError("bad TLSA record")
        return (data[0], data[1], data[2], bytes(data[3:]))
    if rtype == TYPE_TXT:
        strings: list[bytes] = []
        i = 0
        while i < len(data):
            size = data[i]
            if i + 1 + size > len(data):
                raise DnsWireError("bad TXT record")
            strings.append(bytes(data[i + 1 : i + 1 + size]))
            i += 1 + size
        return tuple(strings)
    if rtype == TYPE_SOA:
        # Only MINIMUM is read (the negative TTL: RFC 2308 5), the last of the five
        # numbers after the two names; the names are not walked (two at least one byte).
        if end - start < 22:
            raise DnsWireError("bad SOA record")
        return int.from_bytes(wire[end - 4 : end], "big")
    return bytes(data)


def _ede(data: bytes) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    i = 0
    while i + 4 <= len(data):
        code, size = struct.unpack_from("!HH", data, i)
        value = data[i + 4 : i + 4 + size]
        if len(value) != size:
            raise DnsWireError("bad EDNS option")
        if code == OPTION_EDE and size >= 2:
            found.append((int.from_bytes(value[:2], "big"), value[2:].decode("utf-8", "replace")))
        i += 4 + size
    return found


def decode_response(wire: bytes) -> Response:
    """The parts of a response policyd reads; DnsWireError for anything malformed."""
    if len(wire) < _HEADER.size:
        raise DnsWireError("short message")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
    if not flags & FLAG_QR:
        raise DnsWireError("not a response")
    if qd != 1:
        raise DnsWireError("expected one question")
    seen: dict[int, str] = {}
    qname, offset = _name(wire, _HEADER.size, seen)
    if offset + 4 > len(wire):
        raise DnsWireError("truncated question")
    qtype = int.from_bytes(wire[offset : offset + 2], "big")
    offset += 4
    sections: list[list[Rr]] = [[], []]
    rcode = flags & 0xF
    ede: list[tuple[int, str]] = []
    for index, count in enumerate((an, ns, ar)):
        for _ in range(count):
            name, offset = _name(wire, offset, seen)
            if offset + _RR.size > len(wire):
                raise DnsWireError("truncated record")
            rtype, rclass, ttl, size = _RR.unpack_from(wire, offset)
            offset += _RR.size
            end = offset + size
            if end > len(wire):
                raise DnsWireError("record data runs past the message")
            if rtype == TYPE_OPT:
                if index == 2 and not name:
                    rcode |= (ttl >> 24) << 4  # extended RCODE (RFC 6891 6.1.3)
                    ede += _ede(wire[offset:end])
            elif index < 2 and rclass == CLASS_IN:
                # TTLs are unsigned 31-bit values; a set high bit means zero (RFC 2181 8)
                kept_ttl = ttl if ttl < 2**31 else 0
                sections[index].append(Rr(name, rtype, kept_ttl, _rdata(wire, rtype, offset, end)))
            offset = end
    return Response(
        qid, flags, rcode, qname, qtype, tuple(sections[0]), tuple(sections[1]), tuple(ede)
    )


class Chain(NamedTuple):
    """A response read for one question: the end of the CNAME chain, the records of the
    asked type there, and the smallest TTL along it (the SOA's negative TTL included for
    NXDOMAIN and NODATA: RFC 2308 5)."""

    canonical: str
    records: tuple[Rr, ...]
    ttl: int


MAX_CHAIN: Final = 16  # CNAMEs followed within one response (dnspython follows 16 too)


def follow(response: Response, qname: str, qtype: int) -> Chain:
    """Follow CNAMEs from ``qname`` through the answer section (RFC 1034 4.3.2)."""
    name = fold(qname)
    ttls: list[int] = []
    for _ in range(MAX_CHAIN + 1):
        records = tuple(r for r in response.answer if r.name == name and r.rtype == qtype)
        if records:
            return Chain(name, records, min([*ttls, *(r.ttl for r in records)]))
        cname = next((r for r in response.answer if r.name == name and r.rtype == TYPE_CNAME), None)
        if cname is None or qtype == TYPE_CNAME:
            break
        ttls.append(cname.ttl)
        assert isinstance(cname.data, str)
        name = cname.data
    else:
        raise DnsWireError("CNAME chain too long")
    for soa in response.authority:
        if soa.rtype == TYPE_SOA:
            assert isinstance(soa.data, int)
            ttls.append(min(soa.ttl, soa.data))
            break
    return Chain(name, (), min(ttls, default=0))
