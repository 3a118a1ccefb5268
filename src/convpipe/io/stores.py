"""Where inputs and outputs live: a local path or a bucket URL, behind one zarr store layer.

Every path in a config may be a local path or a URL (``s3://``, ``gs://``, ``az://``, read-only
``https://``/``http://``, ``file://``). ``parse`` turns it into a ``Location``: a small, hashable,
picklable value that travels in task graphs; each process reopens the store from it (``open_store``
caches one per process), so no client or connection pool is ever pickled.

Secrets never show: ``Location.display`` drops userinfo and query strings, ``repr`` hides the
storage secrets, and ``redact``/``describe_error`` replace every known secret value (the config's
storage secrets and the provider's credential variables) with ``***``.

Backend: remote stores are zarr's ``ObjectStore`` over obstore (Rust ``object_store``), chosen by
measurement: ``scripts/bench_stores.py`` writes then reads 64 uncompressed 4 MiB chunks through zarr
against a local moto S3 server, one fresh process per run, backends alternating. Medians of 5 rounds:
obstore 2.3 s write / 1.7 s read, FsspecStore over s3fs 4.3 s / 4.3 s, peak RSS about the same
(703 vs 720 MiB, of which 512 MiB are the data and its read-back copy). obstore also reads the
provider's standard environment itself and has bounded timeouts and retries we can set per store.
"""

from __future__ import annotations

import bisect
import configparser
import contextlib
import functools
import io
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlsplit

from convpipe.errors import ConfigError, RunError

if TYPE_CHECKING:
    import zarr.abc.store

STORAGE_KEYS: dict[str, str] = {
    "endpoint": "service URL, e.g. http://127.0.0.1:9000 for MinIO (an http:// endpoint allows plain HTTP)",
    "region": "bucket region, e.g. eu-west-1",
    "anonymous": "true: unsigned requests, for public buckets",
    "allow_http": "true: allow plain-HTTP endpoints (set automatically for an http:// endpoint)",
    "access_key_id": "secret: overrides AWS_ACCESS_KEY_ID",
    "secret_access_key": "secret: overrides AWS_SECRET_ACCESS_KEY",
    "session_token": "secret: overrides AWS_SESSION_TOKEN",
    "profile": "AWS profile name in ~/.aws/credentials or ~/.aws/config (overrides AWS_PROFILE)",
}
"""The keys allowed in a config's ``input.storage``/``output.storage`` mapping, with what each does."""

SECRET_KEYS = {"access_key_id", "secret_access_key", "session_token"}

_BOOL_KEYS = {"anonymous", "allow_http"}
_REMOTE_SCHEMES = ("s3", "gs", "az", "http", "https")
_SCHEMES = ("file", *_REMOTE_SCHEMES)
_ALLOWED_TEXT = "a local path, file://, s3://bucket/..., gs://bucket/..., az://container/..., https://... or http://..."
# Provider variables holding secrets: redacted wherever they show up.
_SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_BEARER_TOKEN",
)
_SECRETS: set[str] = set()  # values seen by parse (storage secrets, URL passwords and query values)
_SECRETS_LOCK = threading.Lock()
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")
_PROBE_CLIENT = {"connect_timeout": "3s", "timeout": "6s"}
_PROBE_RETRY = {
    "max_retries": 1,
    "retry_timeout": timedelta(seconds=6),
    "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(milliseconds=500), "base": 2},
}


def _remember_secret(value: str) -> None:
    if value:
        with _SECRETS_LOCK:
            _SECRETS.add(value)


