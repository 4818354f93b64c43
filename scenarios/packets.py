"""What the wire saw: the packet sequence of one handover per method, from a run's captures.

``tshark`` reads each capture point's pcapng with the run's Wireshark profile (ESP decrypted, CXTP
dissected by ``wireshark/cxtp.lua``), over the handover's window; every packet gets a label (a
CXTP message, a Binding Update or Ack, IKE, RADIUS, a probe in ESP or in clear, other ESP) and
the figure puts one row per capture point on the handover's time axis, so that the ladder of the
agents' timeline can be checked against the packets.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from scenarios.wireshark import PROFILE_NAME, WiresharkProfile

PROBE_PORT = "40000"
CXTP_NAMES = {"1": "CTAR", "2": "CTAA", "3": "CTD", "4": "PCTD", "5": "CTDR", "6": "CTC", "7": "CT-Req"}
MH_NAMES = {"5": "BU", "6": "BA"}
FIELDS = ("frame.time_epoch", "cxtp.type", "esp.spi", "udp.port", "mip6.mhtype", "isakmp.exch_type", "radius.code")
#: labels drawn as text on the figure (the rest are marks)
SIGNALLING = ("CTAR", "CTAA", "CTD", "PCTD", "CTDR", "CTC", "CT-Req", "BU", "BA", "IKE", "RADIUS")


class PacketsError(RuntimeError):
    """No captures, no tshark, or a capture tshark cannot read."""


def label(values: dict[str, str]) -> str:
    """One packet's label from tshark's fields (a field with several values is comma-separated)."""
    cxtp = values.get("cxtp.type", "")
    if cxtp:
        return CXTP_NAMES.get(cxtp.split(",")[0], "CXTP")
    if values.get("mip6.mhtype"):
        return MH_NAMES.get(values["mip6.mhtype"], "MH")
    if values.get("isakmp.exch_type"):
        return "IKE"
    if values.get("radius.code"):
        return "RADIUS"
    ports = values.get("udp.port", "").split(",")
    if PROBE_PORT in ports:
        return "probe (ESP)" if values.get("esp.spi") else "probe (clear)"
    if values.get("esp.spi"):
        return "ESP"
    return "other"


def read_window(capture: Path, profile: WiresharkProfile, start_s: float, end_s: float) -> list[tuple[float, str]]:
    """(wall-clock seconds, label) of every packet of ``capture`` between ``start_s`` and ``end_s``."""
    command = profile.tshark_command(capture, "-Y", f"frame.time_epoch >= {start_s:.6f} && frame.time_epoch <= {end_s:.6f}",
                                     "-T", "fields", "-E", "separator=\t", *(f"-e{field}" for field in FIELDS))
    result = subprocess.run(command, capture_output=True, text=True, env=profile.environment(), timeout=300)
    if result.returncode != 0:
        raise PacketsError(f"tshark could not read {capture}: {result.stderr.strip()[:300]}")
    packets = []
    for line in result.stdout.splitlines():
        values = dict(zip(FIELDS, line.split("\t")))
        if values.get("frame.time_epoch"):
            packets.append((float(values["frame.time_epoch"]), label(values)))
    return packets


def sequences(run_dir: Path) -> dict[str, dict]:
    """Per method, its first measured handover that succeeded: {point: [(ms from detach, label)]}."""
    captures = sorted((run_dir / "captures").glob("*.pcapng"))
    if not captures:
        raise PacketsError(f"{run_dir}: no captures (set `captures` in the scenario)")
    if shutil.which("tshark") is None:
        raise PacketsError("tshark is not installed (scripts/setup.sh installs it)")
    record = json.loads((run_dir / "record.json").read_text())
    offset_ns = record["realtime_minus_monotonic_ns"]
    profile = WiresharkProfile((run_dir / "wireshark").resolve(), PROFILE_NAME)
    handovers = json.loads((run_dir / "handovers.json").read_text())
    chosen: dict[str, dict] = {}
    for handover in handovers:
        if handover.get("outcome") == "ok" and not handover.get("warmup") and "detach_start_ns" in handover:
            chosen.setdefault(handover["method"], handover)
    result = {}
    for method, handover in chosen.items():
        detach_ns = handover["detach_start_ns"]
        start_ns = (handover.get("anticipation_start_ns") or detach_ns) - 20_000_000
        end_ns = handover["window_end_ns"]
        points = {}
        for capture in captures:
            packets = read_window(capture, profile, (start_ns + offset_ns) / 1e9, (end_ns + offset_ns) / 1e9)
            points[capture.stem] = [((t * 1e9 - offset_ns - detach_ns) / 1e6, name) for t, name in packets]
        result[method] = {"index": handover["index"], "points": points,
                          "attached_ms": (handover["attached_ns"] - detach_ns) / 1e6}
    return result


def plot(run_dir: Path) -> Path:
    """``packets_by_method.png``: one panel per method, one row per capture point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = sequences(run_dir)
    (run_dir / "packet_sequences.json").write_text(json.dumps(data, indent=1))
    points = sorted({point for entry in data.values() for point in entry["points"]})
    figure, axes = plt.subplots(len(data), 1, figsize=(12, 1.2 + 0.32 * len(points) * len(data)), squeeze=False)
    colours = {"probe (ESP)": "0.75", "probe (clear)": "red", "ESP": "0.55", "other": "0.85"}
    for axis, (method, entry) in zip(axes[:, 0], data.items()):
        for row, point in enumerate(points):
            packets = entry["points"].get(point, [])
            for name in ("probe (ESP)", "ESP", "other", "probe (clear)"):
                times = [t for t, kind in packets if kind == name]
                if times:
                    axis.scatter(times, [row] * len(times), s=4 if name != "probe (clear)" else 14,
                                 color=colours[name], marker="|", label=name if row == 0 else None)
            for t, kind in packets:
                if kind in SIGNALLING:
                    axis.annotate(kind, (t, row), fontsize=6, rotation=60, ha="left", va="bottom")
                    axis.plot([t], [row], marker="o", markersize=3, color="C0")
        axis.axvline(0, color="k", linewidth=0.8)
        axis.axvline(entry["attached_ms"], color="k", linewidth=0.8, linestyle="--")
        axis.set_yticks(range(len(points)), points, fontsize=7)
        axis.set_title(f"{method} (handover {entry['index']}): detach at 0, attach dashed", fontsize=8)
        axis.set_xlabel("ms from the detach", fontsize=7)
        axis.tick_params(axis="x", labelsize=7)
    axes[0, 0].legend(fontsize=6, loc="upper right")
    figure.tight_layout()
    path = run_dir / "packets_by_method.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
