#!/usr/bin/env python3
"""Checks plugin modules against the plugin ABI, read from the tables in sdk/src/abi.rs.

Every import must come from module `machinomy` with a name and signature the ABI lists;
every export the ABI names must have its signature; `memory`, `machinomy_abi_version` and
`machinomy_alloc` must be there. When `machinomy_abi_version`'s body is a constant (as the SDK's
is), the version it returns must be the ABI's; otherwise only the hub can tell, at install.
Exits non-zero, naming each problem, if a module does not pass.

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


def abi_version(abi_rs):
    """The ABI_VERSION constant of abi.rs."""
    found = re.search(r"pub const ABI_VERSION: i32 = (\d+);", Path(abi_rs).read_text(encoding="utf-8"))
    if not found:
        raise SystemExit(f"{abi_rs}: found no ABI_VERSION")
    return int(found.group(1))


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def byte(self):
        b = self.data[self.pos]
        self.pos += 1
        return b

    def leb128(self, signed):
        result, shift = 0, 0
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if signed and b & 0x40:
                    result -= 1 << shift
                return result

    def u32(self):
        return self.leb128(signed=False)

    def s32(self):
        return self.leb128(signed=True)

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
    """(imports [(module, name, kind, sig)], exports {name: (kind, sig)}, the constant
    machinomy_abi_version returns or None when its body is not just `i32.const N`)."""
    data = Path(path).read_bytes()
    if data[:8] != b"\0asm\x01\0\0\0":
        raise ValueError("not a wasm module (version 1)")
    r = Reader(data)
    r.pos = 8
    types, func_types, imports, exports = [], [], [], {}
    imported_funcs = 0
    version_index = None
    version = None
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
                    if name == "machinomy_abi_version" and local >= 0:
                        version_index = local
                else:
                    exports[name] = ({1: "table", 2: "memory", 3: "global"}.get(kind, "?"), None)
        elif section == 10 and version_index is not None:  # code
            for i in range(r.u32()):
                body_size = r.u32()
                body_end = r.pos + body_size
                if i == version_index:
                    version = constant_body(data[r.pos : body_end])
                r.pos = body_end
        r.pos = end
    return imports, exports, version


def constant_body(body):
    """N when a function body is exactly `i32.const N` `end` with no locals, else None."""
    r = Reader(body)
    if r.u32() != 0 or r.byte() != 0x41:  # no local declarations; i32.const
        return None
    n = r.s32()
    return n if r.pos == len(body) - 1 and body[-1] == 0x0B else None


def fmt(sig):
    params, results = sig
    return f"({', '.join(params)})" + (f" -> {results[0]}" if results else "")


def check(path, abi_imports, abi_exports, abi_v):
    problems = []
    imports, exports, version = read_module(path)
    for module, name, kind, sig in imports:
        if module != "machinomy":
            problems.append(f"imports {module}.{name}: only module machinomy is provided")
        elif name not in abi_imports:
            problems.append(f"imports machinomy.{name}, which the ABI does not have")
        elif kind != "func" or sig != abi_imports[name]:
            problems.append(f"imports machinomy.{name} as {fmt(sig) if sig else kind}; the ABI says {fmt(abi_imports[name])}")
    for name in REQUIRED_EXPORTS:
        if name == "machinomy_abi_version" and name not in exports:
            problems.append(f"does not export {name} (did the plugin call `machinomy_sdk::export_plugin!`?)")
        elif name not in exports:
            problems.append(f"does not export {name}")
    if version is not None and version != abi_v:
        problems.append(f"machinomy_abi_version returns {version}; this ABI is v{abi_v}, so the hub refuses it")
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
    return problems, used, sorted(n for n in exports if n in abi_exports), version


def main(argv):
    abi_rs = Path(__file__).resolve().parent.parent / "sdk" / "src" / "abi.rs"
    if len(argv) > 1 and argv[0] == "--abi":
        abi_rs, argv = Path(argv[1]), argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    abi_imports, abi_exports = abi_tables(abi_rs)
    abi_v = abi_version(abi_rs)
    failed = False
    for path in argv:
        try:
            problems, used, exported, version = check(path, abi_imports, abi_exports, abi_v)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            problems, used, exported, version = [f"unreadable: {e}"], [], [], None
        if problems:
            failed = True
            for problem in problems:
                print(f"check-wasm: {path}: {problem}", file=sys.stderr)
            continue
        if version is None:
            # Only running the function tells; the hub does that at install.
            verdict = f"ABI v{abi_v} imports and exports ok (the hub checks the version machinomy_abi_version returns at install)"
        else:
            verdict = f"ABI v{abi_v} ok (machinomy_abi_version returns {version})"
        print(f"check-wasm: {Path(path).name}: {verdict}; imports {', '.join(used)}; exports {', '.join(exported)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
