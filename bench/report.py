#!/usr/bin/env python3
"""Turns the output of bench/run.sh into results.json, results.md and chart.png.

Usage:
  report.py OUT_DIR          collect OUT_DIR/runs.jsonl and the fio JSON it names into
                             OUT_DIR/results.json, then render it
  report.py RESULTS_JSON     render an existing results.json again

Rendering writes results.md and chart.png next to results.json and prints the tables.

Figures per run come from fio's JSON for the job's direction (read or write): IOPS, MB/s
(10^6 bytes per second) and the 50th and 99th percentile of completion latency (clat) in µs.
For the flush job, the flush latency (fio's "sync" section) is kept as well. Each figure's
median over the repetitions is taken on its own, so a median row need not be one real run.
"""

import json
import statistics
import sys
from pathlib import Path

TARGETS = ["nbdmirror", "nbdkit", "nbdkit-nocache", "raw", "nbdkit-null", "raw-dsync"]
TARGET_LABELS = {
    "nbdmirror": "nbdmirror",
    "nbdkit": "nbdkit (page cache)",
    "nbdkit-nocache": "nbdkit cache=none",
    "raw": "raw O_DIRECT",
    "nbdkit-null": "nbdkit null (no I/O)",
    "raw-dsync": "raw O_DSYNC",
}
# The job whose goals have a floor that can be estimated from the two reference targets.
DURABLE_JOB = "w4k_qd1_flush"
JOBS = ["w4k_qd1_flush", "w4k_qd32", "r4k_qd1", "r4k_qd32", "seqw1m_qd8", "seqr1m_qd8"]
METRICS = ["iops", "mb_s", "clat_p50_us", "clat_p99_us", "flush_p50_us", "flush_p99_us",
           "disk_mb_s", "vm_hwm_mib", "server_cpu_s", "fio_cpu_pct"]
QD32_JOBS = ["w4k_qd32", "r4k_qd32"]
MEMORY_LIMIT_MIB = 64

# The goals nbdmirror is measured against: (job, baseline, minimum ratio of nbdmirror's IOPS).
GOALS = [
    ("w4k_qd1_flush", "nbdkit", 1.3),
    ("w4k_qd1_flush", "raw", 0.8),
    ("w4k_qd32", "raw", 0.9),
    ("r4k_qd32", "raw", 0.9),
    ("seqw1m_qd8", "raw", 0.9),
    ("seqr1m_qd8", "raw", 0.9),
]


def load_fio_json(path):
    """Parses fio's JSON output, skipping any text an engine printed before it."""
    text = path.read_text()
    start = text.find("{")
    if start < 0:
        raise ValueError(f"{path}: no JSON in fio output")
    return json.loads(text[start:])


def percentile_us(lat, pct):
    values = lat.get("percentile") or {}
    value = values.get(f"{pct:.6f}")
    return None if value is None else value / 1000.0


