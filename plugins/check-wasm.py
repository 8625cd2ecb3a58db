#!/usr/bin/env python3
"""Checks plugin modules against the plugin ABI, read from the tables in sdk/src/abi.rs.

Every import must come from module `machinomy` with a name and signature the ABI lists;
every export the ABI names must have its signature; `memory`, `machinomy_abi_version` and
`machinomy_alloc` must be there. Exits non-zero, naming each problem, if a module does not.

Usage: check-wasm.py [--abi sdk/src/abi.rs] plugin.wasm...
"""

import re
import sys
from pathlib import Path

VALTYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128", 0x70: "funcref", 0x6F: "externref"}
REQUIRED_EXPORTS = ("memory", "machinomy_abi_version", "machinomy_alloc")


def abi_tables(abi_rs):
    """(imports, exports): name -> (params, results), from the doc tables of abi.rs.

    A parameter without a type is an i32 (pointers and lengths, as abi.rs says)."""
    imports, exports = {}, {}
    section = None
    row = re.compile(r"^//!\s*\|\s*`(\w+)`\s*\|\s*`([^`]*)`\s*\|")
    for line in Path(abi_rs).read_text(encoding="utf-8").splitlines():
        if line.startswith("//! # Exports"):
            section = exports
        elif line.startswith("//! # Imports"):
            section = imports
        match = row.match(line)
        if section is None or not match:
            continue
        name, signature = match.groups()
        if signature == "memory":
            section[name] = "memory"
            continue
        sig = re.fullmatch(r"\((.*)\)\s*(?:->\s*(\w+))?", signature.strip())
        if not sig:
            raise SystemExit(f"abi.rs: cannot read the signature of {name}: {signature}")
        params = []
        for param in filter(None, (p.strip() for p in sig.group(1).split(","))):
            params.append(param.split(":")[1].strip() if ":" in param else "i32")
        section[name] = (tuple(params), (sig.group(2),) if sig.group(2) else ())
    if not imports or not exports:
        raise SystemExit(f"{abi_rs}: found no import or export table")
    return imports, exports


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def u32(self):
        result, shift = 0, 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return result

    def name(self):
        n = self.u32()
        s = self.data[self.pos : self.pos + n].decode("utf-8")
        self.pos += n
        return s

    def limits(self):
        flags = self.byte()
        self.u32()
        if flags & 1:
            self.u32()


def read_module(path):
    """(imports [(module, name, kind, sig)], exports {name: (kind, sig)})."""
    data = Path(path).read_bytes()
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a wasm module (version 1)")
    r = Reader(data)
    r.pos = 8
    types, func_types, imports, exports = [], [], [], {}
    imported_funcs = 0
    while r.pos < len(data):
        section, size = r.byte(), r.u32()
        end = r.pos + size
        if section == 1:  # types
            for _ in range(r.u32()):
                if r.byte() != 0x60:
                    raise ValueError("unexpected type form")
                params = tuple(VALTYPES.get(r.byte(), "?") for _ in range(r.u32()))
                results = tuple(VALTYPES.get(r.byte(), "?") for _ in range(r.u32()))
                types.append((params, results))
        elif section == 2:  # imports
            for _ in range(r.u32()):
                module, name, kind = r.name(), r.name(), r.byte()
                if kind == 0:
                    imports.append((module, name, "func", types[r.u32()]))
                    imported_funcs += 1
                elif kind == 1:
                    r.byte()
                    r.limits()
                    imports.append((module, name, "table", None))
                elif kind == 2:
                    r.limits()
                    imports.append((module, name, "memory", None))
                elif kind == 3:
                    r.byte()
                    r.byte()
                    imports.append((module, name, "global", None))
                else:
                    raise ValueError(f"unknown import kind {kind}")
        elif section == 3:  # functions
            func_types = [types[r.u32()] for _ in range(r.u32())]
        elif section == 7:  # exports
            for _ in range(r.u32()):
                name, kind, index = r.name(), r.byte(), r.u32()
                if kind == 0:
                    local = index - imported_funcs
                    sig = func_types[local] if local >= 0 else None
                    exports[name] = ("func", sig)
                else:
                    exports[name] = ({1: "table", 2: "memory", 3: "global"}.get(kind, "?"), None)
        r.pos = end
    return imports, exports


def fmt(sig):
    params, results = sig
    return f"({', '.join(params)})" + (f" -> {results[0]}" if results else "")


def check(path, abi_imports, abi_exports):
    problems = []
    imports, exports = read_module(path)
    for module, name, kind, sig in imports:
        if module != "machinomy":
            problems.append(f"imports {module}.{name}: only module machinomy is provided")
        elif name not in abi_imports:
            problems.append(f"imports machinomy.{name}, which the ABI does not have")
        elif kind != "func" or sig != abi_imports[name]:
            problems.append(f"imports machinomy.{name} as {fmt(sig) if sig else kind}; the ABI says {fmt(abi_imports[name])}")
    for name in REQUIRED_EXPORTS:
        if name not in exports:
            problems.append(f"does not export {name}")
    if exports.get("memory", ("memory", None))[0] != "memory":
        problems.append("exports memory, but not as a memory")
    for name, (kind, sig) in exports.items():
        wanted = abi_exports.get(name)
        if wanted is None:
            continue  # extra exports (__data_end, __heap_base …) are ignored by the host
        if wanted == "memory":
            if kind != "memory":
                problems.append(f"exports {name} as a {kind}, not a memory")
        elif kind != "func" or sig != wanted:
            problems.append(f"exports {name} as {fmt(sig) if sig else kind}; the ABI says {fmt(wanted)}")
    used = sorted(name for module, name, _, _ in imports if module == "machinomy")
    return problems, used, sorted(n for n in exports if n in abi_exports)


def main(argv):
    abi_rs = Path(__file__).resolve().parent.parent / "sdk" / "src" / "abi.rs"
    if len(argv) > 1 and argv[0] == "--abi":
        abi_rs, argv = Path(argv[1]), argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    abi_imports, abi_exports = abi_tables(abi_rs)
    failed = False
    for path in argv:
        try:
            problems, used, exported = check(path, abi_imports, abi_exports)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            problems, used, exported = [f"unreadable: {e}"], [], []
        if problems:
            failed = True
            for problem in problems:
                print(f"check-wasm: {path}: {problem}", file=sys.stderr)
        else:
            print(f"check-wasm: {Path(path).name}: ABI v1 ok; imports {', '.join(used)}; exports {', '.join(exported)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
