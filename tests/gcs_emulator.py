"""A local GCS API for tests: PyPI's ``gcp-storage-emulator``, started in its own process.

    python tests/gcs_emulator.py PORT BUCKET

The emulator serves GCS's JSON API (gcsfs and tensorstore talk to it through
``STORAGE_EMULATOR_HOST`` / ``TENSORSTORE_GCS_HTTP_URL``) but leaves out object generations on
reads and object preconditions, which GCS documents and two clients rely on: tensorstore's OCDBT
driver (Orbax's checkpoint format) updates its manifest with conditional writes, and
big_transfer's workdir lock is created with ``ifGenerationMatch=0``. This launcher adds exactly
those GCS semantics to the emulator's handlers and changes nothing else:
  - every media download carries ``x-goog-generation`` (and ``x-goog-metageneration``);
  - ``ifGenerationMatch=G`` on an upload, a read or a delete: 412 Precondition Failed unless
    the object's generation is G (0: the object does not exist);
  - ``ifGenerationNotMatch=G`` on a read: 304 Not Modified when the generation is G;
checked and applied under one lock, as GCS does atomically.

Outages on demand: with ``BT_GCS_FAULTS`` naming a file, while that file exists and holds
``{"status": 503, "ops": ["read", "write", "list", "delete", "bucket"], "match": "", "until":
EPOCH}`` (every key optional), matching requests are answered with that status and
"Service Unavailable" instead of being served: ``ops`` the kinds of request, ``match`` a
substring of the object's name, ``until`` when the outage ends (absent: while the file exists).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from http import HTTPStatus


def _object_name(request) -> str | None:
  params = getattr(request, "params", None) or {}
  if params.get("object_id"):
    return params["object_id"]
  if "name" in request.query:
    return request.query["name"][0]
  data = request.data
  if isinstance(data, dict):
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
    return meta.get("name")
  return None


def add_generations_and_preconditions() -> None:
  from gcp_storage_emulator.exceptions import NotFound
  from gcp_storage_emulator.handlers import objects

  lock = threading.RLock()

  def current(request, storage) -> str:
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], _object_name(request))
      return str(obj["generation"])
    except (NotFound, KeyError, TypeError):
      return "0"

  def wrap(handler, is_read: bool):
    def handle(request, response, storage, *args, **kwargs):
      if "upload_id" in request.query:  # a resumable upload's chunk: checked when it began
        return handler(request, response, storage, *args, **kwargs)
      with lock:
        gen = current(request, storage)
        match = request.query.get("ifGenerationMatch")
        if match and gen != str(match[0]):
          response.status = HTTPStatus.PRECONDITION_FAILED
          response.json({"error": {"code": 412, "message": "Precondition Failed"}})
          return None
        not_match = request.query.get("ifGenerationNotMatch")
        if is_read and not_match and gen != "0" and gen == str(not_match[0]):
          response.status = HTTPStatus.NOT_MODIFIED
          response["x-goog-generation"] = gen
          return None
        out = handler(request, response, storage, *args, **kwargs)
        if is_read and gen != "0":
          response["x-goog-generation"] = gen
          response["x-goog-metageneration"] = "1"
        return out

    return handle

  objects.insert = wrap(objects.insert, is_read=False)
  objects.download = wrap(objects.download, is_read=True)
  objects.delete = wrap(objects.delete, is_read=False)
  get = objects.get

  def get_media_through_download(request, response, storage, *args, **kwargs):
    if request.query.get("alt") and request.query.get("alt")[0] == "media":
      return objects.download(request, response, storage)
    return get(request, response, storage, *args, **kwargs)

  objects.get = wrap(get_media_through_download, is_read=False)


def _fault() -> dict | None:
  path = os.environ.get("BT_GCS_FAULTS")
  if not path or not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      fault = json.load(f)
  except (OSError, ValueError):
    return None
  if fault.get("until") and time.time() >= fault["until"]:
    return None
  return fault


def add_faults() -> None:
  """Every object and bucket handler answers the outage of ``BT_GCS_FAULTS`` when one is on."""
  from gcp_storage_emulator.handlers import buckets, objects

  kinds = {
    (objects, "insert"): "write",
    (objects, "upload_partial"): "write",
    (objects, "xml_upload"): "write",
    (objects, "compose"): "write",
    (objects, "copy"): "write",
    (objects, "rewrite"): "write",
    (objects, "patch"): "write",
    (objects, "download"): "read",
    (objects, "get"): "read",
    (objects, "ls"): "list",
    (objects, "delete"): "delete",
    (buckets, "get"): "bucket",
  }

  def wrap(handler, kind):
    def handle(request, response, storage, *args, **kwargs):
      fault = _fault()
      name = _object_name(request) or ""
      if (
        fault
        and kind in fault.get("ops", (kind,))
        and fault.get("match", "") in name
        and (kind != "list" or not fault.get("match"))
      ):
        status = int(fault.get("status", 503))
        response.status = HTTPStatus(status)
        response.json({"error": {"code": status, "message": "Service Unavailable"}})
        return None
      return handler(request, response, storage, *args, **kwargs)

    return handle

  for (module, name), kind in kinds.items():
    setattr(module, name, wrap(getattr(module, name), kind))


def main(port: int, bucket: str) -> None:
  add_generations_and_preconditions()  # before the server module binds the handlers
  add_faults()
  from gcp_storage_emulator.server import create_server

  server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
  server.run()


if __name__ == "__main__":
  main(int(sys.argv[1]), sys.argv[2])
