"""Writes ``schemas/contracts.py`` from the Avro contracts: the one source of the code's enums and
record field lists.

    python -m schemas.generate          # rewrite the module
    python -m schemas.generate --check  # exit 1 if it is out of date (the unit tests run this)

Each record's latest version gives a TypedDict and a ``<RECORD>_FIELDS`` tuple; each named enum a
``Literal`` alias and a ``<ENUM>_SYMBOLS`` tuple. An enum named in several records must have the same
symbols everywhere: one name, one meaning.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from schemas.catalogue import get_catalogue

TARGET = Path(__file__).with_name("contracts.py")

_PRIMITIVES = {"string": "str", "long": "int", "int": "int", "boolean": "bool", "double": "float",
               "float": "float", "bytes": "bytes", "null": "None"}


def _constant(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()


class _Writer:
    def __init__(self) -> None:
        self.enums: dict[str, tuple[str, ...]] = {}
        self.records: dict[str, list[tuple[str, str]]] = {}
        self.order: list[str] = []

    def type_of(self, t: Any) -> str:
        if isinstance(t, str):
            if t in _PRIMITIVES:
                return _PRIMITIVES[t]
            return t.rsplit(".", 1)[-1]
        if isinstance(t, list):
            parts = [self.type_of(x) for x in t]
            non_null = [p for p in parts if p != "None"]
            return " | ".join(non_null + (["None"] if len(non_null) < len(parts) else []))
        kind = t["type"]
        if kind == "enum":
            name = t["name"].rsplit(".", 1)[-1]
            symbols = tuple(t["symbols"])
            if self.enums.setdefault(name, symbols) != symbols:
                raise SystemExit(f"enum {name} has different symbols in two records")
            return name
        if kind == "record":
            self.record(t)
            return str(t["name"].rsplit(".", 1)[-1])
        if kind == "array":
            return f"list[{self.type_of(t['items'])}]"
        if kind == "map":
            return f"dict[str, {self.type_of(t['values'])}]"
        return self.type_of(kind)

    def record(self, schema: dict[str, Any]) -> None:
        name = schema["name"].rsplit(".", 1)[-1]
        if name in self.records:
            return
        self.records[name] = []
        fields = [(f["name"], self.type_of(f["type"])) for f in schema["fields"]]
        self.records[name] = fields
        self.order.append(name)

    def render(self) -> str:
        out = ['"""The Avro contracts as Python: enums and record shapes, generated from schemas/avro by',
               "``python -m schemas.generate``. Do not edit; change the .avsc files and regenerate.", "",
               "TypedDicts, not classes: the codec yields dicts, so the code gets static typing without an",
               "object per event. Each record follows its latest catalogue version.", '"""', "",
               "from __future__ import annotations", "", "from typing import Literal, TypedDict", ""]
        for name in sorted(self.enums):
            listed = ", ".join(json.dumps(s) for s in self.enums[name])
            out.append(f"{name} = Literal[{listed}]")
            out.append(f"{_constant(name)}_SYMBOLS: tuple[{name}, ...] = ({listed},)")
        for name in self.order:
            out += ["", "", f"class {name}(TypedDict):"]
            out += [f"    {field}: {typ}" for field, typ in self.records[name]]
        out += [""]
        for name in self.order:
            fields = ", ".join(json.dumps(f) for f, _ in self.records[name])
            out.append(f"{_constant(name)}_FIELDS: tuple[str, ...] = ({fields},)")
        return _wrap("\n".join(out) + "\n")


def _wrap(text: str, width: int = 120) -> str:
    """Long tuple lines broken at commas so the file stays within the project's line length."""
    lines: list[str] = []
    for line in text.splitlines():
        while len(line) > width:
            cut = line.rfind(", ", 0, width - 1)
            if cut <= 0:
                break
            lines.append(line[: cut + 1])
            line = "    " + line[cut + 2:]
        lines.append(line)
    return "\n".join(lines) + "\n"


def render() -> str:
    writer = _Writer()
    catalogue = get_catalogue()
    for name in sorted(catalogue.names()):
        writer.record(catalogue.latest(name).schema_json)
    return writer.render()


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print("schemas/contracts.py is out of date: run `python -m schemas.generate`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
