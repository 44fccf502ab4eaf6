#!/usr/bin/env python3
"""Independent reference implementation of specs/commitment.md (SHA-256 and BLAKE3 hashers).

Written from the specification document alone, not from the Rust code. It recomputes the SHA-256
and BLAKE3 values of specs/vectors/commitment.json (leaf digests, cell preimages, roots, batch
proofs, binary encodings) and checks every rejection vector it can decide without Poseidon.
Poseidon values are not recomputed (no Poseidon here); their encodings, sibling counts and
canonicity checks are.

    pip install blake3
    python3 specs/reference/commitment_ref.py [path/to/commitment.json]

Exits 0 when every check passes, 1 on any mismatch, 2 when it cannot run. The last line is a
summary such as "commitment_ref: 23 passed, 0 failed".
"""

import hashlib
import json
import os
import struct
import sys

try:
    import blake3
except ImportError:  # pragma: no cover - depends on the environment
    print("commitment_ref: the 'blake3' package is missing; install it with: pip install blake3",
          file=sys.stderr)
    sys.exit(2)

# Section 4.3.1: the BN254 scalar field modulus.
P = 21888242871839275222246405745257275088548364400416034343698204186575808495617
# Sections 7.1 and 10.
MAX_TREE_SIZE = 1 << 40
# Section 9.1: default decoder limit.
MAX_PROOF_SIBLINGS = 1 << 24
# Section 6.
CELL_DOMAIN = b"veritrace/cell/v1"
# Section 4.3.3.
POSEIDON_LEAF_TAG = b"veritrace/poseidon-leaf/v1"
# Section 5: dtype -> (code, element size).
DTYPES = {"f32": (1, 4), "f16": (2, 2), "bf16": (3, 2), "i8": (4, 1)}
# Section 9.4.
HASHER_CODES = {"blake3": 1, "sha256": 2, "poseidon": 3}
HASHER_NAMES = {v: k for k, v in HASHER_CODES.items()}
DTYPE_NAMES = {code: name for name, (code, _) in DTYPES.items()}

# Section 12.2: Certificate Transparency tree head of the 8 test leaves and two audit paths, as
# published by the CT test suite (independent of the JSON file).
CT_ROOT_8 = "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
CT_PATHS = {
    0: ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    5: ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}


class Reject(Exception):
    """A rejection, named as in sections 8.3, 9.1 and 9.3."""

    def __init__(self, name):
        super().__init__(name)
        self.name = name


class NeedsPoseidon(Exception):
    """Raised when a Poseidon hash would be needed."""


# ---------------------------------------------------------------------------------------------
# Section 4: hash functions.

class ByteHasher:
    """BLAKE3 or SHA-256 with the 0x00 leaf and 0x01 node prefixes (sections 4.1, 4.2)."""

    def __init__(self, name):
        self.name = name
        self._h = {"sha256": lambda b: hashlib.sha256(b).digest(),
                   "blake3": lambda b: blake3.blake3(b).digest()}[name]

    def leaf(self, data):
        return self._h(b"\x00" + data)

    def node(self, left, right):
        assert len(left) == 32 and len(right) == 32
        return self._h(b"\x01" + left + right)

    def canonical(self, digest):
        return True


class PoseidonStub:
    """Poseidon without the permutation: only the canonicity rule of section 3."""

    name = "poseidon"

    def leaf(self, data):
        raise NeedsPoseidon()

    def node(self, left, right):
        raise NeedsPoseidon()

    def canonical(self, digest):
        return int.from_bytes(digest, "big") < P


def hasher(name):
    return PoseidonStub() if name == "poseidon" else ByteHasher(name)


# ---------------------------------------------------------------------------------------------
# Section 7: tree.

