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

from scenarios.analysis.wireshark import PROFILE_NAME, WiresharkProfile
from scenarios.records import HandoverRecord, read_handovers
from scenarios.runner import methods
from topo import plan

PROBE_PORT = "40000"
CXTP_NAMES = {"1": "CTAR", "2": "CTAA", "3": "CTD", "4": "PCTD", "5": "CTDR", "6": "CTC", "7": "CT-Req"}
MH_NAMES = {"5": "BU", "6": "BA"}
FIELDS = ("frame.time_epoch", "cxtp.type", "esp.spi", "udp.port", "mip6.mhtype", "isakmp.exchangetype", "radius.code")
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
    if values.get("isakmp.exchangetype"):
        return "IKE"
    if values.get("radius.code"):
        return "RADIUS"
    ports = values.get("udp.port", "").split(",")
    if PROBE_PORT in ports:
        return "probe (ESP)" if values.get("esp.spi") else "probe (clear)"
    if values.get("esp.spi"):
        return "ESP"
    return "other"


#: a clear probe this soon after an ESP probe on an access link is the kernel's re-injected copy
#: of the decapsulated packet (it never crossed the wire), not a probe that left in clear
DECAPSULATED_COPY_S = 0.002
LEAK = "probe in clear on the access link"


def classify_access(packets: list[tuple[float, str]], secure: bool = True) -> list[tuple[float, str]]:
    """On an access link: a clear probe within ``DECAPSULATED_COPY_S`` after an ESP packet is a
    decapsulated copy; with a secure method, any other clear probe is a leak, the thing the
    MN's guard policy exists to prevent (without security, clear probes are the method)."""
    result = []
    last_esp: float | None = None
    for t, name in packets:
        if name in ("probe (ESP)", "ESP"):
            last_esp = t
        elif name == "probe (clear)" and secure:
            copy = last_esp is not None and t - last_esp <= DECAPSULATED_COPY_S
            name = "probe (decapsulated copy)" if copy else LEAK
        result.append((t, name))
    return result


def read_window(capture: Path, profile: WiresharkProfile, start_s: float, end_s: float) -> list[tuple[float, str]]:
    """(wall-clock seconds, label) of every packet of ``capture`` between ``start_s`` and ``end_s``."""
    command = profile.tshark_command(capture, "-Y",
                                     f"frame.time_epoch >= {start_s:.6f} && frame.time_epoch <= {end_s:.6f}",
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
    chosen: dict[str, HandoverRecord] = {}
    for handover in read_handovers(run_dir):
        if handover.outcome == "ok" and not handover.warmup and handover.moved:
            chosen.setdefault(handover.method, handover)
    result = {}
    for method, handover in chosen.items():
        detach_ns = handover.detach_start_ns or 0
        start_ns = (handover.start_ns or detach_ns) - 20_000_000
        end_ns = handover.window_end_ns or detach_ns
        points = {}
        for capture in captures:
            packets = read_window(capture, profile, (start_ns + offset_ns) / 1e9, (end_ns + offset_ns) / 1e9)
            if capture.stem.endswith(f"-{plan.MN}"):  # the AR's end of an access link
                packets = classify_access(packets, methods.get(method).security.secure)
            points[capture.stem] = [((t * 1e9 - offset_ns - detach_ns) / 1e6, name) for t, name in packets]
        result[method] = {"index": handover.index, "points": points,
                          "attached_ms": ((handover.attached_ns or detach_ns) - detach_ns) / 1e6}
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
    colours = {"probe (ESP)": "0.7", "probe (clear)": "0.45", "probe (decapsulated copy)": "0.88", "ESP": "0.55",
               "other": "0.88", LEAK: "red"}
    for axis, (method, entry) in zip(axes[:, 0], data.items()):
        for row, point in enumerate(points):
            packets = entry["points"].get(point, [])
            for name in colours:
                times = [t for t, kind in packets if kind == name]
                if times:
                    axis.scatter(times, [row] * len(times), s=4 if name != LEAK else 16,
                                 color=colours[name], marker="|", label=name)
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
    handles = [axis.get_legend_handles_labels() for axis in axes[:, 0]]
    labels = dict((label, handle) for pair in handles for handle, label in zip(*pair))
    axes[0, 0].legend(labels.values(), labels.keys(), fontsize=6, loc="upper right")
    figure.tight_layout()
    path = run_dir / "packets_by_method.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
