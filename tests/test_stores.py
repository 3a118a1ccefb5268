"""Local paths and URLs as a user writes them: parsing, secrets kept out of messages, and zarr/TIFF I/O
through the store layer against a local moto S3 server and a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from s3server import S3Server

from convpipe.errors import ConfigError, RunError
from convpipe.io import stores
from convpipe.io.stores import Location, open_store, parse


def one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text, text
    return text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_array(location: Location, data: np.ndarray) -> None:
    array = zarr.create_array(
        store=open_store(location, read_only=False), shape=data.shape, chunks=(32, 32), dtype=data.dtype
    )
    array[:] = data


def read_array(location: Location) -> np.ndarray:
    return np.asarray(zarr.open_array(store=open_store(location), mode="r")[:])


IMAGE = np.arange(100 * 70, dtype="uint16").reshape(100, 70)


# --- parse ----------------------------------------------------------------------------------------------------------


def test_local_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert parse("a/../b/img.zarr/").url == str(tmp_path / "b" / "img.zarr")
    assert parse("img.zarr", base_dir="/data/configs").url == "/data/configs/img.zarr"
    assert parse("~/x.tif").url == str(tmp_path / "x.tif")
    assert parse("file:///srv/data/x%20y.zarr").url == "/srv/data/x y.zarr"
    assert parse(tmp_path / "p.zarr").url == str(tmp_path / "p.zarr")
    loc = parse("/data/out.tif")
    assert (loc.scheme, loc.is_local, loc.writable, loc.name) == ("file", True, True, "out.tif")
    assert loc.display == str(loc) == loc.path == "/data/out.tif"
    assert loc.parent.url == "/data"
    assert loc.with_name("out.tif.convpipe-lock").url == "/data/out.tif.convpipe-lock"
    assert loc.joinpath("a", "b/c").url == "/data/out.tif/a/b/c"


def test_url_forms() -> None:
    loc = parse("s3://bucket/a/b/", storage={"region": "eu-west-1"})
    assert loc.url == "s3://bucket/a/b"
    assert (loc.scheme, loc.is_remote, loc.writable, loc.path, loc.name) == ("s3", True, True, "a/b", "b")
    assert loc.storage == (("region", "eu-west-1"),)
    assert str(loc) == loc.display == "s3://bucket/a/b"
    assert loc.joinpath("c.zarr", "zarr.json").url == "s3://bucket/a/b/c.zarr/zarr.json"
    assert loc.parent.url == "s3://bucket/a" and loc.parent.parent.url == "s3://bucket"
    assert loc.parent.parent.parent.url == "s3://bucket"
    assert loc.with_name("x.tif").url == "s3://bucket/a/x.tif"
    assert parse("s3://bucket").path == "" and parse("s3://bucket").name == "bucket"
    assert parse("gs://b/x.zarr").scheme == "gs" and parse("az://container/x").path == "x"
    web = parse("https://example.org:8443/data/img.zarr/")
    assert (web.url, web.scheme, web.writable) == ("https://example.org:8443/data/img.zarr", "https", False)
    assert web.path == "data/img.zarr"
    assert web.parent.url == "https://example.org:8443/data"
    # A Location is small, hashable and picklable: what task graphs carry.
    assert pickle.loads(pickle.dumps(loc)) == loc
    assert hash(loc) == hash(parse("s3://bucket/a/b", storage={"region": "eu-west-1"}))
    assert stores.is_url("s3://b/x") and stores.is_url("file:///x") and stores.is_url("HTTPS://h/x")
    assert not stores.is_url("/tmp/x") and not stores.is_url("ftp://h/x") and not stores.is_url("s3:/b")


@pytest.mark.parametrize(
    "text",
    [
        "ftp://host/x.zarr",
        "s3:/bucket/x",
        "s3://",
        "s3:///x",
        "gs://",
        "az://",
        "https:///x",
        "hdfs://n/x",
        "s3://b/../x",
    ],
)
def test_bad_urls_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse(text)
    message = one_line(error.value)
    assert message.startswith(f"{text}: ")
    assert "://" in message[len(text) :] or "'..'" in message


def test_bad_storage_keys() -> None:
    with pytest.raises(ConfigError) as error:
        parse("s3://b/x", storage={"acess_key_id": "AKIA"})
    assert "acess_key_id" in one_line(error.value) and "access_key_id" in str(error.value)
    with pytest.raises(ConfigError, match="anonymous"):
        parse("s3://b/x", storage={"anonymous": "yes"})
    with pytest.raises(ConfigError) as error:
        parse("s3://b/x", storage={"secret_access_key": 12345678})
    assert "12345678" not in str(error.value)


# --- secrets --------------------------------------------------------------------------------------------------------


def test_secrets_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value-123")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "env-session-token-456")
    loc = parse("s3://b/x.zarr", storage={"access_key_id": "AKIDCONFIG", "secret_access_key": "config-secret-789"})
    shown = f"{loc} {loc!r} {loc.display} {loc.joinpath('c')!r}"
    assert "config-secret-789" not in shown and "AKIDCONFIG" not in shown
    web = parse("https://alice:pa55word@host.example/img.tif?X-Amz-Signature=sig0123456789&X-Amz-Credential=cred42")
    assert web.display == "https://host.example/img.tif"
    assert "pa55word" not in repr(web) and "sig0123456789" not in repr(web)

    text = "failed with config-secret-789, env-secret-value-123, env-session-token-456 and sig0123456789"
    assert stores.redact(text) == "failed with ***, ***, *** and ***"
    assert "pa55word" not in stores.redact("GET https://alice:pa55word@host.example/x?token=abc")
    error = OSError("Error performing GET http://h/b/x?X-Amz-Credential=AKIDCONFIG: config-secret-789 rejected")
    line = stores.describe_error(loc, error)
    assert line.startswith("s3://b/x.zarr: ") and "config-secret-789" not in line and "AKIDCONFIG" not in line


# --- zarr through the store -----------------------------------------------------------------------------------------


def test_local_zarr_round_trip(tmp_path: Path) -> None:
    loc = parse(f"file://{tmp_path}/img.zarr")
    write_array(loc, IMAGE)
    np.testing.assert_array_equal(read_array(loc), IMAGE)
    np.testing.assert_array_equal(np.asarray(zarr.open_array(tmp_path / "img.zarr", mode="r")[:]), IMAGE)
    assert open_store(loc) is open_store(parse(str(tmp_path / "img.zarr")))  # cached per process


def test_s3_zarr_round_trip(s3_env: S3Server) -> None:
    loc = parse(f"s3://{s3_env.new_bucket()}/runs/img.zarr/")
    write_array(loc, IMAGE)
    np.testing.assert_array_equal(read_array(loc), IMAGE)
    keys = {info.key for info in stores.list_objects(loc)}
    assert "zarr.json" in keys and "c/0/0" in keys
    assert stores.exists(loc) and stores.exists(loc.parent) and not stores.exists(loc.with_name("other.zarr"))
    # A worker gets the Location, not the store, and reopens it.
    np.testing.assert_array_equal(read_array(pickle.loads(pickle.dumps(loc))), IMAGE)


def test_storage_settings_override_environment(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_env.new_bucket()
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-from-env")
    storage = {"endpoint": s3_env.endpoint, "secret_access_key": s3_env.env["AWS_SECRET_ACCESS_KEY"]}
    loc = parse(f"s3://{bucket}/img.zarr", storage=storage)
    write_array(loc, IMAGE)
    np.testing.assert_array_equal(read_array(loc), IMAGE)


def test_aws_profile_from_shared_credentials(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[bench]\naws_access_key_id = {s3_env.env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {s3_env.env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    loc = parse(f"s3://{s3_env.new_bucket()}/img.zarr", storage={"profile": "bench"})
    write_array(loc, IMAGE)
    np.testing.assert_array_equal(read_array(loc), IMAGE)
    with pytest.raises(ConfigError, match="'missing' not found"):
        open_store(parse(f"s3://{loc.bucket}/x", storage={"profile": "missing"}))


# --- single objects -------------------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def folder(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "local":
        return parse(str(tmp_path / "folder"))
    server = request.getfixturevalue("s3_env")
    return parse(f"s3://{server.new_bucket()}/folder")


def test_list_objects_versions_change_on_rewrite(folder: Location, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"first")
    stores.upload(source, folder.joinpath("a", "one.bin"))
    stores.upload(source, folder.joinpath("two.bin"))
    before = {info.key: info for info in stores.list_objects(folder)}
    assert set(before) == {"a/one.bin", "two.bin"} and before["two.bin"].size == 5
    assert [info.key for info in stores.list_objects(folder, "a")] == ["a/one.bin"]
    time.sleep(0.01)
    source.write_bytes(b"second!")
    stores.upload(source, folder.joinpath("two.bin"))
    after = {info.key: info for info in stores.list_objects(folder)}
    assert after["two.bin"].version != before["two.bin"].version and after["two.bin"].size == 7
    assert after["a/one.bin"].version == before["a/one.bin"].version


def test_upload_object_info_delete(folder: Location, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    payload = np.random.default_rng(1).integers(0, 255, 20 << 20, dtype=np.uint8).tobytes()  # multipart on S3
    big.write_bytes(payload)
    target = folder.joinpath("out.tif")
    assert stores.object_info(target) is None and not stores.exists(target)
    stores.upload(big, target)
    info = stores.object_info(target)
    assert info is not None and info.size == len(payload) and info.key == "out.tif" and info.version
    assert stores.exists(target) and stores.exists(folder)
    with stores.open_file(target) as fh:
        fh.seek(len(payload) - 10)
        assert fh.read() == payload[-10:]
    stores.delete(target)
    stores.delete(target)  # deleting what is gone is fine
    assert stores.object_info(target) is None


def test_open_file_reads_a_tiled_tiff_lazily(s3_env: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = np.random.default_rng(2).integers(0, 4000, (1024, 1024), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "cog.tif", image, tile=(128, 128))
    loc = parse(f"s3://{s3_env.new_bucket()}/in/cog.tif")
    stores.upload(tmp_path / "cog.tif", loc)
    size = stores.object_info(loc).size  # type: ignore[union-attr]

    import obstore

    fetched: list[int] = []
    real = obstore.get_range

    def counting(*args: object, **kwargs: object) -> object:
        data = real(*args, **kwargs)  # type: ignore[arg-type]
        fetched.append(len(memoryview(data)))
        return data

    monkeypatch.setattr(obstore, "get_range", counting)
    with stores.open_file(loc) as fh, tifffile.TiffFile(fh) as tif:
        page = tif.pages.first
        assert page.shape == (1024, 1024) and page.is_tiled
        index = 9  # second row of tiles, second column
        fh.seek(page.dataoffsets[index])
        tile, _, _ = page.decode(fh.read(page.databytecounts[index]), index)
    np.testing.assert_array_equal(np.squeeze(tile), image[128:256, 128:256])
    assert 0 < sum(fetched) < size // 4, (sum(fetched), size)


# --- probe: one line, quickly ---------------------------------------------------------------------------------------


def probe_error(location: Location, *, write: bool = True) -> str:
    start = time.monotonic()
    with pytest.raises(RunError) as error:
        stores.probe(location, write=write)
    assert time.monotonic() - start < 10
    return one_line(error.value)


def test_probe_wrong_credentials(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = s3_env.new_bucket()
    stores.probe(parse(f"s3://{bucket}/out.zarr"), write=True)  # right ones pass
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-abcdef")
    message = probe_error(parse(f"s3://{bucket}/out.zarr"))
    assert message.startswith(f"output s3://{bucket}/out.zarr: access denied (check AWS_ACCESS_KEY_ID")
    assert "not-the-secret-abcdef" not in message and s3_env.env["AWS_ACCESS_KEY_ID"] not in message
    message = probe_error(parse(f"s3://{bucket}/in.zarr", storage={"access_key_id": "AKIANOBODY0123"}), write=False)
    assert "input" in message and "access denied" in message and "input.storage" in message
    assert "AKIANOBODY0123" not in message


def test_probe_missing_bucket(s3_env: S3Server) -> None:
    message = probe_error(parse("s3://nope-not-a-bucket/x.zarr"))
    assert message == "output s3://nope-not-a-bucket/x.zarr: no such bucket 'nope-not-a-bucket'"


def test_probe_unreachable_endpoint(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    message = probe_error(parse("s3://bucket/x.zarr"))
    assert message == f"output s3://bucket/x.zarr: cannot reach http://127.0.0.1:{port} (connection refused)"
    message = probe_error(parse(f"https://127.0.0.1:{port}/img.zarr?sig=s3cr3tvalue"), write=False)
    assert "cannot reach" in message and "s3cr3tvalue" not in message


@pytest.mark.slow
def test_probe_gives_up_on_a_silent_endpoint(s3_env: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        message = probe_error(parse("s3://bucket/x.zarr", storage={"endpoint": endpoint}))
    assert message == f"output s3://bucket/x.zarr: cannot reach {endpoint} (timed out)"


def test_probe_local_is_a_no_op(tmp_path: Path) -> None:
    stores.probe(parse(str(tmp_path / "nowhere" / "x.zarr")), write=True)


# --- http(s): read-only ---------------------------------------------------------------------------------------------


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[str]:
    """A loopback HTTP server over tmp_path: yields its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_http_is_read_only(tmp_path: Path) -> None:
    loc = parse("https://example.org/data/img.zarr")
    assert not loc.writable
    with pytest.raises(ConfigError) as error:
        open_store(loc, read_only=False)
    assert "read-only" in one_line(error.value)
    with pytest.raises(ConfigError):
        stores.probe(loc, write=True)
    with pytest.raises(ConfigError):
        stores.upload(tmp_path, loc)


def test_http_zarr_read(http_folder: str, tmp_path: Path) -> None:
    write_array(parse(str(tmp_path / "img.zarr")), IMAGE)
    loc = parse(f"{http_folder}/img.zarr/")
    stores.probe(loc, write=False)
    np.testing.assert_array_equal(read_array(loc), IMAGE)
    assert stores.exists(loc) and not stores.exists(parse(f"{http_folder}/none.zarr"))
    info = stores.object_info(loc.joinpath("zarr.json"))
    assert info is not None and info.size == (tmp_path / "img.zarr" / "zarr.json").stat().st_size
    with pytest.raises(RunError, match="cannot list"):
        list(stores.list_objects(loc))
