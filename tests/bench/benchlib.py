"""What the Python bench scripts beside it share: free loopback ports, GETs of admin pages and
the CPU time of a process's threads."""
import glob
import os
import socket
import urllib.request


def free_port():
    """A TCP port nothing listens on at 127.0.0.1 (free when asked; the caller binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_text(port, path, timeout=600):
    """The body of `GET http://127.0.0.1:PORT/PATH`, or None when nothing answers it with 2xx."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return None


def threads(pid):
    """{tid: (comm, CPU ns)} of every thread of pid (from /proc, schedstat)."""
    out = {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            comm = open(f"{task}/comm").read().strip()
            ns = int(open(f"{task}/schedstat").read().split()[0])
        except OSError:
            continue
        out[int(os.path.basename(task))] = (comm, ns)
    return out


def thread_class(pid, tid, comm):
    """An Envoy thread's role: "main", "workers" ("wrk:*") or "other"."""
    if tid == pid:
        return "main"
    if comm.startswith("wrk:"):
        return "workers"
    return "other"