@dataclass(frozen=True)
class Location:
    """A local path or a bucket URL plus its storage settings: what task graphs carry instead of a store."""

    url: str
    storage: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_KEYS else v) for k, v in self.storage}
        return f"Location({self.display!r}" + (f", storage={shown!r})" if shown else ")")

    def __str__(self) -> str:
        return self.display

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0] if "://" in self.url else "file"

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def is_remote(self) -> bool:
        return not self.is_local

    @property
    def writable(self) -> bool:
        return self.scheme not in ("http", "https")

    @property
    def bucket(self) -> str:
        """The bucket (s3/gs), container (az) or host (http) of a remote location; "" for a local one."""
        if self.is_local:
            return ""
        if self.scheme in ("http", "https"):
            parts = urlsplit(self.url)
            return _host(parts)
        return self.url.split("/")[2]

    @property
    def path(self) -> str:
        if self.is_local:
            return self.url
        if self.scheme in ("http", "https"):
            return urlsplit(self.url).path.strip("/")
        return self.url.split("/", 3)[3] if self.url.count("/") >= 3 else ""

    @property
    def name(self) -> str:
        if self.is_local:
            return os.path.basename(self.url) or self.url
        return self.path.rsplit("/", 1)[-1] if self.path else self.bucket

    @property
    def display(self) -> str:
        if self.is_local:
            return self.url
        if self.scheme in ("http", "https"):
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{_host(parts)}{parts.path}".rstrip("/")
        return self.url

    @property
    def root(self) -> Location:
        """The bucket's root (or, for http, this very URL): where single-object requests are made from."""
        if self.is_local or self.scheme in ("http", "https"):
            return self
        return Location(f"{self.scheme}://{self.bucket}", self.storage)

    def joinpath(self, *parts: str) -> Location:
        pieces = [p for part in parts for p in str(part).split("/") if p]
        if self.is_local:
            return Location(os.path.normpath(os.path.join(self.url, *pieces)), self.storage)
        _check_segments(pieces, self.display)
        return Location("/".join([self._base_url(), *pieces]), self.storage)

    @property
    def parent(self) -> Location:
        if self.is_local:
            return Location(os.path.dirname(self.url) or self.url, self.storage)
        if not self.path:
            return self
        head = self.path.rsplit("/", 1)[0] if "/" in self.path else ""
        base = self._base_url()
        root = base[: len(base) - len(self.path)].rstrip("/")
        return Location(f"{root}/{head}" if head else root, self.storage)

    def with_name(self, name: str) -> Location:
        return self.parent.joinpath(name)

    def _base_url(self) -> str:
        """The URL without a query string: a signed query is valid for one object, not its neighbours."""
        if self.scheme in ("http", "https"):
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
        return self.url


def _host(parts: Any) -> str:
    """host[:port] of a split URL, without userinfo (IPv6 hosts keep their brackets)."""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        return f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return host


def _check_segments(pieces: list[str], shown: str) -> None:
    if any(p in (".", "..") for p in pieces):
        raise ConfigError(f"{shown}: '.' and '..' are not allowed in a URL path")


def is_url(text: str) -> bool:
    """True for text naming one of the schemes convpipe reads or writes (``scheme://``)."""
    match = _SCHEME_RE.match(str(text))
    return bool(match) and match.group(1).lower() in _SCHEMES and str(text)[match.end() :].startswith("//")


def parse(text: str | Path, base_dir: str | Path | None = None, storage: Mapping[str, Any] | None = None) -> Location:
    """Turn a config path into a ``Location``; anything that is neither a path nor a known URL is a ConfigError."""
    text = os.fspath(text)
    items = check_storage(storage or {})
    match = _SCHEME_RE.match(text)
    if match is None or not text[match.end() :].startswith("/"):  # "a:b/c" is a local name, "s3:/b" a bad URL
        return Location(_local_path(text, base_dir))
    scheme = match.group(1).lower()
    rest = text[match.end() :]
    if scheme not in _SCHEMES or not rest.startswith("//"):
        raise ConfigError(f"{_shown_text(text)}: not a path or a supported URL (use {_ALLOWED_TEXT})")
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(f"{_shown_text(text)}: file:// URLs must be local (file:///path)")
        from urllib.parse import unquote

        return Location(_local_path(unquote(parts.path) or "/", base_dir))
    if scheme in ("http", "https"):
        return _parse_http(text, scheme, items)
    return _parse_bucket(text, scheme, rest[2:], items)


def _shown_text(text: str) -> str:
    """A rejected path for an error message, userinfo and query removed."""
    return redact(re.sub(r"\?.*$", "", re.sub(r"//[^/@]*@", "//", text)))


def _local_path(text: str, base_dir: str | Path | None) -> str:
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        path = os.path.join(os.path.abspath(os.path.expanduser(os.fspath(base_dir))) if base_dir else os.getcwd(), path)
    return os.path.normpath(path)


