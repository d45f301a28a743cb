"""``softgen bench --plot``: ns/element vs size (matplotlib, an optional extra)."""
from __future__ import annotations

from pathlib import Path

from .. import machine
from .deps import require_matplotlib


def plot(res: dict, path: str | Path) -> Path:
    """ns/element (log) vs elements per call (log) per variant and peer, the L1d/L2/L3 sizes as
    vertical lines (where x and y together fill them), and the copy-bandwidth roofline of the
    auto kernel's traffic; single rows are lines, batched shapes open markers at rows x n."""
    plt = require_matplotlib()
    rows = res["rows"]
    fig, ax = plt.subplots(figsize=(12, 5.5))
    markers = {"softgen": "o", "peer": "s", "copy": "^"}
    lines = {"softgen": "-", "peer": "--", "copy": ":"}
    for name in dict.fromkeys(r["variant"] for r in rows):
        rs = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["elements"])
        kind = rs[0]["kind"]
        single = [r for r in rs if r["rows"] == 1]      # single rows: a line over the sizes
        batch = [r for r in rs if r["rows"] > 1]        # batched shapes: points (open markers)
        color = None
        if single:
            (ln,) = ax.plot([r["elements"] for r in single], [r["ns_per_element"] for r in single],
                            lines[kind] + markers[kind], label=name, ms=4)
            color = ln.get_color()
        if batch:
            pts = ax.plot([r["elements"] for r in batch], [r["ns_per_element"] for r in batch], markers[kind],
                          mfc="none", ms=7, color=color, label=None if single else name)
            color = pts[0].get_color()
    auto = [r for r in rows if r["kind"] == "softgen" and r["auto"] and r["copy_gbps"]]
    if auto:   # auto's own traffic at each size (a dispatcher's: the variant it picks there)
        pts = sorted({(r["elements"], r["bytes_per_element"] / r["copy_gbps"]) for r in auto if r["rows"] == 1})
        ax.plot([e for e, _ in pts], [t for _, t in pts], "k-", lw=2, alpha=0.35,
                label="copy-bandwidth bound of auto's traffic (at the measured copy GB/s)")
        bpts = sorted({(r["elements"], r["bytes_per_element"] / r["copy_gbps"]) for r in auto if r["rows"] > 1})
        if bpts:
            ax.plot([e for e, _ in bpts], [t for _, t in bpts], "k_", ms=14, mew=2, alpha=0.35,
                    label=None if pts else "copy-bandwidth bound of auto's traffic")
    batched = sorted({r["size"] for r in rows if r["rows"] > 1})
    if batched:
        ax.text(0.01, 0.01, "open markers: batched shapes (" + ", ".join(batched) + "), at rows x n elements",
                transform=ax.transAxes, fontsize=7, va="bottom")
    for lvl, size in res["machine"]["caches"].items():
        if lvl in machine.LEVELS:
            e = size / 8
            ax.axvline(e, color="grey", lw=0.8, ls="--")
            ax.text(e, 1.0, f" {lvl} {size >> 10} KiB", rotation=90, va="top", fontsize=8,
                    transform=ax.get_xaxis_transform())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements per call (dashed: where x + y, 8 B/elem, fill L1d / L2 / L3)")
    ax.set_ylabel("ns / element (median)")
    ident = res["machine"]["identity"]
    ax.set_title(f"softgen {res['softgen']} {res['op']}, 1 thread, {ident.get('model_name') or ident.get('arch')} "
                 f"(id {res['machine']['fingerprint']})", fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
