"""Bounded reads of every file the tool is given: dumps, snapshots, node files, kubeconfigs.

Inputs come from tickets and support bundles, so a read must not hang (a FIFO, a device),
must not fill memory (/dev/zero, a sparse 1.5 GB file) and must not recurse without end
(a 5,000-deep YAML). Every outside file goes through `read_text`, and every YAML or JSON
document through `load_yaml` / `load_json`, so the limits hold in one place.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from typing import Any, BinaryIO

from kubectl_clusterip.model import ClusterIPError

MAX_INPUT_BYTES = 512 * 1024 * 1024  # a 10,000-service nft -j dump is ~50 MB
MAX_DEPTH = 100  # Kubernetes objects nest ~12 deep; kubeconfigs less
CHUNK = 1 << 20

def cut(value: object, width: int = 80) -> str:
    """Echoed input, cut short so a message stays one readable line."""
    text = value if isinstance(value, str) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= width else text[:width - 3] + "..."


def shown(path: str, width: int = 160) -> str:
    """A path in a message: the end names the file, so a long one loses its start."""
    return path if len(path) <= width else "..." + path[-(width - 3):]


def read_bytes(path: str, limit: int | None = None) -> bytes:
    """A regular file's bytes, or stdin's for `-`, refused when larger than `limit`.

    The size is checked before reading (a sparse file is never read), and FIFOs, devices
    and sockets are refused before they can block (opened non-blocking, checked by fstat).
    """
    limit = MAX_INPUT_BYTES if limit is None else limit
    if path == "-":
        return _read_capped(sys.stdin.buffer, "-", limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ClusterIPError(f"{shown(path)}: no such file") from None
    except IsADirectoryError:
        raise ClusterIPError(f"{shown(path)}: is a directory") from None
    except OSError as e:
        raise ClusterIPError(f"{shown(path)}: cannot read: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ClusterIPError(f"{shown(path)}: is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ClusterIPError(f"{shown(path)}: not a regular file ({_kind(st.st_mode)})")
        if st.st_size > limit:
            raise ClusterIPError(f"{shown(path)}: {st.st_size >> 20} MiB, larger than the "
                                 f"{limit >> 20} MiB limit")
    except ClusterIPError:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        return _read_capped(f, path, limit)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _read_capped(f: BinaryIO, path: str, limit: int) -> bytes:
    """Read in chunks: stop at `limit`, and stop early on binary data (stdin is /dev/zero)."""
    chunks: list[bytes] = []
    total = 0
    try:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                break
            if not chunks and b"\0" in chunk[:65536]:
                raise ClusterIPError(f"{shown(path)}: binary data, not text")
            total += len(chunk)
            if total > limit:
                raise ClusterIPError(f"{shown(path)}: larger than the {limit >> 20} MiB limit")
            chunks.append(chunk)
    except OSError as e:
        raise ClusterIPError(f"{shown(path)}: cannot read: {e.strerror}") from None
    return b"".join(chunks)


def read_text(path: str, limit: int | None = None, what: str = "text") -> str:
    """A file's UTF-8 text through `read_bytes`; binary data is a one-line error."""
    data = read_bytes(path, limit)
    if b"\0" in data[:65536]:
        raise ClusterIPError(f"{shown(path)}: binary data, not {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ClusterIPError(f"{shown(path)}: not UTF-8 text (byte {e.start}), not {what}"
                             ) from None


