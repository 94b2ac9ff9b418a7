#!/usr/bin/env python3
"""Summarises a bench/resync.sh run: medians and ratios from OUT/results.jsonl, as Markdown."""
import json
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line]
meta = (out / "meta.txt").read_text()
MiB = 1 << 20


def pick(part, case):
    return [r for r in rows if r["part"] == part and r["case"] == case]


def runs(rs, key, scale=1.0, fmt="{:.0f}"):
    return ", ".join(fmt.format(r[key] / scale) for r in rs)


def med(values):
    return statistics.median(values) if values else float("nan")


print("# bench/resync.sh\n")
print("```\n" + meta.strip() + "\n```\n")

raw, full, inc = pick("resync", "raw-seq-write"), pick("resync", "full"), pick("resync", "incremental")
copy = pick("resync", "raw-copy")
if raw and full:
    raw_bw = med([r["bytes_per_s"] for r in raw])
    full_bw = med([r["bytes_per_s"] for r in full])
    ratio = full_bw / raw_bw
    print("## Resync throughput (medians)\n")
    print("Resync rates are the daemon's own (`resync_rate_bytes_per_s`: bytes copied over the time "
          "from the resync's first block to its last); the wall clock from starting the daemons to "
          "UpToDate is in results.jsonl.\n")
    print("| case | MiB/s | runs (MiB/s) | vs raw sequential write |")
    print("|---|---|---|---|")
    print(f"| raw sequential write (fio, O_DIRECT, 1 MiB QD8) | {raw_bw / MiB:.0f} | "
          f"{runs(raw, 'bytes_per_s', MiB)} | 1.00x |")
    # Where the two copies lived (bench/resync.sh's RESYNC_PRIMARY_DIR / RESYNC_STANDBY_DIR).
    layout = copy[0].get("layout", "one-disk") if copy else "one-disk"
    copy_label = {
        "one-disk": "raw copy on the same disk (read the source, write a new file, at once)",
        "primary-elsewhere": "raw copy (read the source from its own storage, write a new file "
                             "on this disk, at once)",
    }.get(layout, f"raw copy ({layout}: read the source, write a new file, at once)")
    if copy:
        copy_bw = med([r["bytes_per_s"] for r in copy])
        print(f"| {copy_label} | "
              f"{copy_bw / MiB:.0f} | {runs(copy, 'bytes_per_s', MiB)} | {copy_bw / raw_bw:.2f}x |")
    print(f"| full resync (random data) | {full_bw / MiB:.0f} | "
          f"{runs(full, 'bytes_per_s', MiB)} | **{ratio:.2f}x** "
          f"({'PASS' if ratio >= 0.7 else 'FAIL'}: target 0.7x) |")
    # The disk drifts between repetitions: each repetition's resync against its own raw figure.
    raw_by_rep = {r["rep"]: r["bytes_per_s"] for r in raw}
    per_rep = [r["bytes_per_s"] / raw_by_rep[r["rep"]] for r in full if r["rep"] in raw_by_rep]
    if inc:
        inc_bw = med([r["bytes_per_s"] for r in inc])
        print(f"| incremental resync after {inc[0]['writes']} random 4 KiB writes | "
              f"{inc_bw / MiB:.0f} | {runs(inc, 'bytes_per_s', MiB)} | "
              f"{inc_bw / raw_bw:.2f}x |")
        print(f"\nIncremental: marked {med([r['marked'] for r in inc]) / MiB:.0f} MiB, resynced "
              f"{med([r['bytes'] for r in inc]) / MiB:.0f} MiB in "
              f"{med([r['wall_seconds'] for r in inc]):.1f} s wall clock (medians).\n")
    if per_rep:
        print(f"\nLayout: {layout}. Full resync against the raw sequential write of the same "
              f"repetition: median **{med(per_rep):.2f}x** "
              f"({', '.join(f'{x:.2f}' for x in per_rep)}).")
    if copy:
        print(f"Full resync against the raw copy: **{full_bw / copy_bw:.2f}x**.\n")

for phase in ("cold", "warm"):
    on, off = pick("tracking", f"on-{phase}"), pick("tracking", f"off-{phase}")
    if not (on and off):
        continue
    on_iops, off_iops = med([r["iops"] for r in on]), med([r["iops"] for r in off])
    # Passes of the same repetition and name ran within a minute of each other on pairs running
    # side by side: their ratio is less disturbed by the disk's drift than the medians are.
    off_by_pass = {(r["rep"], r.get("pass", phase)): r["iops"] for r in off}
    ratios = [r["iops"] / off_by_pass[(r["rep"], r.get("pass", phase))] for r in on
              if (r["rep"], r.get("pass", phase)) in off_by_pass]
    cost = 1 - (med(ratios) if ratios else on_iops / off_iops)
    print(f"## Cost of dirty tracking, {phase} passes: 4 KiB random writes, QD32, mirrored (mode flush)\n")
    print("| bitmap | IOPS (median) | passes | metadata writes per 1000 writes (median) "
          "| CPU µs per write, both daemons (median) |")
    print("|---|---|---|---|---|")
    for name, rs, iops in (("on", on, on_iops), ("off", off, off_iops)):
        cpu = [r["cpu_us_per_write"] for r in rs if "cpu_us_per_write" in r]
        print(f"| {name} | {iops:.0f} | {runs(rs, 'iops')} | "
              f"{med([r['metadata_writes_per_1000'] for r in rs]):.0f} | "
              f"{med(cpu):.1f} |")
    verdict = ("PASS" if cost <= 0.05 else "FAIL") + ": target at most 5%"
    print(f"\nRatios on/off of matching passes: {', '.join(f'{x:.2f}' for x in ratios)}; "
          f"median {med(ratios):.3f}; medians of IOPS give {(1 - on_iops / off_iops) * 100:.1f}%.\n")
    print(f"Cost (1 - median ratio): **{cost * 100:.1f}%** ({verdict})\n")

outage = pick("outage", "standby-down")
if outage:
    o = outage[0]
    print("## Recovery after an outage under load\n")
    print("| outage | writes during it | marked | resynced | recovery (restart to UpToDate) | volume |")
    print("|---|---|---|---|---|---|")
    print(f"| {o['outage_s']} s | {o['writes_during']} | {o['marked'] / MiB:.1f} MiB | "
          f"{o['resynced'] / MiB:.1f} MiB | {o['recovery_s']:.1f} s | {o['volume'] / MiB:.0f} MiB |")