def fio_figures(fio):
    job = fio["jobs"][0]
    rw = job["job options"].get("rw", "")
    ddir = "write" if "write" in rw else "read"
    side = job[ddir]
    figures = {
        "direction": ddir,
        "iops": side["iops"],
        "mb_s": side["bw_bytes"] / 1e6,
        "clat_p50_us": percentile_us(side["clat_ns"], 50),
        "clat_p99_us": percentile_us(side["clat_ns"], 99),
        "fio_cpu_pct": job["usr_cpu"] + job["sys_cpu"],
        "fio_error": job.get("error", 0),
    }
    # fio leaves sync.total_ios at 0 even when it issued flushes; lat_ns.N counts them.
    sync_lat = job.get("sync", {}).get("lat_ns", {})
    if sync_lat.get("N", 0) > 0:
        figures["flushes"] = sync_lat["N"]
        figures["flush_p50_us"] = percentile_us(sync_lat, 50)
        figures["flush_p99_us"] = percentile_us(sync_lat, 99)
    return figures


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def collect(out_dir):
    meta = json.loads((out_dir / "meta.json").read_text())
    runs, problems = [], []
    for line in (out_dir / "runs.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        run = json.loads(line)
        tag = f"{run['job']} on {run['target']}, repetition {run['rep']}"
        run["ok"] = run["fio_rc"] == 0
        if run["ok"]:
            try:
                run.update(fio_figures(load_fio_json(out_dir / run["fio_json"])))
            except (OSError, ValueError, KeyError) as error:
                run["ok"] = False
                problems.append(f"{tag}: unreadable fio output: {error}")
            if run.get("fio_error"):
                run["ok"] = False
                problems.append(f"{tag}: fio reported error {run['fio_error']}")
        else:
            problems.append(f"{tag}: fio exited with status {run['fio_rc']}")
        if run.get("server_rc") not in (None, 0):
            problems.append(f"{tag}: server exited with status {run['server_rc']} after SIGTERM")
        if run["ok"] and run.get("wall_s"):
            moved = run["disk_write_bytes" if run["direction"] == "write" else "disk_read_bytes"]
            run["disk_mb_s"] = moved / run["wall_s"] / 1e6
        if run.get("vm_hwm_kib") is not None:
            run["vm_hwm_mib"] = run["vm_hwm_kib"] / 1024.0
        runs.append(run)

    jobs = [j for j in JOBS if any(r["job"] == j for r in runs)]
    jobs += sorted({r["job"] for r in runs} - set(jobs))
    targets = [t for t in TARGETS if any(r["target"] == t for r in runs)]

    medians = {}
    for job in jobs:
        for target in targets:
            ok = [r for r in runs if r["job"] == job and r["target"] == target and r["ok"]]
            if not ok:
                continue
            entry = {"runs": len(ok)}
            for metric in METRICS:
                entry[metric] = median_or_none([r.get(metric) for r in ok])
            entry["iops_min"] = min(r["iops"] for r in ok)
            entry["iops_max"] = max(r["iops"] for r in ok)
            medians.setdefault(job, {})[target] = entry

    ratios = {}
    for job in jobs:
        mine = medians.get(job, {}).get("nbdmirror")
        for base in targets:
            theirs = medians.get(job, {}).get(base)
            if base == "nbdmirror" or not mine or not theirs or not theirs["iops"]:
                continue
            ratios.setdefault(job, {})[base] = mine["iops"] / theirs["iops"]

    reach = best_reachable_iops(medians)
    goals = []
    for job, base, minimum in GOALS:
        if job not in jobs:
            continue
        ratio = ratios.get(job, {}).get(base)
        theirs = medians.get(job, {}).get(base)
        reach_ratio = None
        if job == DURABLE_JOB and reach and theirs and theirs["iops"]:
            reach_ratio = reach / theirs["iops"]
        goals.append({
            "name": f"{job}: nbdmirror IOPS >= {minimum}x {base}",
            "job": job, "baseline": base, "minimum": minimum, "value": ratio,
            "pass": None if ratio is None else ratio >= minimum,
            "reachable": reach_ratio,
        })
    hwm = [r["vm_hwm_mib"] for r in runs
           if r["ok"] and r["target"] == "nbdmirror" and r["job"] in QD32_JOBS and r.get("vm_hwm_mib")]
    goals.append({
        "name": f"nbdmirror VmHWM while serving QD32 < {MEMORY_LIMIT_MIB} MiB (max over runs)",
        "job": "+".join(QD32_JOBS), "baseline": None, "maximum_mib": MEMORY_LIMIT_MIB,
        "value": max(hwm) if hwm else None,
        "pass": None if not hwm else max(hwm) < MEMORY_LIMIT_MIB,
    })

    results = {"meta": meta, "jobs": jobs, "targets": targets, "runs": runs,
               "medians": medians, "ratios": ratios, "goals": goals, "problems": problems}
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def best_reachable_iops(medians):
    """Estimates the durable-write IOPS of an NBD server that adds nothing of its own.

    At QD1 with a FLUSH after each write, such a server still costs fio two NBD round trips
    (what nbdkit's null plugin measures, with no I/O behind them) and the disk one durable
    write (what the raw file does with O_DSYNC, the write carrying its own flush). Their times
    add: 1 / (1/null + 1/dsync). fio's own cost per I/O is in both, so this slightly
    underestimates; it is an estimate of the floor, not a measurement. None without both
    reference targets.
    """
    job = medians.get(DURABLE_JOB, {})
    null, dsync = job.get("nbdkit-null"), job.get("raw-dsync")
    if not null or not dsync or not null["iops"] or not dsync["iops"]:
        return None
    return 1.0 / (1.0 / null["iops"] + 1.0 / dsync["iops"])


def fmt(value, digits=0):
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}x"


def fmt_pass(value):
    return {True: "PASS", False: "FAIL", None: "n/a"}[value]