def largest_power_of_two_below(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(h, leaves):
    """RFC 6962 recursion over leaf digests (section 7.1)."""
    if len(leaves) == 1:
        return leaves[0]
    k = largest_power_of_two_below(len(leaves))
    return h.node(mth(h, leaves[:k]), mth(h, leaves[k:]))


def level_view(h, leaves):
    """All levels of section 7.1: the odd last node is carried up unchanged."""
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        cur = levels[-1]
        nxt = []
        for x in range((len(cur) + 1) // 2):
            if 2 * x + 1 < len(cur):
                nxt.append(h.node(cur[2 * x], cur[2 * x + 1]))
            else:
                nxt.append(cur[2 * x])
        levels.append(nxt)
    return levels


def streaming_root(h, leaves):
    """The informative O(log n) computation of section 7.1."""
    stack = []  # (height, digest)
    for d in leaves:
        cur = (0, d)
        while stack and stack[-1][0] == cur[0]:
            height, older = stack.pop()
            cur = (height + 1, h.node(older, cur[1]))
        stack.append(cur)
    acc = stack.pop()[1]
    while stack:
        acc = h.node(stack.pop()[1], acc)
    return acc


# ---------------------------------------------------------------------------------------------
# Section 8: proofs.

def walk(n, indices, visit):
    """The walk of section 8.1; visit(level, position) for each sibling, in proof order."""
    known = sorted(indices)
    w, level = n, 0
    while w > 1:
        nxt, x = [], 0
        while x < len(known):
            p = known[x]
            if p % 2 == 0 and x + 1 < len(known) and known[x + 1] == p + 1:
                x += 2
            else:
                if not (p % 2 == 0 and p + 1 == w):
                    visit(level, p ^ 1)
                x += 1
            nxt.append(p // 2)
        known = nxt
        w = (w + 1) // 2
        level += 1


def count(n, indices):
    out = []
    walk(n, indices, lambda level, pos: out.append(1))
    return len(out)


def prove(levels, indices):
    out = []
    walk(len(levels[0]), indices, lambda level, pos: out.append(levels[level][pos]))
    return out


def verify(h, root, n, opened, proof):
    """Section 8.3, checks in order; raises Reject(name) or returns None."""
    if n == 0:
        raise Reject("EmptyTree")
    if n > MAX_TREE_SIZE:
        raise Reject("TreeTooLarge")
    if not opened:
        raise Reject("NoIndices")
    known = sorted(opened, key=lambda e: e[0])
    idx = [i for i, _ in known]
    if len(set(idx)) != len(idx):
        raise Reject("DuplicateIndex")
    if idx[-1] >= n:
        raise Reject("IndexOutOfRange")
    if len(proof) != count(n, idx):
        raise Reject("WrongSiblingCount")
    if not all(h.canonical(d) for d in proof):
        raise Reject("NonCanonicalDigest")
    w, s = n, 0
    while w > 1:
        nxt, x = [], 0
        while x < len(known):
            p, v = known[x]
            if p % 2 == 0 and x + 1 < len(known) and known[x + 1][0] == p + 1:
                u = h.node(v, known[x + 1][1])
                x += 2
            elif p % 2 == 0 and p + 1 == w:
                u = v
                x += 1
            elif p % 2 == 0:
                u = h.node(v, proof[s])
                s += 1
                x += 1
            else:
                u = h.node(proof[s], v)
                s += 1
                x += 1
            nxt.append((p // 2, u))
        known = nxt
        w = (w + 1) // 2
    if known[0][1] != root:
        raise Reject("RootMismatch")


# ---------------------------------------------------------------------------------------------
# Section 9: encodings.

class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def take(self, k):
        if k > len(self.data) - self.pos:
            raise Reject("Truncated")
        out = self.data[self.pos:self.pos + k]
        self.pos += k
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def finish(self):
        if self.pos != len(self.data):
            raise Reject("TrailingBytes")


def encode_vtbp(siblings):
    return b"VTBP" + bytes([1]) + struct.pack("<I", len(siblings)) + b"".join(siblings)


def decode_vtbp(data, limit=MAX_PROOF_SIBLINGS):
    r = Reader(data)
    if r.take(4) != b"VTBP":
        raise Reject("BadMagic")
    if r.u8() != 1:
        raise Reject("UnsupportedVersion")
    s = r.u32()
    if s > limit:
        raise Reject("LimitExceeded")
    if 32 * s > len(data) - r.pos:
        raise Reject("Truncated")
    out = [r.take(32) for _ in range(s)]
    r.finish()
    return out


def validate_geometry(layers, tokens, hidden, chunk, dtype):
    """Section 5; raises Reject."""
    if min(layers, tokens, hidden, chunk) < 1:
        raise Reject("InvalidGeometry")
    if tokens * hidden * DTYPES[dtype][1] > (1 << 63) - 1:
        raise Reject("InvalidGeometry")
    if layers * -(-tokens // chunk) > MAX_TREE_SIZE:
        raise Reject("TreeTooLarge")


def encode_vttc(hasher_name, geometry, root):
    g = geometry
    return (b"VTTC" + bytes([1, HASHER_CODES[hasher_name]])
            + struct.pack("<IIII", g["layers"], g["tokens"], g["hidden"], g["chunk"])
            + bytes([DTYPES[g["dtype"]][0]]) + root)


def decode_vttc(data):
    r = Reader(data)
    if r.take(4) != b"VTTC":
        raise Reject("BadMagic")
    if r.u8() != 1:
        raise Reject("UnsupportedVersion")
    code = r.u8()
    if code not in HASHER_NAMES:
        raise Reject("UnknownHasher")
    layers, tokens, hidden, chunk = (r.u32() for _ in range(4))
    dcode = r.u8()
    if dcode not in DTYPE_NAMES:
        raise Reject("UnknownDtype")
    root = r.take(32)
    r.finish()
    validate_geometry(layers, tokens, hidden, chunk, DTYPE_NAMES[dcode])
    h = hasher(HASHER_NAMES[code])
    if not h.canonical(root):
        raise Reject("NonCanonicalDigest")
    return (HASHER_NAMES[code], dict(layers=layers, tokens=tokens, hidden=hidden, chunk=chunk,
                                     dtype=DTYPE_NAMES[dcode]), root)


# ---------------------------------------------------------------------------------------------
# Sections 5 and 6: geometry, cells, leaf preimages; section 12.5: element formulas.

def element(dtype, l, t, k):
    if dtype == "i8":
        return bytes([(37 * l + 11 * t + 5 * k) % 256])
    v = (100 * l + 10 * t + k) / 4 - 3
    if dtype == "f32":
        return struct.pack("<f", v)
    if dtype == "f16":
        b = struct.pack("<e", v)
        assert struct.unpack("<e", b)[0] == v, "value not exact in f16"
        return b
    if dtype == "bf16":
        b = struct.pack("<f", v)  # little-endian: the upper 16 bits are bytes 2 and 3
        assert b[:2] == b"\x00\x00", "value not exact in bf16"
        return b[2:]
    raise ValueError(dtype)


def formula_layer(g, l):
    return b"".join(element(g["dtype"], l, t, k)
                    for t in range(g["tokens"]) for k in range(g["hidden"]))


def chunks_per_layer(g):
    return -(-g["tokens"] // g["chunk"])


def cell_rows(g, j):
    start = j * g["chunk"]
    return start, min(start + g["chunk"], g["tokens"])


def cell_preimage(g, layers, l, j):
    code, size = DTYPES[g["dtype"]]
    start, end = cell_rows(g, j)
    header = (CELL_DOMAIN + struct.pack("<II", l, j) + bytes([code, 2])
              + struct.pack("<II", end - start, g["hidden"]))
    assert len(header) == 35
    row = g["hidden"] * size
    return header + layers[l][start * row:end * row]


def trace_preimages(g, layers):
    c = chunks_per_layer(g)
    return [cell_preimage(g, layers, i // c, i % c) for i in range(g["layers"] * c)]


# ---------------------------------------------------------------------------------------------
# The checks.

class Tally:
    def __init__(self):
        self.passed, self.failed, self.skipped = 0, 0, 0

    def check(self, ok, what):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print(f"FAIL: {what}")

    def eq(self, got, want, what):
        self.check(got == want, f"{what}: got {got!r}, want {want!r}")

    def rejects(self, fn, want, what):
        try:
            fn()
        except Reject as e:
            self.eq(e.name, want, f"{what} (error)")
            return
        except NeedsPoseidon:
            self.skipped += 1
            return
        self.check(False, f"{what}: accepted, want {want}")


def hx(b):
    return b.hex()


def unhex(s):
    return bytes.fromhex(s)


def leaf_source(v, source, size):
    if source == "le64":
        return [struct.pack("<Q", i) for i in range(size)]
    if source == "rfc6962":
        return [unhex(x) for x in v["rfc6962"]["leaves_hex"][:size]]
    trace = next(t for t in v["traces"] if t["name"] == source)
    layers = [formula_layer(trace["geometry"], l) for l in range(trace["geometry"]["layers"])]
    return trace_preimages(trace["geometry"], layers)


def check_constants(v, t):
    c = v["constants"]
    t.eq(c["cell_domain_hex"], hx(CELL_DOMAIN), "cell domain label")
    t.eq(c["poseidon_leaf_tag_hex"], hx(POSEIDON_LEAF_TAG.rjust(32, b"\x00")), "Poseidon tag")
    t.eq(int(c["poseidon_modulus_hex"], 16), P, "BN254 modulus")
    t.eq((c["max_tree_size"], c["max_proof_siblings"]), (MAX_TREE_SIZE, MAX_PROOF_SIBLINGS),
         "limits")
    t.eq(c["hasher_codes"], HASHER_CODES, "hasher codes")
    t.eq(c["dtype_codes"], {k: code for k, (code, _) in DTYPES.items()}, "dtype codes")


def check_rfc6962(v, t):
    r = v["rfc6962"]
    data = [unhex(x) for x in r["leaves_hex"]]
    for name in ("sha256", "blake3"):
        h = hasher(name)
        leaves = [h.leaf(d) for d in data]
        t.eq([hx(x) for x in leaves], r["leaf_digests"][name], f"{name} leaf digests")
        for n in range(1, len(data) + 1):
            want = r["roots"][name][n - 1]
            got = {hx(mth(h, leaves[:n])), hx(level_view(h, leaves[:n])[-1][0]),
                   hx(streaming_root(h, leaves[:n]))}
            t.eq(got, {want}, f"{name} root of {n} leaves")
    sha = hasher("sha256")
    leaves = [sha.leaf(d) for d in data]
    t.eq(hx(mth(sha, leaves)), CT_ROOT_8, "CT tree head of 8 leaves (public value)")
    levels = level_view(sha, leaves)
    for p in r["audit_paths"]:
        i = p["index"]
        got = [hx(x) for x in prove(levels, [i])]
        t.eq(got, p["siblings"], f"audit path {i} (JSON)")
        t.eq(got, CT_PATHS[i], f"audit path {i} (public value)")
        try:
            verify(sha, unhex(CT_ROOT_8), 8, [(i, leaves[i])], [unhex(x) for x in got])
            t.check(True, "")
        except Reject as e:
            t.check(False, f"audit path {i} rejected: {e.name}")


def check_nodes(v, t):
    for x in v["nodes"]:
        if x["hasher"] == "poseidon":
            t.skipped += 1
            continue
        h = hasher(x["hasher"])
        t.eq(hx(h.node(unhex(x["left"]), unhex(x["right"]))), x["node"],
             f"{x['hasher']} node")


def check_poseidon_sequences(v, t):
    # Section 4.3.3 steps 1 to 3 (no permutation needed).
    for x in v["poseidon_leaves"]:
        n = x["length"]
        data = bytes(i % 256 for i in range(n))
        t.eq(x["data_hex"], hx(data), f"Poseidon leaf data of length {n}")
        seq = [n] + [int.from_bytes(data[q:q + 31], "big") for q in range(0, n, 31)]
        t.eq([int(s, 16) for s in x["sequence"]], seq, f"Poseidon sequence of length {n}")
        t.eq(x["blocks"], -(-len(seq) // 11), f"Poseidon block count of length {n}")
        t.check(int(x["digest"], 16) < P, f"Poseidon leaf {n} canonical")
        t.skipped += 1  # the digest itself needs Poseidon


def check_traces(v, t):
    for tr in v["traces"]:
        g, name = tr["geometry"], tr["name"]
        layers = [formula_layer(g, l) for l in range(g["layers"])]
        t.eq([hx(x) for x in layers], tr["layers_hex"], f"{name} layers from the formula")
        c = chunks_per_layer(g)
        t.eq((tr["chunks_per_layer"], tr["num_cells"]), (c, g["layers"] * c), f"{name} shape")
        pre = trace_preimages(g, layers)
        for i, cell in enumerate(tr["cells"]):
            l, j = i // c, i % c
            start, end = cell_rows(g, j)
            t.eq((cell["index"], cell["layer"], cell["chunk"], cell["row_start"], cell["row_end"]),
                 (i, l, j, start, end), f"{name} cell {i} position")
            t.eq(cell["preimage_hex"], hx(pre[i]), f"{name} cell {i} preimage")
            t.eq(cell["header_hex"], hx(pre[i][:35]), f"{name} cell {i} header")
        for hn in ("sha256", "blake3"):
            h = hasher(hn)
            leaves = [h.leaf(p) for p in pre]
            t.eq([hx(x) for x in leaves], [cell["leaf"][hn] for cell in tr["cells"]],
                 f"{name} {hn} leaf digests")
            root = mth(h, leaves)
            t.eq(hx(root), tr["roots"][hn], f"{name} {hn} root")
            t.eq(hx(encode_vttc(hn, g, root)), tr["commitment_hex"][hn], f"{name} {hn} VTTC")
        # The Poseidon commitment: layout and decoding only.
        enc = unhex(tr["commitment_hex"]["poseidon"])
        t.eq(hx(encode_vttc("poseidon", g, unhex(tr["roots"]["poseidon"]))), hx(enc),
             f"{name} poseidon VTTC layout")
        t.eq(decode_vttc(enc), ("poseidon", g, unhex(tr["roots"]["poseidon"])),
             f"{name} poseidon VTTC decoding")
        t.skipped += 1


def check_batch_proofs(v, t):
    for b in v["batch_proofs"]:
        what = f"batch {b['name']} ({b['hasher']})"
        n, idx = b["size"], b["indices"]
        sibs = [unhex(x) for x in b["siblings"]]
        enc = unhex(b["encoding_hex"])
        t.eq(len(sibs), count(n, idx), f"{what} sibling count")
        t.eq(enc, encode_vtbp(sibs), f"{what} binary encoding")
        t.eq(decode_vtbp(enc), sibs, f"{what} binary decoding")
        t.eq(decode_vtbp(enc, limit=count(n, idx)), sibs, f"{what} decoding at the exact limit")
        t.eq(json.loads(b["json"]), {"siblings": b["siblings"]}, f"{what} JSON form")
        t.eq(json.dumps({"siblings": b["siblings"]}, separators=(",", ":")), b["json"],
             f"{what} JSON text")
        h = hasher(b["hasher"])
        if b["hasher"] == "poseidon":
            t.check(all(h.canonical(s) for s in sibs), f"{what} canonical siblings")
            t.skipped += 1
            continue
        data = leaf_source(v, b["leaf_source"], n)
        leaves = [h.leaf(d) for d in data]
        levels = level_view(h, leaves)
        t.eq(hx(levels[-1][0]), b["root"], f"{what} root")
        t.eq([hx(x) for x in prove(levels, idx)], b["siblings"], f"{what} siblings")
        opened = []
        for x in b["leaves"]:
            t.eq(x["data_hex"], hx(data[x["index"]]), f"{what} opened data {x['index']}")
            opened.append((x["index"], h.leaf(unhex(x["data_hex"]))))
        t.eq([hx(d) for _, d in opened], [x["digest"] for x in b["leaves"]],
             f"{what} opened leaf digests")
        try:
            verify(h, unhex(b["root"]), n, opened, sibs)
            t.check(True, "")
        except Reject as e:
            t.check(False, f"{what} rejected: {e.name}")


def check_rejections(v, t):
    for r in v["batch_rejections"]:
        h = hasher(r["hasher"])
        opened = [(x["index"], unhex(x["digest"])) for x in r["leaves"]]
        sibs = [unhex(x) for x in r["siblings"]]
        t.rejects(lambda: verify(h, unhex(r["root"]), r["size"], opened, sibs), r["error"],
                  f"rejection {r['name']} ({r['hasher']})")
    for r in v["encoding_rejections"]:
        t.rejects(lambda: decode_vtbp(unhex(r["hex"])), r["error"], f"VTBP {r['name']}")
    for r in v["commitment_rejections"]:
        t.rejects(lambda: decode_vttc(unhex(r["hex"])), r["error"], f"VTTC {r['name']}")


def check_size_binding(v, t):
    s = v["size_binding"]
    h = hasher(s["hasher"])
    levels = level_view(h, [h.leaf(d) for d in leaf_source(v, s["leaf_source"], s["size"])])
    t.eq(hx(levels[-1][0]), s["root"], "size binding: root")
    t.eq([hx(x) for x in levels[1]], s["level1"], "size binding: level 1")
    t.eq(hx(mth(h, levels[1])), s["root_of_level1_as_7_leaf_digests"],
         "size binding: root of level 1 as leaves")


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    path = argv[1] if len(argv) > 1 else os.path.join(here, "..", "vectors", "commitment.json")
    try:
        with open(path) as f:
            v = json.load(f)
    except (OSError, ValueError) as e:
        print(f"commitment_ref: cannot read {path}: {e}", file=sys.stderr)
        return 2
    t = Tally()
    for step in (check_constants, check_rfc6962, check_nodes, check_poseidon_sequences,
                 check_traces, check_batch_proofs, check_rejections, check_size_binding):
        try:
            step(v, t)
        except (KeyError, IndexError, TypeError, ValueError, AssertionError) as e:
            t.check(False, f"{step.__name__} crashed: {type(e).__name__}: {e}")
    print(f"commitment_ref: {t.skipped} Poseidon values not recomputed (no Poseidon here)")
    print(f"commitment_ref: {t.passed} passed, {t.failed} failed")
    return 0 if t.failed == 0 and t.passed > 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
