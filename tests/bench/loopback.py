"""What the Python bench scripts beside it share: free loopback ports and GETs of admin pages."""
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