def _parse_http(text: str, scheme: str, items: tuple[tuple[str, Any], ...]) -> Location:
    parts = urlsplit(text)
    if not parts.hostname:
        raise ConfigError(f"{_shown_text(text)}: a {scheme}:// URL needs a host ({scheme}://host/path)")
    if parts.password:
        _remember_secret(parts.password)
    if parts.username:
        _remember_secret(parts.username)
    if parts.query:
        _remember_secret(parts.query)
        for pair in parts.query.split("&"):
            _remember_secret(pair.partition("=")[2])
    pieces = [p for p in parts.path.split("/") if p]
    _check_segments(pieces, _shown_text(text))
    url = f"{scheme}://{parts.netloc}" + "".join("/" + p for p in pieces) + (f"?{parts.query}" if parts.query else "")
    return Location(url, items)


def _parse_bucket(text: str, scheme: str, rest: str, items: tuple[tuple[str, Any], ...]) -> Location:
    bucket, _, key = rest.partition("/")
    what = "container" if scheme == "az" else "bucket"
    if not bucket:
        raise ConfigError(f"{_shown_text(text)}: a {scheme}:// URL needs a {what} ({scheme}://{what}/path)")
    if "?" in rest or "#" in rest or "@" in bucket or ":" in bucket:
        raise ConfigError(
            f"{_shown_text(text)}: {scheme}:// URLs take no user, port or query string "
            f"({scheme}://{what}/path; credentials go in the environment or storage settings)"
        )
    pieces = [p for p in key.split("/") if p]
    _check_segments(pieces, _shown_text(text))
    return Location("/".join([f"{scheme}://{bucket}", *pieces]), items)


