"""The stack's S3 server (versitygw) against real requests: what the writer may do, what the reader is refused,
and starting and stopping by pid."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from stack import S3Server, S3Settings
from stack.base import pid_alive, port_open

pytestmark = pytest.mark.s3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fs(s3: S3Settings, *, reader: bool = False) -> pafs.S3FileSystem:
    key, secret = (s3.reader_key, s3.reader_secret) if reader else (s3.writer_key, s3.writer_secret)
    return pafs.S3FileSystem(
        access_key=key, secret_key=secret, endpoint_override=s3.endpoint, scheme="http", region=s3.region,
        force_virtual_addressing=False,
    )


def _put(fs: pafs.S3FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def _listing(fs: pafs.S3FileSystem, prefix: str) -> list[str]:
    return sorted(i.path for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)) if i.is_file)


def test_the_writer_puts_lists_gets_and_deletes_objects(s3_server: S3Settings, s3_prefix: str) -> None:
    writer = _fs(s3_server)
    base = s3_prefix.removeprefix("s3://")
    _put(writer, f"{base}/a.parquet", b"first")
    _put(writer, f"{base}/sub/b.parquet", b"second")
    assert _listing(writer, base) == [f"{base}/a.parquet", f"{base}/sub/b.parquet"]
    with writer.open_input_stream(f"{base}/sub/b.parquet") as f:
        assert f.read() == b"second"
    _put(writer, f"{base}/a.parquet", b"overwritten")
    with writer.open_input_stream(f"{base}/a.parquet") as f:
        assert f.read() == b"overwritten"
    writer.delete_file(f"{base}/a.parquet")
    assert writer.get_file_info(f"{base}/a.parquet").type == pafs.FileType.NotFound
    assert _listing(writer, base) == [f"{base}/sub/b.parquet"]


def test_the_reader_lists_and_reads_what_the_writer_wrote(s3_server: S3Settings, s3_prefix: str) -> None:
    base = s3_prefix.removeprefix("s3://")
    _put(_fs(s3_server), f"{base}/data/1.parquet", b"rows")
    reader = _fs(s3_server, reader=True)
    assert _listing(reader, base) == [f"{base}/data/1.parquet"]
    assert reader.get_file_info(f"{base}/data/1.parquet").size == 4
    with reader.open_input_stream(f"{base}/data/1.parquet") as f:
        assert f.read() == b"rows"


def test_the_reader_is_refused_writing_and_deleting(s3_server: S3Settings, s3_prefix: str) -> None:
    base = s3_prefix.removeprefix("s3://")
    writer, reader = _fs(s3_server), _fs(s3_server, reader=True)
    _put(writer, f"{base}/kept.parquet", b"precious")

    with pytest.raises(OSError, match=r"ACCESS_DENIED|Access Denied"):
        _put(reader, f"{base}/new.parquet", b"intruder")
    with pytest.raises(OSError, match=r"ACCESS_DENIED|Access Denied"):
        _put(reader, f"{base}/kept.parquet", b"overwrite")
    with pytest.raises(OSError, match=r"ACCESS_DENIED|Access Denied"):
        reader.delete_file(f"{base}/kept.parquet")
    with pytest.raises(OSError, match=r"Access Denied"):
        reader.delete_dir_contents(base)

    assert _listing(writer, base) == [f"{base}/kept.parquet"]
    with writer.open_input_stream(f"{base}/kept.parquet") as f:
        assert f.read() == b"precious"


def test_an_account_without_a_grant_cannot_even_list_the_bucket(s3_server: S3Settings) -> None:
    stranger = s3_server.server.create_account()
    fs = pafs.S3FileSystem(
        access_key=stranger.access_key, secret_key=stranger.secret_key, endpoint_override=s3_server.endpoint,
        scheme="http", region=s3_server.region, allow_bucket_creation=True,
    )
    with pytest.raises(OSError, match=r"ACCESS_DENIED|Access Denied"):
        fs.get_file_info(pafs.FileSelector(s3_server.bucket, recursive=True))
    with pytest.raises(OSError, match=r"ACCESS_DENIED|Access Denied"):
        fs.create_dir("stranger-bucket")  # role user: no bucket of its own either


def test_the_fixture_gives_the_storage_settings_icefield_takes(s3_server: S3Settings, s3_prefix: str) -> None:
    storage = s3_server.storage()
    assert storage == {
        "endpoint": s3_server.endpoint, "region": "us-east-1", "path_style": True,
        "access_key": s3_server.writer_key, "secret_key": s3_server.writer_secret,
    }
    assert s3_server.storage(reader=True)["access_key"] == s3_server.reader_key
    assert s3_prefix.startswith(f"s3://{s3_server.bucket}/") and len(s3_prefix.rsplit("/", 1)[1]) == 32


def test_start_is_idempotent_and_stop_ends_the_gateway_by_pid(tmp_path: Path) -> None:
    server = S3Server(tmp_path, port=_free_port())
    try:
        assert server.up(timeout=30) is True
        status = server.status()
        assert status.running and status.pid is not None and pid_alive(status.pid)
        assert server.up(timeout=30) is False  # already running: nothing started twice
        root = server.root
        mode = stat.S_IMODE(server.credentials_file.stat().st_mode)
        assert mode == 0o600
        assert json.loads(server.credentials_file.read_text()) == {"access_key": root.access_key, "secret_key": root.secret_key}
        assert root.secret_key not in server.log_file.read_text()

        assert server.stop() is True
        assert not pid_alive(status.pid)
        assert not port_open("127.0.0.1", server.port)
        assert server.status().running is False
        assert server.stop() is False

        # A restart keeps the root account, the IAM accounts and the buckets with their grants.
        server.up(timeout=30)
        writer = server.create_account("keeper")
        server.create_bucket("kept-bucket", writer)
        server.stop()
        again = S3Server(tmp_path, port=server.port)
        again.up(timeout=30)
        assert again.root == root
        assert "keeper" in again.list_accounts()
        fs = pafs.S3FileSystem(access_key=writer.access_key, secret_key=writer.secret_key,
                               endpoint_override=again.url(), scheme="http", region="us-east-1")
        _put(fs, "kept-bucket/x", b"1")
        assert (server.data_dir / "kept-bucket" / "x").read_bytes() == b"1"
    finally:
        server.stop()


def test_the_port_must_be_free(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        server = S3Server(tmp_path, port=holder.getsockname()[1])
        with pytest.raises(Exception, match="already in use"):
            server.start()
        assert server.status().running is False
