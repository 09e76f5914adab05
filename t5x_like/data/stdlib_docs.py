"""Collects the English text bundled with CPython: pydoc topics and standard-library docstrings.

Importing a standard-library module can have side effects (printing, registering handlers,
touching a display), so `corpus.py` runs this file as a script in an isolated child interpreter
(`python -I -S stdlib_docs.py OUT.json`) and only reads the JSON it writes. Run directly, it
imports modules; imported as a module, it does nothing.
"""

import importlib
import inspect
import json
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from typing import Any

# What a document is, in the order collect_records() meets them.
KINDS = ("topic", "module", "class", "function", "method")
# Docstrings shorter than this are mostly one-line summaries ("Return self+value.").
MIN_DOC_CHARS = 100

# Top-level modules never imported: GUI/IDE code, modules with visible side effects on import
# (`this` prints, `antigravity` opens a browser), the regression tests, and deprecated packages
# that write caches or warn when imported.
SKIP_MODULES = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "lib2to3",
        "distutils",
        "ensurepip",
        "pydoc_data",  # Its topics are collected separately, one document each.
    }
)
# Packages whose submodules are generated boilerplate (codec tables), not prose.
NO_RECURSE = frozenset({"encodings"})


def _is_public(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return not leaf.startswith("_") and not leaf.startswith("test") and leaf != "tests"


def module_names() -> list[str]:
    """Public top-level standard-library module names, sorted."""
    return sorted(n for n in sys.stdlib_module_names if _is_public(n) and n not in SKIP_MODULES)


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except KeyboardInterrupt:
        raise
    except BaseException:  # noqa: B036 - platform-specific modules raise all sorts (even SystemExit).
        return None


def _walk_modules(names: list[str]) -> Iterator[Any]:
    """Imports each module and, depth first in sorted order, its public submodules."""
    for name in names:
        module = _import(name)
        if module is None:
            continue
        yield module
        path = getattr(module, "__path__", None)
        if path is not None and name not in NO_RECURSE:
            subnames = sorted(f"{name}.{m.name}" for m in pkgutil.iter_modules(path))
            yield from _walk_modules([s for s in subnames if _is_public(s)])


def _own_doc(obj: Any) -> str | None:
    # obj.__doc__, not inspect.getdoc: getdoc inherits a parent's docstring, which would repeat
    # the same text under many names.
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else None


def _class_docs(cls: type) -> Iterator[tuple[str, str | None]]:
    yield "class", _own_doc(cls)
    members = vars(cls)
    for name in sorted(members):
        if name.startswith("_"):
            continue
        member = members[name]
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isroutine(member) or isinstance(member, property):
            yield "method", _own_doc(member)


def _module_docs(module: Any) -> Iterator[tuple[str, str | None]]:
    """(kind, docstring) of a module and of the classes and routines it defines."""
    yield "module", _own_doc(module)
    members = vars(module)
    for name in sorted(members):
        obj = members[name]
        # Only objects defined here: re-exports are documented where they are defined.
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield from _class_docs(obj)
        elif inspect.isroutine(obj):
            yield "function", _own_doc(obj)


def collect_records() -> list[dict[str, str]]:
    """Every pydoc topic, then every distinct long-enough stdlib docstring, in a fixed order.

    Each record is {"text", "kind", "module"}: `kind` is one of KINDS ("topic" for a pydoc
    topic, "method" for a class's routines and properties, "function" for a module's) and
    `module` the top-level module the text was found in ("pydoc_data" for topics). The order
    depends only on the Python installation: modules, members and topics are visited sorted by
    name, and a text seen twice keeps its first occurrence (and that occurrence's kind).
    """
    import pydoc_data.topics

    records: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(text: str | None, kind: str, module: str) -> None:
        if text is None:
            return
        text = text.strip()
        if len(text) >= MIN_DOC_CHARS and text not in seen:
            seen.add(text)
            records.append({"text": text, "kind": kind, "module": module})

    for topic in sorted(pydoc_data.topics.topics):
        add(pydoc_data.topics.topics[topic], "topic", "pydoc_data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in _walk_modules(module_names()):
            top_level = module.__name__.split(".")[0]
            for kind, doc in _module_docs(module):
                add(doc, kind, top_level)
    return records


def collect_documents() -> list[str]:
    """The texts of `collect_records()`, in the same order."""
    return [r["text"] for r in collect_records()]


def main(argv: list[str]) -> None:
    """Writes collect_records() as a JSON list to argv[1]."""
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} OUT.json")
    records = collect_records()
    with open(argv[1], "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv)
