#!/usr/bin/env python3
"""What can be said about a `perf record -g` profile of the stripped Envoy binary
(tests/bench/vhds_adds.py --perf): the share of samples per thread, the self time by library and
named symbol (Envoy exports only its malloc entry points and a few C APIs; libc and the kernel have
symbols), and, for the unnamed code, functions told apart by their start address from
`.eh_frame_hdr` (each FDE is one function) with self and inclusive shares on the main thread and
the printable strings each hot function references (rip-relative `lea` into .rodata), which is
sometimes enough to recognise it.

Usage: tests/bench/vhds_perf.py PERF_DATA ENVOY [TOP [ADDR [DEPTH [MIN_PERCENT]]]]
With a function start address (hex, as printed), also the main thread's call tree under that
function (its outermost call; direct recursion folded), DEPTH levels deep (6), the nodes with at
least MIN_PERCENT (1.5) of the main thread's samples, each with its strings.
"""

import bisect
import collections
import re
import struct
import subprocess
import sys


def sections(path):
    """{name: (vaddr, file offset, size)} of an ELF64 file."""
    f = open(path, "rb")
    head = f.read(64)
    shoff, = struct.unpack_from("<Q", head, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
    f.seek(shoff)
    raw = f.read(shentsize * shnum)
    entries = [struct.unpack_from("<IIQQQQIIQQ", raw, i * shentsize) for i in range(shnum)]
    strtab = entries[shstrndx]
    f.seek(strtab[4])
    names = f.read(strtab[5])
    out = {}
    for e in entries:
        name = names[e[0]:names.index(b"\0", e[0])].decode()
        out[name] = (e[3], e[4], e[5])
    return out


def function_starts(path, secs):
    """Sorted start addresses of every function with an FDE, from .eh_frame_hdr's search table."""
    vaddr, off, size = secs[".eh_frame_hdr"]
    data = open(path, "rb").read()[off:off + size]
    version, ptr_enc, count_enc, table_enc = data[:4]
    assert (version, ptr_enc, count_enc, table_enc) == (1, 0x1B, 0x03, 0x3B), data[:4]
    count, = struct.unpack_from("<I", data, 8)
    table = struct.unpack_from(f"<{2 * count}i", data, 12)
    return sorted(vaddr + table[2 * i] for i in range(count))


class Strings:
    def __init__(self, path, secs):
        self.data = open(path, "rb").read()
        self.ranges = [v for k, v in secs.items() if k.startswith(".rodata")]

    def at(self, addr):
        for vaddr, off, size in self.ranges:
            if vaddr <= addr < vaddr + size:
                raw = self.data[off + addr - vaddr: off + addr - vaddr + 120]
                s = raw.split(b"\0")[0]
                if len(s) >= 4 and all(32 <= c < 127 for c in s):
                    return s.decode()
        return None


def referenced_strings(path, start, end, strings, limit=6):
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}",
                          f"--stop-address={end:#x}", path], capture_output=True, text=True).stdout
    out = []
    for m in re.finditer(r"lea\s+-?0x[0-9a-f]+\(%rip\),%\w+\s+# ([0-9a-f]+)", dis):
        s = strings.at(int(m.group(1), 16))
        if s and s not in out:
            out.append(s)
        if len(out) >= limit:
            break
    calls = len(re.findall(r"\bcall", dis))
    return out, calls


def samples(data):
    text = subprocess.run(["perf", "script", "-i", data, "-F", "comm,tid,ip,sym,dso"],
                          capture_output=True, text=True).stdout
    for block in text.split("\n\n"):
        lines = [l for l in block.split("\n") if l.strip()]
        if not lines:
            continue
        comm, tid = lines[0].rsplit(None, 1)[0].strip(), lines[0].split()[-1]
        frames = []
        for l in lines[1:]:
            m = re.match(r"\s*([0-9a-f]+) (.*) \((.*)\)$", l)
            if m:
                frames.append((int(m.group(1), 16), re.sub(r"\+0x[0-9a-f]+$", "", m.group(2)),
                               m.group(3)))
        yield comm, tid, frames


