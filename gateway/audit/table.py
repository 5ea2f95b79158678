"""The audit's result for people: every device with something to report, the total, the verdict."""

from __future__ import annotations

from gateway.audit.report import AuditReport, DeviceAudit

MAX_TABLE_ROWS = 50
# Fault kinds whose rejection depends on the gateway's config: what the audit then says.
NEEDS_CONFIG = {
    "out_of_range": "a gateway rejects these only with a check_range step on the metric the "
    "simulator puts out of range (temperature; e.g. min -60, max 150): see README, "
    "Simulators and the audit",
}


_COLUMNS = (
    ("expected", "expected"),
    ("found", "found"),
    ("missing", "missing"),
    ("duplicated", "dup"),
    ("unexpected", "unexpected"),
    ("faults_expected", "faults"),
    ("faults_found", "dead-lettered"),
    ("faults_missing", "not-dead-lettered"),
    ("faults_wrong_reason", "wrong-reason"),
)


def format_table(report: AuditReport) -> str:
    """A table for people: every device with something to report, then the total and verdict."""
    unit = "readings, by (device, seq)" if report.keyed_by == "seq" else "metric values, counted"
    lines = [
        f"audit of {report.manifest} against {report.data_dir}",
        f"format {report.format}, qos {report.qos}; {unit}",
        "",
    ]
    width = max([len("device"), *(len(d.device_id) for d in report.devices[:MAX_TABLE_ROWS])])
    lines.append(
        "device".ljust(width) + "".join(f"  {title:>{len(title)}}" for _, title in _COLUMNS)
    )

    def row(d: DeviceAudit) -> str:
        cells = "".join(f"  {getattr(d, name):>{len(title)},}" for name, title in _COLUMNS)
        return d.device_id.ljust(width) + cells

    troubled = [d for d in report.devices if not d.clean]
    lines.extend(row(d) for d in troubled[:MAX_TABLE_ROWS])
    if len(troubled) > MAX_TABLE_ROWS:
        lines.append(f"... and {len(troubled) - MAX_TABLE_ROWS:,} more devices with something")
    lines.append(row(report.total))
    lines.append(
        f"({len(report.devices):,} devices, {len(report.devices) - len(troubled):,} clean; "
        f"{report.data_files:,} data files ({report.parquet_files:,} Parquet, "
        f"{report.open_files:,} open), {report.data_lines:,} lines; "
        f"{report.dead_letter_files:,} dead-letter files, {report.dead_letter_records:,} records)"
    )
    for d in troubled[:MAX_TABLE_ROWS]:
        if d.missing_seqs:
            spans = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in d.missing_seqs)
            more = " ..." if d.missing > sum(b - a + 1 for a, b in d.missing_seqs) else ""
            lines.append(f"missing {d.device_id}: seq {spans}{more}")
        if d.dead_lettered_valid:
            lines.append(f"dead-lettered valid readings {d.device_id}: {d.dead_lettered_valid}")
    lines.extend(
        f"wrong reason {w.device_id} seq {w.seq} ({w.kind}): expected {w.expected}, got {w.got}"
        for w in report.wrong_reasons
    )
    for kind, count in report.faults_missing_by_kind.items():
        stored = report.faults_stored_by_kind.get(kind, 0)
        line = f"faults not dead-lettered: {kind} {count:,}"
        if stored:
            line += f" ({stored:,} stored as readings instead)"
        if kind in NEEDS_CONFIG:
            line += f"; {NEEDS_CONFIG[kind]}"
        lines.append(line)
    if report.dead_letter_unmatched:
        found = ", ".join(f"{r} {n:,}" for r, n in report.dead_letter_unmatched.items())
        lines.append(f"dead-letter records matching nothing sent: {found}")
    if report.unknown_device_lines:
        lines.append(f"data lines of devices not in the manifest: {report.unknown_device_lines:,}")
    if report.bad_lines:
        lines.append(f"lines that are not JSON records: {report.bad_lines:,}")
    lines.extend(f"note: {note}" for note in report.notes)
    t = report.total
    if report.ok:
        verdict = "OK: nothing valid missing, every rejected fault dead-lettered with its reason"
        if t.duplicated:
            verdict += f" ({t.duplicated:,} duplicates: at least once)"
    else:
        problems = [
            f"{t.missing:,} missing" if t.missing else "",
            f"{t.faults_missing:,} faults not dead-lettered ({_by_kind(report)})"
            if t.faults_missing
            else "",
            f"{t.faults_wrong_reason:,} with the wrong reason" if t.faults_wrong_reason else "",
        ]
        verdict = "NOT OK: " + ", ".join(p for p in problems if p)
    lines.append(verdict)
    return "\n".join(lines)


def _by_kind(report: AuditReport) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in report.faults_missing_by_kind.items())
