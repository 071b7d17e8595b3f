"""Where paths may point. Object-store URLs (``gs://``, ``s3://``, ...) are not supported yet as
workdirs, checkpoints, results or caches: every such path is refused in one line naming the
recipe that works today (mount the bucket), instead of becoming a local directory named like the
URL (``gs:/bucket/run``) that fails at the first save.
"""

from __future__ import annotations

import re

URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
RECIPE = (
  "mount the bucket and give the mounted path (e.g. `gcsfuse --implicit-dirs BUCKET /mnt/BUCKET`, "
  "then /mnt/BUCKET/...)"
)


class URLPathError(ValueError):
  """A path that is an object-store URL; one line."""


def check_local(what: str, path) -> None:
  """Refuses ``path`` (named ``what``, e.g. '--workdir' or 'config.pretrained') when it is a
  URL."""
  if path and URL.match(str(path)):
    scheme = str(path).split("://")[0]
    raise URLPathError(
      f"{what}={path}: {scheme}:// paths are not supported yet (they would become a local "
      f"directory named {str(path).replace('://', ':/', 1)}); {RECIPE}"
    )
