"""Process lookups shared by the tests that kill or stop a driver."""

import os
from pathlib import Path


def session_processes(sid: int) -> list[int]:
    """Processes of session `sid` (a driver started with start_new_session, and its children)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3]) == sid:
                found.append(int(pid))
        except (OSError, IndexError):
            pass
    return found