def main():
    data, envoy = sys.argv[1], sys.argv[2]
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    root = int(sys.argv[4], 16) if len(sys.argv) > 4 else None
    depth = int(sys.argv[5]) if len(sys.argv) > 5 else 6
    min_pct = float(sys.argv[6]) if len(sys.argv) > 6 else 1.5
    tree = collections.Counter()  # path tuple (root first) -> samples
    secs = sections(envoy)
    starts = function_starts(envoy, secs)
    strings = Strings(envoy, secs)
    text_vaddr, text_off, _ = secs[".text"]
    fn = lambda addr: starts[bisect.bisect_right(starts, addr) - 1]
    is_envoy = lambda dso: dso.endswith("/envoy")

    by_thread = collections.Counter()
    self_by = collections.Counter()
    main_self_fn = collections.Counter()
    main_incl_fn = collections.Counter()
    main_total = 0
    for comm, tid, frames in samples(data):
        thread = "main (envoy)" if comm == "envoy" else ("workers (wrk:*)" if comm.startswith("wrk:") else comm)
        by_thread[thread] += 1
        if not frames:
            continue
        addr, sym, dso = frames[0]
        if is_envoy(dso) and sym == "[unknown]":
            label = "envoy: unnamed code"
        elif dso == "[kernel.kallsyms]":
            label = "kernel"
        else:
            label = f"{dso.rsplit('/', 1)[-1]}: {sym}"
        self_by[(thread, label)] += 1
        if thread != "main (envoy)":
            continue
        main_total += 1
        # perf prints addresses in the binary as file offsets; .text's virtual address is its
        # offset + 0x1000 in this binary (text_vaddr - text_off), which the FDE table uses. (The
        # strings found for the hot functions, e.g. connection_impl.cc in the event loop, confirm it.)
        if is_envoy(dso) and sym == "[unknown]":
            main_self_fn[fn(addr + text_vaddr - text_off)] += 1
        chain = [fn(a + text_vaddr - text_off) if is_envoy(d) else f"{d.rsplit('/', 1)[-1]}: {s}"
                 for a, s, d in frames]
        if root in chain:
            i = len(chain) - 1 - chain[::-1].index(root)  # the outermost call of root
            path = []
            for f in reversed(chain[:i + 1]):
                if not path or path[-1] != f:
                    path.append(f)
            for d in range(1, min(depth, len(path)) + 1):
                tree[tuple(path[:d])] += 1
        seen = set()
        for a, s, d in frames:
            if is_envoy(d):
                f = fn(a + text_vaddr - text_off)
                if f not in seen:
                    seen.add(f)
                    main_incl_fn[f] += 1

    total = sum(by_thread.values())
    print(f"samples: {total}")
    print("\nshare per thread:")
    for t, c in by_thread.most_common():
        print(f"  {t:28s} {c:7d} {100 * c / total:5.1f}%")
    print("\nself samples by thread and code (top 25):")
    for (t, label), c in self_by.most_common(25):
        print(f"  {t:20s} {label:55.55s} {c:7d} {100 * c / total:5.1f}%")
    print(f"\nmain thread: {main_total} samples; unnamed Envoy functions (start from .eh_frame_hdr)")
    for title, counter in (("self", main_self_fn), ("inclusive (on the stack)", main_incl_fn)):
        print(f"\n  by {title}:")
        for start, c in counter.most_common(top):
            i = bisect.bisect_right(starts, start)
            end = starts[i] if i < len(starts) else start + 4096
            strs, calls = referenced_strings(envoy, start, end, strings)
            print(f"  {start:#10x} {end - start:6d} B {c:7d} {100 * c / max(main_total, 1):5.1f}%"
                  f"  calls={calls} strings={strs}")
    if root is not None:
        print(f"\ncall tree under {root:#x} (share of the main thread's samples; recursion folded):")
        name = {}

        def label(f):
            if not isinstance(f, int):
                return f
            if f not in name:
                i = bisect.bisect_right(starts, f)
                end = starts[i] if i < len(starts) else f + 4096
                strs, calls = referenced_strings(envoy, f, end, strings, limit=3)
                name[f] = f"{f:#x} {strs}" if strs else f"{f:#x}"
            return name[f]

        def show(prefix):
            kids = sorted(((c, p) for p, c in tree.items()
                           if len(p) == len(prefix) + 1 and p[:len(prefix)] == prefix), key=lambda x: -x[0])
            for c, p in kids:
                if 100 * c / max(main_total, 1) < min_pct:
                    continue
                print(f"  {'  ' * len(prefix)}{100 * c / main_total:5.1f}%  {label(p[-1])[:200]}")
                show(p)

        show(())


if __name__ == "__main__":
    main()
