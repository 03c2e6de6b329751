"""Where a store lives: a local (or shared-filesystem) path, or an object-store URL (``s3://``,
``gs://``, ``az://``) opened through zarr's :class:`zarr.storage.ObjectStore` on obstore.

Credentials and endpoints come from the usual environment of each provider (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``;
``GOOGLE_APPLICATION_CREDENTIALS``, ``GOOGLE_SERVICE_ACCOUNT``; ``AZURE_STORAGE_*``), read by obstore
in the process that opens the store. :func:`credential_environment` gives those of this process so
that the writer actor, on whatever node, sees the same ones.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import StoreError, first_line

OBJECT_STORE_SCHEMES = ("s3", "gs", "az")
_CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "AZURE_")


def is_url(target: str | Path) -> bool:
    """Whether ``target`` names a store by URL (``scheme://...``) rather than a path."""
    return isinstance(target, str) and "://" in target


def check_url(url: str) -> str:
    """``url`` when it is an object-store URL anomstream can write, else StoreError (one line)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme not in OBJECT_STORE_SCHEMES:
        known = ", ".join(f"{s}://" for s in OBJECT_STORE_SCHEMES)
        raise StoreError(f"{url}: unknown store scheme {scheme + '://'!r}; a store is a path or an object-store URL "
                         f"({known})")
    bucket_and_key = url.split("://", 1)[1]
    if "/" not in bucket_and_key.strip("/"):
        raise StoreError(f"{url}: name the store inside the bucket, e.g. {scheme}://{bucket_and_key.strip('/')}/run.zarr")
    return url


def zarr_store(target: str | Path, read_only: bool = False) -> Any:
    """What :func:`zarr.open_group` takes for ``target``: the path as a string, or an ObjectStore
    for a URL. Raises StoreError for an unknown scheme or a URL obstore cannot configure."""
    if not is_url(target):
        return str(target)
    check_url(str(target))
    try:
        from obstore.store import from_url
    except ImportError:
        raise StoreError(f"{target}: stores on object storage need obstore: pip install 'anomstream[cloud]'") from None
    from zarr.storage import ObjectStore

    try:
        return ObjectStore(from_url(str(target)), read_only=read_only)
    except StoreError:
        raise
    except Exception as error:  # noqa: BLE001 - obstore's configuration errors
        raise StoreError(f"{target}: cannot open the object store ({first_line(error, 300)})") from None


def holds_objects(target: str | Path) -> bool:
    """Whether anything is stored under ``target`` (a non-empty folder, any object under the URL's
    prefix). For a URL this is one list request, so missing credentials, an unreachable endpoint
    or a missing bucket are found here: StoreError (one line) before any work starts."""
    if not is_url(target):
        path = Path(target)
        return path.exists() and any(path.iterdir()) if path.is_dir() else path.exists()
    store = zarr_store(target).store  # an unknown scheme or obstore missing: its one line first
    import obstore

    try:
        return any(len(chunk) for chunk in obstore.list(store, chunk_size=1))
    except Exception as error:  # noqa: BLE001 - credentials, network, bucket
        raise StoreError(f"{target}: cannot list the object store ({first_line(error, 300)}); check the bucket, the "
                         f"endpoint and the credentials in the environment (AWS_*, GOOGLE_*, AZURE_*)") from None


def store_name(target: str | Path) -> PurePosixPath:
    """The store's last path component as a path (``s3://b/jobs/run.zarr`` -> ``run.zarr``; a path
    stays itself): what files kept beside a store are named after."""
    if is_url(target):
        return PurePosixPath(str(target).rstrip("/").rsplit("/", 1)[1])
    return PurePosixPath(Path(target))


def credential_environment() -> dict[str, str]:
    """This process's object-store credentials and endpoints (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``
    variables), for the runtime environment of an actor that opens the store."""
    return {key: value for key, value in os.environ.items() if key.startswith(_CREDENTIAL_PREFIXES)}
