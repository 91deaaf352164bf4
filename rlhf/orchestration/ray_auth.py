"""Ray's token authentication for a local cluster, with the token kept beside Ray's other files.

A fresh `ray.init()` turns token authentication on and writes its token to `~/.ray/auth_token`.
Here the token goes to `<Ray's temp dir>/auth_token`, beside Ray's session folders (Ray's temp
dir is `<RAY_TMPDIR>/ray`; `rlhf.main` puts RAY_TMPDIR under the work folder) and Ray is pointed
at it with `RAY_AUTH_TOKEN_PATH`; nothing is written to the home folder. Settings the user made
(`RAY_AUTH_*`) are left alone.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path


def keep_token_local() -> Path | None:
    if any(k in os.environ for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return None
    folder = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray"
    path = folder / "auth_token"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"auth_token.{os.getpid()}.tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        tmp.replace(path)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    return path