def check_storage(storage: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    if not isinstance(storage, Mapping):
        raise ConfigError(f"storage: expected a mapping of settings, got {type(storage).__name__}")
    allowed = ", ".join(sorted(STORAGE_KEYS))
    for key, value in storage.items():
        if key not in STORAGE_KEYS:
            raise ConfigError(f"storage: unknown key {key!r} (allowed: {allowed})")
        if key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise ConfigError(f"storage.{key}: expected true or false, got {value!r}")
        elif not isinstance(value, str) or not value:
            shown = "a secret" if key in SECRET_KEYS else repr(value)
            raise ConfigError(f"storage.{key}: expected a non-empty string, got {shown}")
        if key == "endpoint" and not re.match(r"^https?://[^/]", value):
            raise ConfigError(f"storage.endpoint: expected an http:// or https:// URL, got {_shown_text(value)!r}")
        if key in SECRET_KEYS:
            _remember_secret(value)
    return tuple(sorted(storage.items()))


# --- Opening stores -------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def open_store(location: Location, *, read_only: bool = True) -> zarr.abc.store.Store:
    """A zarr store rooted at the location, one per process and location, so workers reopen it for free."""
    if not read_only and not location.writable:
        raise ConfigError(f"{location.display}: {location.scheme}:// locations are read-only")
    if location.is_local:
        from zarr.storage import LocalStore

        return LocalStore(location.path, read_only=read_only)
    from zarr.storage import ObjectStore

    return ObjectStore(_obstore(location, location.path), read_only=read_only)


# A forked worker must not reuse the parent's clients: their runtime threads did not survive the fork.
os.register_at_fork(after_in_child=open_store.cache_clear)


def _obstore(location: Location, prefix: str, *, quick: bool = False) -> Any:
    """The obstore store for a remote location: the provider's environment, overridden by location.storage."""
    from obstore.store import AzureStore, GCSStore, HTTPStore, S3Store

    settings = dict(location.storage)
    client: dict[str, Any] = dict(_PROBE_CLIENT) if quick else {}
    extra: dict[str, Any] = {"retry_config": _PROBE_RETRY} if quick else {}
    scheme = location.scheme
    if scheme in ("http", "https"):
        if scheme == "http" or settings.get("allow_http"):
            client["allow_http"] = True
        return HTTPStore.from_url(location.url, client_options=client, **extra)
    endpoint = settings.get("endpoint") or _env_endpoint(scheme)
    if settings.get("allow_http") or (endpoint or "").startswith("http://"):
        client["allow_http"] = True
    prefix = prefix or None
    if scheme == "s3":
        config = _s3_config(settings)
        return S3Store(location.bucket, prefix=prefix, config=config, client_options=client, **extra)
    if scheme == "gs":
        config = {"skip_signature": True} if settings.get("anonymous") else {}
        if settings.get("endpoint"):
            config["base_url"] = settings["endpoint"]
        return GCSStore(location.bucket, prefix=prefix, config=config, client_options=client, **extra)
    config = {"skip_signature": True} if settings.get("anonymous") else {}
    if settings.get("endpoint"):
        config["endpoint"] = settings["endpoint"]
    return AzureStore(location.bucket, prefix=prefix, config=config, client_options=client, **extra)


def _env_endpoint(scheme: str) -> str | None:
    names = {
        "s3": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"),
        "gs": ("GOOGLE_BASE_URL",),
        "az": ("AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"),
    }[scheme]
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _s3_config(settings: dict[str, Any]) -> dict[str, Any]:
    """S3 settings on top of what obstore reads from AWS_*; adds the shared-credentials profile obstore ignores."""
    config: dict[str, Any] = {}
    if "endpoint" in settings:
        # AWS_ENDPOINT_URL_S3 would win over a plain endpoint: set both.
        config["endpoint"] = config["aws_endpoint_url_s3"] = settings["endpoint"]
    if "region" in settings:
        config["region"] = settings["region"]
    if settings.get("anonymous"):
        config["skip_signature"] = True
        return config
    for key in SECRET_KEYS:
        if key in settings:
            config[key] = settings[key]
    profile = settings.get("profile") or os.environ.get("AWS_PROFILE")
    has_keys = "access_key_id" in settings or bool(os.environ.get("AWS_ACCESS_KEY_ID"))
    if settings.get("profile") or (not has_keys and (profile or _shared_file("credentials").is_file())):
        found = _aws_profile(profile or "default", required=bool(profile))
        for key, value in found.items():
            wanted = key not in settings if key in SECRET_KEYS else "region" not in config
            if wanted and not (key == "region" and os.environ.get("AWS_REGION")):
                config[key] = value
    return config


def _shared_file(kind: str) -> Path:
    env = {"credentials": "AWS_SHARED_CREDENTIALS_FILE", "config": "AWS_CONFIG_FILE"}[kind]
    return Path(os.environ.get(env) or Path.home() / ".aws" / kind).expanduser()


def _aws_profile(profile: str, *, required: bool) -> dict[str, str]:
    """Static keys and region of an AWS profile from the shared files (obstore reads only the environment)."""
    names = {
        "aws_access_key_id": "access_key_id",
        "aws_secret_access_key": "secret_access_key",
        "aws_session_token": "session_token",
        "region": "region",
    }
    found: dict[str, str] = {}
    sections = {"credentials": profile, "config": profile if profile == "default" else f"profile {profile}"}
    seen = False
    for kind, section in sections.items():
        parser = configparser.RawConfigParser()
        try:
            parser.read(_shared_file(kind))
        except configparser.Error as error:
            raise ConfigError(f"{_shared_file(kind)}: cannot be read ({error.__class__.__name__})") from None
        if parser.has_section(section):
            seen = True
            for option, key in names.items():
                if parser.has_option(section, option) and key not in found:
                    found[key] = parser.get(section, option).strip()
    if required and not seen:
        places = f"{_shared_file('credentials')} or {_shared_file('config')}"
        raise ConfigError(f"AWS profile {profile!r} not found in {places}")
    if required and "access_key_id" not in found:
        raise ConfigError(
            f"AWS profile {profile!r} has no aws_access_key_id (SSO and role profiles are not supported: "
            "export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, "
            "e.g. with `aws configure export-credentials`)"
        )
    for key in SECRET_KEYS:
        if key in found:
            _remember_secret(found[key])
    return found


# --- Single objects and listings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its key relative to the listed location, its size, and a version that changes on rewrite."""

    key: str
    size: int
    version: str


def _raw(location: Location, *, writable: bool = False) -> tuple[Any, str]:
    """(obstore store, key) for a single remote object; the store is the cached one at the bucket root."""
    store = open_store(location.root, read_only=not writable)
    key = "" if location.scheme in ("http", "https") else location.path
    return store.store, key


def _remote_info(meta: Mapping[str, Any], key: str) -> ObjectInfo:
    version = meta.get("e_tag") or meta.get("version") or f"{meta['last_modified'].isoformat()}-{meta['size']}"
    return ObjectInfo(key=key, size=int(meta["size"]), version=str(version))


def _local_info(path: str, key: str) -> ObjectInfo:
    st = os.stat(path)
    return ObjectInfo(key=key, size=st.st_size, version=f"{st.st_mtime_ns}-{st.st_ino}")


def _run(location: Location, action: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Call obstore, turning its errors into one-line RunErrors."""
    try:
        return function(*args, **kwargs)
    except ConfigError:
        raise
    except Exception as error:
        raise RunError(f"{action} {describe_error(location, error)}") from None


def list_objects(location: Location, prefix: str = "") -> Iterator[ObjectInfo]:
    """Every object under location/prefix, from one listing stream (sizes and versions come with it, no HEADs)."""
    prefix = prefix.strip("/")
    if location.is_local:
        top = os.path.join(location.path, prefix) if prefix else location.path
        for folder, dirs, files in os.walk(top):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(folder, name)
                key = os.path.relpath(full, location.path).replace(os.sep, "/")
                try:
                    yield _local_info(full, key)
                except FileNotFoundError:
                    continue
        return
    if location.scheme in ("http", "https"):
        raise RunError(f"listing {location.display}: http(s) servers cannot list objects (use s3://, gs:// or az://)")
    import obstore

    store, root = _raw(location)
    full = "/".join(p for p in (root, prefix) if p)
    skip = len(root) + 1 if root else 0
    stream = _run(location, "listing", obstore.list, store, full + "/" if full else None, chunk_size=1000)
    iterator = iter(stream)
    while True:
        batch = _run(location, "listing", next, iterator, None)
        if batch is None:
            return
        for meta in batch:
            yield _remote_info(meta, meta["path"][skip:])


def object_info(location: Location) -> ObjectInfo | None:
    """Size and version of one object (e.g. a TIFF), or None when there is none."""
    if location.is_local:
        try:
            info = _local_info(location.path, location.name)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return info if os.path.isfile(location.path) else None
    import obstore

    store, key = _raw(location)
    if not key and location.scheme not in ("http", "https"):
        return None  # a bucket root is never an object
    try:
        meta = obstore.head(store, key)
    except FileNotFoundError:
        return None
    except Exception as error:
        raise RunError(f"reading {describe_error(location, error)}") from None
    return _remote_info(meta, location.name)


def exists(location: Location) -> bool:
    """Whether there is an object at the location or anything under it (a zarr group is a prefix)."""
    if location.is_local:
        return os.path.lexists(location.path)
    if object_info(location) is not None:
        return True
    if location.scheme in ("http", "https"):
        # No listing over http: a zarr hierarchy shows through its metadata documents.
        return any(object_info(location.joinpath(name)) is not None for name in ("zarr.json", ".zgroup", ".zarray"))
    import obstore

    store, key = _raw(location)
    stream = _run(location, "listing", obstore.list, store, key + "/" if key else None, chunk_size=1)
    return _run(location, "listing", next, iter(stream), None) is not None


def upload(local_file: str | Path, location: Location) -> None:
    """Put a whole local file as one object: it appears whole or not at all (multipart for big files)."""
    if not location.writable:
        raise ConfigError(f"{location.display}: {location.scheme}:// locations are read-only")
    if location.is_local:
        os.makedirs(os.path.dirname(location.path) or ".", exist_ok=True)
        temporary = f"{location.path}.{uuid.uuid4().hex[:8]}.part"
        try:
            with open(local_file, "rb") as source, open(temporary, "wb") as target:
                while chunk := source.read(1 << 24):
                    target.write(chunk)
            os.replace(temporary, location.path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return
    import obstore

    store, key = _raw(location, writable=True)
    _run(location, "writing", obstore.put, store, key, Path(local_file), chunk_size=16 << 20, max_concurrency=8)


def delete(location: Location) -> None:
    """Remove one object; a missing one is not an error (S3 semantics everywhere)."""
    if not location.writable:
        raise ConfigError(f"{location.display}: {location.scheme}:// locations are read-only")
    if location.is_local:
        with contextlib.suppress(FileNotFoundError):
            os.remove(location.path)
        return
    import obstore

    store, key = _raw(location, writable=True)
    try:
        obstore.delete(store, key)
    except FileNotFoundError:
        pass
    except Exception as error:
        raise RunError(f"deleting {describe_error(location, error)}") from None


# --- Reading one object lazily --------------------------------------------------------------------------------------


PREFETCH_BYTES = 256 << 20
"""Bytes of prefetched ranges one open object holds at most: the tiles of the blocks in flight;
ranges past it are read one by one, as without a prefetch."""


@dataclass
class _Fetched:
    """One prefetched byte range, shared by the reads that asked for it; ``data`` is None until
    its request has answered (or when it failed: reads then make their own requests)."""

    ready: threading.Event
    data: memoryview | None = None
    users: int = 1


class _RangeReader(io.RawIOBase):
    """A seekable read-only file over one remote object: each read is one ranged GET, nothing
    downloaded ahead, unless ``prefetched`` fetched the range beforehand."""

    def __init__(self, location: Location) -> None:
        import obstore

        super().__init__()
        self._location = location
        self._store, self._key = _raw(location)
        meta = _run(location, "reading", obstore.head, self._store, self._key)
        self._size = int(meta["size"])
        self._position = 0
        self.name = location.name
        self._lock = threading.Lock()  # guards the three below: readers and prefetches are on many threads
        self._fetched: dict[tuple[int, int], _Fetched] = {}
        self._ranges: list[tuple[int, int]] = []  # the keys of _fetched, sorted, to find the one holding a position
        self._held = 0

    @property
    def held(self) -> int:
        """Bytes of prefetched ranges held now: 0 whenever no ``prefetched`` block is open."""
        with self._lock:
            return self._held

    @contextlib.contextmanager
    def prefetched(self, ranges: Iterable[tuple[int, int]]) -> Iterator[None]:
        """Fetch these (start, end) byte ranges in one ``get_ranges`` call, concurrently, and serve
        the reads inside them from memory until the with-block ends, which drops them.

        Why: tifffile reads a block's tiles one at a time under its file lock, one round trip each.
        A range another block holds or is fetching (a halo tile) is shared and waited for; ranges
        past ``PREFETCH_BYTES`` are left to the plain reads.
        """
        import obstore

        ready = threading.Event()
        mine: list[tuple[int, int]] = []  # the ranges this call holds a use of
        todo: list[tuple[int, int]] = []  # the ones it fetches
        others: set[threading.Event] = set()  # the other calls fetching some of them
        with self._lock:
            for key in sorted(set(ranges)):
                start, end = key
                entry = self._fetched.get(key)
                if entry is not None:
                    entry.users += 1
                    others.add(entry.ready)
                elif 0 <= start < end <= self._size and self._held + end - start <= PREFETCH_BYTES:
                    self._fetched[key] = _Fetched(ready)
                    bisect.insort(self._ranges, key)
                    self._held += end - start
                    todo.append(key)
                else:
                    continue
                mine.append(key)
        try:
            try:
                if todo:
                    starts, ends = [s for s, _ in todo], [e for _, e in todo]
                    got = _run(
                        self._location, "reading", obstore.get_ranges, self._store, self._key, starts=starts, ends=ends
                    )
                    with self._lock:
                        for (start, end), data in zip(todo, got, strict=True):
                            view = memoryview(data).cast("B")
                            if len(view) == end - start:
                                self._fetched[(start, end)].data = view
            finally:
                ready.set()
            for event in others:
                event.wait()
            yield
        finally:
            with self._lock:
                for key in mine:
                    entry = self._fetched[key]
                    entry.users -= 1
                    if entry.users == 0:
                        del self._fetched[key]
                        self._ranges.pop(bisect.bisect_left(self._ranges, key))
                        self._held -= key[1] - key[0]

    def _prefetched_at(self, position: int, count: int) -> memoryview | None:
        """Up to ``count`` bytes at ``position`` from a prefetched range holding it, or None."""
        with self._lock:
            index = bisect.bisect_left(self._ranges, (position + 1,)) - 1  # the last range starting at or before
            if index < 0:
                return None
            start, end = self._ranges[index]
            data = self._fetched[(start, end)].data
            if data is None or end <= position:
                return None
            return data[position - start : min(end, position + count) - start]

    @property
    def size(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"{self._location.display}: negative seek position")
        self._position = base + offset
        return self._position

    def readall(self) -> bytes:
        """The rest of the object in one request (the default would loop over 8 KiB reads)."""
        import obstore

        if self._position >= self._size:
            return b""
        data = _run(
            self._location, "reading", obstore.get_range, self._store, self._key, start=self._position, end=self._size
        )
        self._position += len(memoryview(data))
        return bytes(data)

    def readinto(self, buffer: Any) -> int:
        import obstore

        view = memoryview(buffer).cast("B")
        count = min(len(view), self._size - self._position)
        if count <= 0:
            return 0
        got = self._prefetched_at(self._position, count)  # may be short: the range ends, a buffered read goes on
        if got is None:
            data = _run(
                self._location, "reading", obstore.get_range, self._store, self._key, start=self._position, length=count
            )
            got = memoryview(data)
        view[: len(got)] = got
        self._position += len(got)
        return len(got)


def open_file(location: Location) -> BinaryIO:
    """A seekable read-only binary file for one object (a TIFF/COG) that fetches only the byte ranges read."""
    if location.is_local:
        try:
            return open(location.path, "rb")
        except OSError as error:
            raise RunError(f"reading {describe_error(location, error)}") from None
    # TIFF headers and IFDs are small scattered reads the buffer groups; most tiles are larger and skip it.
    return io.BufferedReader(_RangeReader(location), buffer_size=64 << 10)  # type: ignore[return-value]


def prefetcher(file: BinaryIO) -> Callable[[Iterable[tuple[int, int]]], contextlib.AbstractContextManager[None]] | None:
    """``prefetched`` of a remote file from ``open_file`` (see ``_RangeReader``); None for a local
    one, whose reads are cheap one by one."""
    raw = getattr(file, "raw", None)
    return raw.prefetched if isinstance(raw, _RangeReader) else None


# --- Checking access and explaining failures ------------------------------------------------------------------------


def probe(location: Location, *, write: bool) -> None:
    """One cheap request up front, so wrong credentials or a missing bucket fail in seconds with one line."""
    if location.is_local:
        if write:
            check_local_output(location)
        return
    import obstore

    role = "output" if write else "input"
    if write and not location.writable:
        raise ConfigError(f"{role} {location.display}: {location.scheme}:// locations are read-only")
    try:
        if location.scheme in ("http", "https"):
            store = _obstore(location, "", quick=True)
            with contextlib.suppress(FileNotFoundError):  # a directory URL: the server answered, enough
                obstore.head(store, "")
            return
        # A listing (not a HEAD) so a missing bucket is told apart from a missing key.
        store = _obstore(location.root, "", quick=True)
        obstore.list_with_delimiter(store, location.path + "/" if location.path else None)
    except ConfigError:
        raise
    except Exception as error:
        raise RunError(describe_error(location, error, role=role)) from None


def check_local_output(location: Location) -> None:
    """A local output path that cannot be written, said before anything is: under a regular
    file, through a symbolic link to nothing, or in a folder on a read-only filesystem or
    without write permission (root is refused only by the first)."""
    path = Path(location.path)
    shown = f"output.path: {location.display}"
    existing = path
    while not existing.exists():
        if existing.is_symlink():
            raise ConfigError(
                f"{shown}: {existing} is a symbolic link to {os.readlink(existing)}, which does not exist "
                "(remove the link or create what it points to)"
            )
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise ConfigError(f"{shown}: {existing} is a file, not a folder; choose a path in a folder")
    folder = existing if existing.is_dir() else existing.parent
    if not os.access(folder, os.W_OK):
        try:
            read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        except OSError:
            read_only = False
        why = "is on a read-only filesystem" if read_only else "is not writable (no permission)"
        raise ConfigError(f"{shown}: the folder {folder} {why}; choose an output where you can write")


_ACCESS_CODES = (
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AuthenticationFailed",
    "AuthorizationFailure",
    "InvalidClientTokenId",
)
_BUCKET_CODES = ("NoSuchBucket", "ContainerNotFound", "The specified bucket does not exist")


def is_store_error(error: BaseException) -> bool:
    """An error of the storage itself (a disk, a bucket, the network), not of convpipe's code:
    OSError, or one of obstore's exceptions (which do not derive from OSError)."""
    return isinstance(error, OSError) or type(error).__module__.split(".")[0] == "obstore"


def describe_error(location: Location, error: BaseException, *, role: str | None = None) -> str:
    """One readable, redacted line for an obstore/fsspec/OS error at a location (``role``: "input"/"output")."""
    text = str(error)
    head = f"{role} {location.display}" if role else location.display
    kind = "the storage settings" if role is None else f"{role}.storage"
    reason: str
    if location.scheme == "s3" and re.search(r"169\.254\.169\.254|fd00:ec2::254|/latest/api/token", text):
        # No key anywhere, so obstore fell back to the EC2 instance metadata service.
        reason = f"no AWS credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, {kind}, "
        reason += "or anonymous: true for a public bucket)"
    elif any(code in text for code in _BUCKET_CODES) or ("list request" in text and "404 Not Found" in text):
        what = "container" if location.scheme == "az" else "bucket"
        reason = f"no such {what} {location.bucket!r}"
    elif (
        isinstance(error, PermissionError)
        or _is_class(error, "PermissionDeniedError", "UnauthenticatedError")
        or (any(code in text for code in _ACCESS_CODES) or re.search(r"\b(401|403) ", text))
    ):
        hint = {
            "s3": f"check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or {kind}",
            "gs": "check GOOGLE_APPLICATION_CREDENTIALS or GOOGLE_SERVICE_ACCOUNT",
            "az": "check AZURE_STORAGE_ACCOUNT_NAME/AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_TOKEN",
        }.get(location.scheme, "the server refused the request")
        reason = f"access denied ({hint})" if location.is_remote else "permission denied"
    elif location.is_remote and (reach := _unreachable(text)):
        reason = f"cannot reach {_endpoint_of(location, text)} ({reach})"
    elif isinstance(error, FileNotFoundError) or "404 Not Found" in text:
        reason = "not found"
    elif isinstance(error, OSError) and error.strerror and not _is_class(error, "BaseError"):
        reason = error.strerror.lower()
    else:
        first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        first = re.sub(r"^Generic \w+ error: ", "", first)
        reason = first if len(first) <= 240 else first[:237] + "..."
    return redact(f"{head}: {reason}")


def _is_class(error: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(error).__mro__)


def _unreachable(text: str) -> str | None:
    low = text.lower()
    if "connection refused" in low:
        return "connection refused"
    if "dns error" in low or "failed to lookup address" in low or "name or service not known" in low:
        return "host not found"
    if re.search(r"kind: timeout|timedout|timed out", low):
        return "timed out"
    if "error sending request" in low or "connect error" in low or "cannot connect" in low:
        return "connection failed"
    if "certificate" in low:
        return "TLS certificate not trusted"
    return None


def _endpoint_of(location: Location, text: str) -> str:
    match = re.search(r"\b(https?://[^/\s?'\"]+)", text)
    if match:
        return match.group(1)
    if location.scheme in ("http", "https"):
        return location.display
    settings = dict(location.storage)
    return settings.get("endpoint") or _env_endpoint(location.scheme) or f"{location.scheme}://{location.bucket}"


def error_detail(location: Location, error: BaseException) -> str:
    """What went wrong, in a few redacted words for a message about ``location``: an OS error's
    own text, or the reason ``describe_error`` gives for an obstore one (whose text runs to
    many lines, with request details)."""
    if isinstance(error, OSError):
        return redact(str(error))
    return describe_error(location, error).removeprefix(f"{location.display}: ")


def redact(text: str) -> str:
    """Text with every known secret value replaced by ``***`` and URL userinfo and query strings removed."""
    with _SECRETS_LOCK:
        secrets = set(_SECRETS)
    secrets.update(v for name in _SECRET_ENV if len(v := os.environ.get(name, "")) >= 4)
    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]*@", r"\1", str(text))
    text = re.sub(r"(\bhttps?://[^\s?#'\"]*)\?[^\s'\"]*", r"\1", text)
    for secret in sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True):
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, "***")
    return text
