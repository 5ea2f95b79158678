"""audit: compare a simulator manifest with what one or more gateways stored, and say what was lost.

    files.py    which files a data directory holds, read under its shared lock
    expected.py what the manifest says was sent, per device (a byte per seq) and per fault
    compare.py  each stored line and dead-letter record against what was sent
    report.py   the result: per device, the total, the verdict, as JSON
    table.py    the result for people
    command.py  `gateway audit`

Keyed by (device_id, seq) for formats whose readings carry seq (json, json_batch); SenML and bare
values carry none, so for them only the number of metric values per device is compared.
Rejecting faults are matched to dead-letter records by the digest of the exact payload bytes.
`ok` means: no valid reading missing, and every rejecting fault dead-lettered with its reason.
Duplicates are counted and allowed: readings without seq are stored at least once, and those
with a seq once only within the limits of the dedupe window (README, Delivery guarantees).
"""

from gateway.audit.command import main_audit
from gateway.audit.compare import audit
from gateway.audit.report import AuditReport, DeviceAudit
from gateway.audit.table import format_table

__all__ = ["AuditReport", "DeviceAudit", "audit", "format_table", "main_audit"]
