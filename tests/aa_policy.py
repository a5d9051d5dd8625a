"""Reads AppArmor's compiled policy (what `apparmor_parser -S` writes, the blob the kernel loads) and
answers "may this profile execute PATH, and how": no kernel with AppArmor needed.

The format is the kernel's (security/apparmor/policy_unpack.c, match.c, file.c): a stream of typed
elements (u8…u64, name, string, blob, struct…); each profile carries its file rules as a DFA blob
named "aadfa" (8-byte aligned, big-endian tables: accept, base, check, default, equivalence classes,
next, accept2). A path is matched byte by byte from state 1; the accept entry of the last state holds
the owner's permissions (bits 0-6: exec 0x1, write 0x2, read 0x4, append 0x8, link, lock, mmap) with
the exec transition in bits 7-13, and the other users' in bits 14-27.
"""
import struct
import subprocess

U8, U16, U32, U64, NAME, STRING, BLOB, STRUCT, STRUCTEND, LIST, LISTEND, ARRAY, ARRAYEND = range(13)
YYTH_MAGIC = 0x1B5E783D
TABLE_IDS = {1: "accept", 2: "base", 3: "check", 4: "default", 5: "ec", 6: "meta", 7: "accept2", 8: "next"}
MAY_EXEC = 0x1


def elements(data):
    """(enclosing struct names, element name, type, value) for each element of the stream."""
    i, path, name, stream = 0, (), None, 0
    while i < len(data):
        t = data[i]
        i += 1
        if t == NAME:
            n = struct.unpack_from("<H", data, i)[0]
            name = data[i + 2:i + 2 + n].rstrip(b"\0").decode()
            if name == "version" and path == ():
                stream = i - 1                          # each profile is a stream of its own
            i += 2 + n
            continue
        v = None
        if t in (U8, U16, U32, U64):
            size, fmt = {U8: (1, "<B"), U16: (2, "<H"), U32: (4, "<I"), U64: (8, "<Q")}[t]
            v = struct.unpack_from(fmt, data, i)[0]
            i += size
        elif t == STRING:
            n = struct.unpack_from("<H", data, i)[0]
            v = data[i + 2:i + 2 + n].rstrip(b"\0").decode(errors="replace")
            i += 2 + n
        elif t == BLOB:
            n = struct.unpack_from("<I", data, i)[0]
            start = i + 4
            # kernel: unpack_dfa, a DFA 8-byte aligned from its profile's stream start
            pad = ((((start - stream) + 7) & ~7) - (start - stream)) if name == "aadfa" else 0
            v = data[start + pad:start + n]
            i = start + n
        elif t == ARRAY:
            v = struct.unpack_from("<H", data, i)[0]
            i += 2
        elif t == STRUCT:
            path = path + (name,)
        elif t == STRUCTEND:
            path = path[:-1]
        elif t not in (LIST, LISTEND, ARRAYEND):
            raise ValueError(f"unknown element type {t} at offset {i - 1}")
        yield path, name, t, v
        name = None


def file_dfas(data):
    """{profile name: the tables of its file-rule DFA}. A profile's last top-level "aadfa" is its file
    DFA (the first one, when there are two, is its attachment's)."""
    out, current = {}, None
    for path, name, t, v in elements(data):
        if t == STRUCT and path == ("profile",):
            current = None
        elif t == STRING and path == ("profile",) and current is None:
            current = v
        elif t == BLOB and name == "aadfa" and path == ("profile",) and current is not None:
            out[current] = tables(v)
    return out


def tables(blob):
    magic, hsize, _ssize, flags = struct.unpack_from(">IIIH", blob, 0)
    if magic != YYTH_MAGIC:
        raise ValueError(f"not a DFA (magic {magic:#x})")
    i, t = hsize, {"flags": flags}
    while i + 12 <= len(blob):
        tid, tflags, _hilen, lolen = struct.unpack_from(">HHII", blob, i)
        size, fmt = {1: (1, "B"), 2: (2, "H"), 4: (4, "I")}[tflags]
        t[TABLE_IDS.get(tid, tid)] = struct.unpack_from(f">{lolen}{fmt}", blob, i + 12)
        i = (i + 12 + lolen * size + 7) & ~7
    return t


def match(t, text, state=1):
    """The DFA's state after `text` (kernel: aa_dfa_match with its default/diff-encoded transitions)."""
    for c in text.encode():
        if "ec" in t:
            c = t["ec"][c]
        while True:
            b = t["base"][state]
            pos = (b & 0xFFFFFF) + c
            if t["check"][pos] != state:
                state = t["default"][state]
                if b & 0x80000000:
                    continue
                break
            state = t["next"][pos]
            break
    return state


def exec_perms(t, path):
    """{"owner"/"other": (may exec, exec mode)} for PATH; the mode says how: "P" (a profile named by the
    path), "U" unconfined fallback, "i" inherit, "unsafe" (environment not scrubbed)."""
    a = t["accept"][match(t, path)]

    def mode(x):
        m = []
        if (x >> 10) & 0xF == 2:
            m.append("P")
        elif (x >> 10) & 0xF == 1:
            m.append("U")
        if x & 0x80:
            m.append("U")
        if x & 0x200:
            m.append("i")
        if x & 0x100:
            m.append("unsafe")
        return "".join(sorted(set(m), key=m.index))

    owner, other = a & 0x3FFF, (a >> 14) & 0x3FFF
    return {"owner": (bool(owner & MAY_EXEC), mode(owner)), "other": (bool(other & MAY_EXEC), mode(other))}


def compile_profile(profile, base):
    """`apparmor_parser -Q -K -S -b BASE PROFILE`: (returncode, compiled bytes, stderr text)."""
    r = subprocess.run(["apparmor_parser", "-Q", "-K", "-S", "-b", base, profile], capture_output=True, timeout=120)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")
