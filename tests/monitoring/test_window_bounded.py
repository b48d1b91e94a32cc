"""The monitor's read of a window is bounded in memory whatever was captured (issue 14, section 1).

Capture files as the old capture wrote them (no caps: half-megabyte strings in a feature column)
are read by the window reader in a fresh process, which reports its peak RSS (VmHWM, reset just
before reading) above what it held before reading. The control reads the same files the way the old reader did (`pd.read_parquet`
of every file, concatenated), so the bound is shown to be one the old reader breaks. A file whose
column chunk alone decodes past the reader's limit is skipped and reported, not read.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workloads import layout
from workloads.data.sample import generate

NOW = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)
BIG = 512 * 1024  # characters per hostile string
FILES, ROWS = 8, 40  # 8 files of 40 rows: 160 MiB of strings decoded
BOUND_MB = 200  # what the window reader may add to its peak RSS (measured: ~150, whatever the file count)

READER = r"""
import json, sys
from pathlib import Path
import pandas as pd
from tests.monitoring.memory_s3 import MemoryS3
from workloads.data.sample import generate
from workloads.monitoring.profile import ReferenceProfile
from workloads.monitoring.reference import Champion
from workloads.monitoring.window import describe, read_window

mode, folder, now = sys.argv[1], Path(sys.argv[2]), pd.Timestamp(sys.argv[3]).to_pydatetime()
s3 = MemoryS3()
for path in sorted(folder.rglob("*.parquet")):
    s3.put_object(Bucket="b", Key=str(path.relative_to(folder)), Body=path.read_bytes())
reference = generate(2000, seed=1).drop(columns=["customer_id", "churned"])
profile = ReferenceProfile.build(reference)
champion = Champion(name="m", version="1", run_id=None, features=list(reference.columns),
                    tags={"mlops.dataset.digest": "d", "mlops.dataset.uri": "s3://d/x"})
labels = pd.DataFrame({"request_id": ["r0-0", "r3-1"], "row": [0, 1], "label": [1, 0]})


def status(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


before = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) from here on
if mode == "window":
    window = read_window(s3, "b", "e", hours=24, now=now)
    current = window.current(champion, profile, None, exact_rows=1_000_000)
    labelled = window.labelled(labels)
    out = {"rows": len(window), "labelled": len(labelled), "contract": current.columns["contract"].counts.size,
           "described": describe(window, hours=24, records=None, now=now)}
else:  # the old reader: every file whole, concatenated
    frames = [pd.read_parquet(__import__("io").BytesIO(b)) for k, b in s3.objects.items()]
    out = {"rows": len(pd.concat(frames, ignore_index=True))}
out["peak_mb"] = status("VmHWM") - before
print(json.dumps(out))
"""


def _old_capture_file(path: Path, frame: pd.DataFrame) -> None:
    """As capture wrote before the caps: inferred types, strings dictionary-encoded, one row group."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, use_dictionary=["contract", "_request_id"])


def _write_window(folder: Path) -> None:
    hour = NOW - timedelta(minutes=30)
    for i in range(FILES + 1):
        rows = ROWS if i < FILES else 300  # the last one: 150 MiB in one column chunk
        frame = generate(rows, seed=i).drop(columns=["customer_id", "churned"])
        frame["contract"] = [f"{i}-{j}-" + "x" * BIG for j in range(rows)]
        frame["_request_id"] = [f"r{i}-{j // 2}" for j in range(rows)]
        frame["_row"] = np.arange(rows) % 2
        frame["_ts"] = pd.Timestamp(hour)
        _old_capture_file(folder / layout.capture_key("e", hour, f"f{i}"), frame)


def _run(mode: str, folder: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", READER, mode, str(folder), NOW.isoformat()],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_window_of_huge_strings_is_read_in_bounded_memory(tmp_path: Path) -> None:
    _write_window(tmp_path)
    bounded = _run("window", tmp_path)
    assert bounded["rows"] == FILES * ROWS  # the oversized file is not counted: it cannot be read
    described = bounded["described"]
    assert described["skipped_files"] == 1 and "MiB" in described["skipped"][0]
    assert bounded["labelled"] == 2
    assert bounded["contract"] == 100 + 1  # unseen values counted one by one up to the cap, the rest together
    assert bounded["peak_mb"] < BOUND_MB, bounded
    old = _run("old", tmp_path)
    assert old["peak_mb"] > 2 * BOUND_MB, old  # the old reader: every string, whole
