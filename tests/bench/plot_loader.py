"""Plot `make bench-loader` results: time vs number of backends (log-log)."""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

rows = list(csv.DictReader(open(sys.argv[1])))
# One layout per plot: the default one when the run measured several.
layouts = [r.get("layout", "per100") for r in rows]
if "per100" in layouts:
    rows = [r for r, layout in zip(rows, layouts) if layout == "per100"]
n = [int(r["backends"]) for r in rows]
series = [
    ("check", [float(r["check_s"]) for r in rows]),
    ("render", [float(r["render_s"]) for r in rows]),
    ("serve: Envoy converged", [float(r["converge_s"]) for r in rows]),
    ("CA change applied (median)", [float(r["ca_change_ms"]) / 1000 for r in rows]),
    ("backend added (median)", [float(r["add_backend_ms"]) / 1000 for r in rows]),
]
fig, ax = plt.subplots(figsize=(7, 4.5))
for label, values in series:
    ax.plot(n, values, marker="o", label=label)
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("backends (Service + EndpointSlice + CA ConfigMap + BackendTLSPolicy + route each)")
ax.set_ylabel("seconds")
ax.set_title("backendtls-loader at scale (2 cores)")
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
