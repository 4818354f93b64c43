"""Each XFRM member declared once; values, netlink dicts and context records follow.

``xfrm_messages.py`` declares the kernel's structures: member names, C types,
padding.  From one declaration this module derives

- its *members*: the leaves of the structure (nested structures flattened,
  addresses kept whole), each with its path in the declaration and its C type;
- ``xfrm_value``: a frozen dataclass whose fields are those members, ints and
  addresses as text (``Selector``, ``Template``, ... in ``context.py``);
- ``to_struct`` / ``from_struct``: the nested dict that pyroute2 encodes or
  decodes for the structure, from or to such a value;
- ``Record``: a run of named fields in network byte order, for the IPsec
  context; ``Record.aligned(members)`` lays members out in the given order at
  their C alignment, padded to a multiple of 4 octets.

So a member added to a declaration reaches the value, the netlink messages and
the context's records without another edit (the context's byte vectors then
change: a new context version).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import Any, ClassVar, Protocol, TypeVar, dataclass_transform

from .addresses import AF_INET6, address_from_bytes, address_to_bytes
from .xfrm_messages import _embeddable, _xfrm_attributes, is_padding, xfrm_address_t

#: struct code of a scalar netlink attribute type (pyroute2's nla type names).
ATTRIBUTE_CODES = {"uint8": "B", "uint16": "H", "uint32": "I", "uint64": "Q"}


@dataclass(frozen=True)
class Member:
    """One field: ``name`` in a value or record, ``path`` where the kernel
    keeps it (members of nested structures, or an attribute's name), ``code``
    its ``struct`` code without byte order."""

    name: str
    path: tuple[str, ...]
    code: str
    is_address: bool = False

    @property
    def size(self) -> int:
        return struct.calcsize(self.code)

    @property
    def alignment(self) -> int:
        return 4 if self.is_address else self.size


def members(declaration: type[_embeddable]) -> tuple[Member, ...]:
    """The leaves of a declared structure, in declaration order, without padding."""
    found: list[Member] = []
    for name, fmt in declaration.fields:
        if is_padding(name):
            continue
        if fmt is xfrm_address_t:
            found.append(Member(name, (name,), "16s", is_address=True))
        elif isinstance(fmt, type):
            found += [replace(m, path=(name, *m.path)) for m in members(fmt)]
        else:
            found.append(Member(name, (name,), fmt.lstrip("=<>!@")))
    return tuple(found)


def member(declaration: type[_embeddable], path: str, name: str | None = None) -> Member:
    """The member at dotted ``path`` (e.g. ``"id.spi"``), named ``name`` (default: its leaf name)."""
    wanted = tuple(path.split("."))
    (found,) = [m for m in members(declaration) if m.path == wanted]
    return replace(found, name=name or found.name)


def bind(declaration: type[_embeddable], *names: str, **paths: str) -> tuple[Member, ...]:
    """Value fields -> members of ``declaration``: ``names`` are members of the
    same name, ``paths`` map a field to a dotted path (``spi="id.spi"``)."""
    return tuple(member(declaration, n) for n in names) + tuple(
        member(declaration, path, name) for name, path in paths.items()
    )


def attribute(attributes: type[_xfrm_attributes], attribute_name: str, name: str) -> Member:
    """A scalar attribute of an XFRM message (``XFRMA_IF_ID``) as the value field ``name``."""
    (kind,) = [entry[-1] for entry in attributes.nla_map if entry[1] == attribute_name]
    return Member(name, (attribute_name,), ATTRIBUTE_CODES[kind])


# --- values ------------------------------------------------------------------------


class XfrmValue(Protocol):
    """What ``xfrm_value`` makes: a frozen dataclass with ``xfrm_members``."""

    xfrm_members: ClassVar[tuple[Member, ...]]


_V = TypeVar("_V")
_XV = TypeVar("_XV", bound=XfrmValue)

#: a structure's members as decoded (by pyroute2 or ``struct``), untyped: ints, and addresses
#: as 16 octets
Decoded = Mapping[str, Any]


# The type checker cannot run the declarations: each class spells out, under TYPE_CHECKING, the
# fields this makes of them (context.py, xfrm.py).
@dataclass_transform(frozen_default=True)
def xfrm_value(declaration: type[_embeddable], *, largest_first: bool = False, required: Iterable[str] = (),
               renames: Mapping[str, str] | None = None,
               **defaults: int | str) -> Callable[[type[_V]], type[_V]]:
    """Class decorator: a frozen dataclass whose fields are ``declaration``'s members.

    Fields come in declaration order, or with ``largest_first`` by decreasing
    size (stable: addresses, then 32-, 16-, 8-bit members), which the context
    record keeps without padding.  ``renames`` maps member names to field
    names.  A field defaults to 0 (an address to ``"::"``) unless ``defaults``
    says otherwise; ``required`` fields have no default and must come first.
    Members named ``reserved*`` are not fields: they are always 0.  The class
    gets ``xfrm_members`` (its fields as ``Member``s, in order).
    """
    renames = renames or {}
    fields = tuple(
        replace(m, name=renames.get(m.name, m.name))
        for m in members(declaration)
        if not m.name.startswith("reserved")
    )
    if largest_first:
        fields = tuple(sorted(fields, key=lambda m: -m.size))
    names = [m.name for m in fields]
    if len(set(names)) != len(names):
        raise TypeError(f"{declaration.__name__}: flattened members share a name: {names}")
    unknown = (set(defaults) | set(required)) - set(names)
    if unknown:
        raise TypeError(f"{declaration.__name__} has no member {sorted(unknown)}")

    def build(cls: type[_V]) -> type[_V]:
        cls.__annotations__ = {m.name: str if m.is_address else int for m in fields}
        for m in fields:
            if m.name not in required:
                setattr(cls, m.name, defaults.get(m.name, "::" if m.is_address else 0))
        cls = dataclass(frozen=True)(cls)
        cls.xfrm_members = fields  # type: ignore[attr-defined]  # what this decorator adds
        return cls

    return build


def raw_fields(value: object, fields: Iterable[Member]) -> dict[str, int | bytes]:
    """Field name -> what the kernel stores (an address as 16 octets)."""
    return {
        m.name: address_to_bytes(getattr(value, m.name)) if m.is_address else getattr(value, m.name)
        for m in fields
    }


def text_fields(fields: Iterable[Member], raw: Decoded, family: int) -> dict[str, Any]:
    """The reverse of ``raw_fields``: addresses become text per ``family``."""
    return {
        m.name: address_from_bytes(raw[m.name], family) if m.is_address else raw[m.name]
        for m in fields
    }


def nest(fields: Iterable[Member], flat: Mapping[str, object]) -> dict[str, Any]:
    """Flat field values -> the nested dict of the declaration (by ``path``)."""
    nested: dict[str, Any] = {}
    for m in fields:
        target = nested
        for key in m.path[:-1]:
            target = target.setdefault(key, {})
        target[m.path[-1]] = flat[m.name]
    return nested


def unnest(fields: Iterable[Member], nested: Decoded) -> dict[str, Any]:
    """The reverse of ``nest``."""
    flat = {}
    for m in fields:
        value: Any = nested
        for key in m.path:
            value = value[key]
        flat[m.name] = value
    return flat


def to_struct(value: XfrmValue) -> dict[str, Any]:
    """An ``xfrm_value`` -> the dict pyroute2 encodes for its declaration."""
    fields = type(value).xfrm_members
    return nest(fields, raw_fields(value, fields))


def from_struct(cls: type[_XV], nested: Decoded, family: int = AF_INET6) -> _XV:
    """The dict pyroute2 decoded -> an ``xfrm_value`` of class ``cls``
    (addresses read per ``family``)."""
    fields = cls.xfrm_members
    return cls(**text_fields(fields, unnest(fields, nested), family))


# --- context records -------------------------------------------------------------------


class Record:
    """Named fields in network byte order, in the given order, no implicit padding.

    ``fields`` are (name, struct code) pairs or ``Member``s; a code ending in
    ``x`` is padding (its name is ignored; it packs as zeros).
    """

    def __init__(self, fields: Iterable[tuple[str, str] | Member]) -> None:
        pairs = [(f.name, f.code) if isinstance(f, Member) else f for f in fields]
        self.names = tuple(name for name, code in pairs if not code.endswith("x"))
        self._struct = struct.Struct(">" + "".join(code for _, code in pairs))
        self._values = itemgetter(*self.names) if len(self.names) > 1 else lambda v: (v[self.names[0]],)
        self.size = self._struct.size

    @classmethod
    def aligned(cls, fields: Iterable[Member]) -> Record:
        """``fields`` in order, each at a multiple of its C alignment (addresses:
        4), the whole padded to a multiple of 4 -- as a C compiler lays out a
        structure of those members, in network byte order."""
        pairs: list[tuple[str, str]] = []
        offset = 0
        for m in fields:
            gap = -offset % m.alignment
            if gap:
                pairs.append(("", f"{gap}x"))
            pairs.append((m.name, m.code))
            offset += gap + m.size
        if offset % 4:
            pairs.append(("", f"{-offset % 4}x"))
        return cls(pairs)

    def pack(self, values: Mapping[str, object]) -> bytes:
        return self._struct.pack(*self._values(values))

    def unpack_from(self, data: bytes | bytearray, offset: int = 0) -> dict[str, Any]:
        return dict(zip(self.names, self._struct.unpack_from(data, offset)))