def load_yaml(text: str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """One YAML document as plain data, built from the C parser's events without recursion.

    Nesting deeper than `max_depth` is refused, and so is an alias that would expand the
    document beyond its own size ("billion laughs"). Tags are those of yaml.safe_load.
    """
    import yaml  # loaded on first use: a rule dump needs no YAML parser

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        return _build(loader, source, max_depth, yaml.events)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ClusterIPError(f"{source}: not valid YAML{where}: {cut(problem)}") from None
    except (ValueError, TypeError, OverflowError):  # a scalar its tag cannot build
        raise ClusterIPError(f"{source}: a YAML value its tag cannot hold") from None
    finally:
        loader.dispose()


def _build(loader: Any, source: str, max_depth: int, _events: Any) -> Any:
    stack: list[list] = []  # [container, pending key or _NO_KEY, anchor]
    anchors: dict[str, Any] = {}
    expanded = 0  # nodes that aliases repeat
    nodes = 0
    root: Any = None
    docs = 0
    while True:
        ev = loader.get_event()
        if ev is None or isinstance(ev, _events.StreamEndEvent):
            break
        if isinstance(ev, _events.DocumentStartEvent):
            docs += 1
            if docs > 1:
                raise ClusterIPError(f"{source}: more than one YAML document")
            continue
        if isinstance(ev, (_events.StreamStartEvent, _events.DocumentEndEvent)):
            continue
        value: Any
        if isinstance(ev, (_events.MappingStartEvent, _events.SequenceStartEvent)):
            if len(stack) >= max_depth:
                raise ClusterIPError(f"{source}: nested deeper than {max_depth} levels")
            _check_tag(ev, source)
            value = {} if isinstance(ev, _events.MappingStartEvent) else []
            nodes += 1
            stack.append([value, _NO_KEY, ev.anchor, nodes + expanded])
            continue
        if isinstance(ev, (_events.MappingEndEvent, _events.SequenceEndEvent)):
            value, _, anchor, start = stack.pop()
            if anchor is not None:
                anchors[anchor] = (value, nodes + expanded - start + 1)
        elif isinstance(ev, _events.AliasEvent):
            if ev.anchor not in anchors:
                raise ClusterIPError(f"{source}: unknown YAML alias *{cut(ev.anchor, 40)}")
            value, size = anchors[ev.anchor]
            expanded += size
            if expanded > 10_000 + nodes:
                raise ClusterIPError(f"{source}: YAML aliases expand beyond the document")
        else:  # ScalarEvent
            nodes += 1
            value = _scalar(loader, ev, source)
            if ev.anchor is not None:
                anchors[ev.anchor] = (value, 1)
        if not stack:
            root = value
            continue
        top = stack[-1]
        if isinstance(top[0], list):
            top[0].append(value)
        elif top[1] is _NO_KEY:
            if isinstance(value, (dict, list)):
                raise ClusterIPError(f"{source}: a mapping key that is not a scalar")
            top[1] = value
        else:
            key, top[1] = top[1], _NO_KEY
            if key is _MERGE:  # `<<: *base` merges keys the mapping does not set, as safe_load
                for merged in (value if isinstance(value, list) else [value]):
                    if not isinstance(merged, dict):
                        raise ClusterIPError(f"{source}: a YAML merge key (<<) names a "
                                             "value that is not a mapping")
                    for k, v in merged.items():
                        top[0].setdefault(k, v)
            else:
                top[0][key] = value
    return root


class _NoKey:
    pass


_NO_KEY, _MERGE = _NoKey(), _NoKey()
_STANDARD = {None, "!", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq",
             "tag:yaml.org,2002:omap", "tag:yaml.org,2002:set"}


def _check_tag(ev: Any, source: str) -> None:
    if ev.tag not in _STANDARD:
        raise ClusterIPError(f"{source}: unsupported YAML tag {cut(ev.tag, 40)}")


def _scalar(loader: Any, ev: Any, source: str) -> Any:
    import yaml

    tag = ev.tag
    if tag is None or tag == "!":
        tag = loader.resolve(yaml.ScalarNode, ev.value, ev.implicit)
    if tag == "tag:yaml.org,2002:merge":
        return _MERGE
    construct = yaml.SafeLoader.yaml_constructors.get(tag)
    if construct is None:
        raise ClusterIPError(f"{source}: unsupported YAML tag {cut(tag, 40)}")
    return construct(loader, yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark,
                                             style=ev.style))


def load_json(text: str, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """One JSON document; nesting deeper than `max_depth` is refused without recursion."""
    try:
        doc = json.loads(text)
    except RecursionError:
        raise ClusterIPError(f"{source}: JSON nested deeper than {max_depth} levels") from None
    except ValueError as e:
        msg = getattr(e, "msg", None) or "invalid"
        pos = f" (line {e.lineno}, column {e.colno})" if hasattr(e, "lineno") else ""
        raise ClusterIPError(f"{source}: not valid JSON{pos}: {cut(msg)}") from None
    check_depth(doc, source, max_depth)
    return doc


def check_depth(doc: Any, source: str, max_depth: int = MAX_DEPTH) -> None:
    """Refuse data nested deeper than `max_depth` (walked with a stack, not recursion)."""
    todo = [(doc, 1)]
    while todo:
        value, depth = todo.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > max_depth:
            raise ClusterIPError(f"{source}: nested deeper than {max_depth} levels")
        todo.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