def goal_cell(results, job):
    cells = []
    for goal in results["goals"]:
        if goal["job"] == job and goal["baseline"]:
            cells.append(f"{fmt_pass(goal['pass'])} (≥{goal['minimum']}x {goal['baseline']})")
    return "; ".join(cells) or "—"


def summary_table(results):
    targets, ratios = results["targets"], results["ratios"]
    bases = [t for t in targets if t != "nbdmirror"]
    head = (["job"] + [f"{TARGET_LABELS[t]} IOPS" for t in targets]
            + [f"nbdmirror/{b}" for b in bases] + ["goal"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job in results["jobs"]:
        row = [job]
        for target in targets:
            row.append(fmt(results["medians"].get(job, {}).get(target, {}).get("iops")))
        row += [fmt_ratio(ratios.get(job, {}).get(b)) for b in bases]
        row.append(goal_cell(results, job))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def detail_table(results):
    head = ["job", "target", "IOPS median [min–max]", "MB/s", "disk MB/s", "clat p50 µs",
            "clat p99 µs",
            "flush p50 µs", "flush p99 µs", "server VmHWM MiB", "server CPU s", "runs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for job in results["jobs"]:
        for target in results["targets"]:
            m = results["medians"].get(job, {}).get(target)
            if not m:
                lines.append(f"| {job} | {TARGET_LABELS[target]} |" + " — |" * (len(head) - 2))
                continue
            lines.append("| " + " | ".join([
                job, TARGET_LABELS[target],
                f"{fmt(m['iops'])} [{fmt(m['iops_min'])}–{fmt(m['iops_max'])}]",
                fmt(m["mb_s"], 1), fmt(m["disk_mb_s"], 1), fmt(m["clat_p50_us"]), fmt(m["clat_p99_us"]),
                fmt(m["flush_p50_us"]), fmt(m["flush_p99_us"]), fmt(m["vm_hwm_mib"], 1),
                fmt(m["server_cpu_s"], 1), str(m["runs"]),
            ]) + " |")
    return "\n".join(lines)


def goals_table(results):
    reach = any(goal.get("reachable") is not None for goal in results["goals"])
    head = ["goal", "measured", "result"]
    if reach:
        head.append("a server adding nothing, estimated")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for goal in results["goals"]:
        if goal["baseline"]:
            measured = fmt_ratio(goal["value"])
        else:
            measured = "—" if goal["value"] is None else f"{goal['value']:.1f} MiB"
        row = [goal["name"], measured, fmt_pass(goal["pass"])]
        if reach:
            row.append(fmt_ratio(goal.get("reachable")))
        lines.append("| " + " | ".join(row) + " |")
    if reach:
        lines += ["", "The last column is the estimate for an NBD server whose only costs are "
                  "the two round trips nbdkit's null plugin measures and the raw file's O_DSYNC "
                  "write: 1 / (1/null + 1/dsync) IOPS against the goal's baseline."]
    return "\n".join(lines)


def markdown(results):
    meta = results["meta"]
    parts = [
        "# nbdmirror benchmark",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- git commit: {meta['git_commit']}"
        + (f" ({meta['git_dirty']} tracked files modified)" if meta["git_dirty"] != "0" else ""),
        f"- nbdmirror binary: {meta['nbdmirror_bin']} (sha256 {meta['nbdmirror_sha256'][:16]}…)",
        f"- {meta['fio_version']}, {meta['nbdkit_version']}, kernel {meta['kernel']}",
        f"- {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']}",
        f"- backing files in {meta['tmpdir']} ({meta['fs']} on {meta['device']}, scheduler "
        f"`{meta['scheduler']}`, write cache `{meta['write_cache']}`, rotational "
        f"{meta['rotational']}), {meta['size']} each, fully written",
        f"- {meta['reps']} repetitions of {meta['runtime_s']} s (+2 s ramp) per job and target;"
        " medians shown",
        f"- load average at start: {meta['loadavg_start']}; at end: {meta.get('loadavg_end', '?')}",
        f"- servers' CPUs: {meta.get('server_cpus', 'inherited')}",
        "",
        "## IOPS (median) and ratios",
        "",
        summary_table(results),
        "",
        "## Goals",
        "",
        goals_table(results),
        "",
        "## Details (medians)",
        "",
        "clat is fio's completion latency of the job's reads or writes; for w4k_qd1_flush the "
        "flush columns are the latency of the NBD FLUSH (or fdatasync on the raw file) that "
        "follows each write. Server figures are per run: VmHWM is the peak resident set, "
        "CPU is user+system seconds over the whole run including the ramp. disk MB/s is what "
        "reached the whole block device in the job's direction over the run's wall time (ramp "
        "included, other users of the disk too): near MB/s for O_DIRECT, lower when a page "
        "cache absorbs the I/O.",
        "",
        detail_table(results),
        "",
    ]
    if results["problems"]:
        parts += ["## Problems", ""] + [f"- {p}" for p in results["problems"]] + [""]
    return "\n".join(parts)


def chart(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    jobs, targets = results["jobs"], results["targets"]
    bases = [t for t in targets if t != "nbdmirror"]
    colors = {"nbdmirror": "#1f77b4", "nbdkit": "#ff7f0e", "nbdkit-nocache": "#d62728",
              "raw": "#2ca02c", "nbdkit-null": "#7f7f7f", "raw-dsync": "#17becf"}
    fig, (ax_ratio, ax_lat) = plt.subplots(2, 1, figsize=(13, 10))

    width = 0.8 / max(len(bases), 1)
    for i, base in enumerate(bases):
        xs = [j + (i - (len(bases) - 1) / 2) * width for j in range(len(jobs))]
        ys = [results["ratios"].get(job, {}).get(base) or 0 for job in jobs]
        bars = ax_ratio.bar(xs, ys, width, label=f"nbdmirror / {TARGET_LABELS[base]}",
                            color=colors[base])
        ax_ratio.bar_label(bars, labels=[f"{y:.2f}" if y else "" for y in ys], fontsize=7)
        for goal in results["goals"]:
            if goal["baseline"] == base and goal["job"] in jobs:
                x = xs[jobs.index(goal["job"])]
                ax_ratio.hlines(goal["minimum"], x - width / 2, x + width / 2, colors="black",
                                linewidth=2)
    ax_ratio.axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
    ax_ratio.set_xticks(range(len(jobs)), jobs)
    ax_ratio.set_ylabel("IOPS ratio (median)")
    ax_ratio.set_title("nbdmirror IOPS relative to each baseline (black bars: goal minimum)")
    ax_ratio.legend(fontsize=8)

    # Latency groups: each job's reads or writes, plus the flushes of the flush job.
    groups = [(job, job, "clat") for job in jobs]
    if any(results["medians"].get(job, {}).get(t, {}).get("flush_p50_us")
           for job in jobs for t in targets):
        groups += [(job, f"{job}\n(flushes)", "flush") for job in jobs
                   if any(results["medians"][job].get(t, {}).get("flush_p50_us")
                          for t in targets)]
    width = 0.8 / len(targets)
    for i, target in enumerate(targets):
        xs = [g + (i - (len(targets) - 1) / 2) * width for g in range(len(groups))]
        p50, p99 = [], []
        for job, _, kind in groups:
            m = results["medians"].get(job, {}).get(target, {})
            p50.append(m.get(f"{kind}_p50_us") or 0)
            p99.append(m.get(f"{kind}_p99_us") or float("nan"))
        ax_lat.bar(xs, p50, width, color=colors[target], label=f"{TARGET_LABELS[target]} p50")
        ax_lat.scatter(xs, p99, color=colors[target], edgecolors="black", marker="v", zorder=3,
                       s=30)
    ax_lat.scatter([], [], color="white", edgecolors="black", marker="v", label="p99")
    ax_lat.set_yscale("log")
    ax_lat.set_xticks(range(len(groups)), [label for _, label, _ in groups])
    ax_lat.set_ylabel("latency, µs (log)")
    ax_lat.set_title("completion latency p50 (bars) and p99 (triangles), medians over "
                     "repetitions")
    ax_lat.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=5)

    meta = results["meta"]
    fig.suptitle(f"nbdmirror {meta['git_commit']} — {meta['date']} — {meta['nproc']} CPUs, "
                 f"{meta['size']} files, {meta['reps']}x{meta['runtime_s']} s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results_path):
    results = json.loads(results_path.read_text())
    text = markdown(results)
    (results_path.parent / "results.md").write_text(text)
    chart(results, results_path.parent / "chart.png")
    print(text)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[1])
    if target.is_dir():
        target = collect(target)
    render(target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
