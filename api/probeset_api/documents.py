"""ProbeSet files as YAML documents, bounded before they are believed: size, nesting depth, values
after alias expansion, duplicate keys (spec.py re-exports these names)."""

from __future__ import annotations

import functools
from typing import Any

from .validation import show

MAX_DOCUMENT_BYTES = 1 << 20      # a ProbeSet file; the API server's own limit for an object is 1.5 MB
MAX_DOCUMENT_VALUES = 100_000     # values in a document once YAML aliases are expanded
MAX_DOCUMENT_DEPTH = 32


class DocumentError(ValueError):
    """A file that is not a usable YAML document: the reason, bounded in length."""


def load_documents(text: str) -> list[Any]:
    """The YAML documents of a file (empty documents skipped), bounded: size, nesting depth, values
    after alias expansion (a few hundred bytes of aliases can stand for billions of values), and
    no duplicate keys (YAML would silently keep the last)."""
    import yaml
    if len(text) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"{len(text)} bytes, more than the {MAX_DOCUMENT_BYTES} a ProbeSet file may have")
    loader = None
    try:
        loader = _bounded_loader_class()(text)       # its reader refuses unprintable characters here
        docs = []
        while loader.check_data():
            doc = loader.get_data()
            if doc is not None:
                _check_expanded_size(doc)
                docs.append(doc)
        return docs
    except yaml.YAMLError as e:
        raise DocumentError(f"not valid YAML: {_cut(str(e))}") from None
    except (ValueError, OverflowError) as e:           # a scalar its tag cannot be: 2001-13-45, !!int abc
        raise DocumentError(f"not valid YAML: {_cut(str(e))}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _cut(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _check_expanded_size(doc: Any) -> None:
    """Count the values of a document as a reader walks them (aliases counted at each use), and
    stop at the bound: the walk itself is what an alias bomb would make expensive."""
    seen, stack = 0, [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        seen += 1
        if seen > MAX_DOCUMENT_VALUES:
            raise DocumentError(f"more than {MAX_DOCUMENT_VALUES} values once YAML aliases are expanded")
        if depth > MAX_DOCUMENT_DEPTH:
            raise DocumentError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for kv in value.items() for v in kv)
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


@functools.cache
def _bounded_loader_class():
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """SafeLoader that refuses duplicate mapping keys, deep nesting and too many nodes while
        composing: a megabyte of `[1,1,1,...]` is half a million nodes, which would take seconds
        and hundreds of MB to build before the values were counted."""

        _depth = 0
        _nodes = 0                        # in the whole file: its documents together

        def compose_node(self, parent, index):
            self._depth += 1
            self._nodes += 1
            try:
                if self._depth > MAX_DOCUMENT_DEPTH:
                    raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DOCUMENT_DEPTH} levels",
                                                      self.peek_event().start_mark)
                if self._nodes > MAX_DOCUMENT_VALUES:
                    raise yaml.composer.ComposerError(None, None, f"more than {MAX_DOCUMENT_VALUES} values in the file",
                                                      self.peek_event().start_mark)
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue   # an unhashable key: SafeLoader itself rejects it
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {show(key)}",
                                                            key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)
    return BoundedLoader

