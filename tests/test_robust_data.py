"""Issue 14, the data side: a reader survives what servers and files do to it.

pipe: URLs work when allowed; a member claiming gigabytes is never read (plain and gzip tars); a wrong
sizes.json is reported; a server trickling bytes cannot hold a reader past its deadline; shard commands
exit non-zero on shards they cannot read; out-of-range data values name their field.
"""

import http.server
import io
import logging
import resource
import tarfile
import threading
import time
from pathlib import Path

import pytest

from tests.shards import jpeg, make_image_shards
from vispre.data import DataConfig, build_loader
from vispre.data.shard_writer import update_sizes
from vispre.utils.errors import ValueCheckError


def labelled(spec, **kw):
    return DataConfig(spec=spec, format="labelled", eval_size=8, resampled=False, batch_size=4, workers=0, **kw)


def keys(loader):
    return sorted(k for b in loader for k in b["__key__"])


# -- pipe: ----------------------------------------------------------------------------------------------
def test_pipe_url_reads_a_shard_through_cat(tmp_path):
    directory, expected = make_image_shards(tmp_path / "shards", [6])
    loader = build_loader(labelled(f"pipe:cat {directory}/shard-00000.tar", allow_pipe=True))
    assert keys(loader) == sorted(expected)
    assert loader.epochs[-1]["skipped"]["reasons"] == {}


def test_pipe_command_that_fails_counts_as_unreadable(tmp_path):
    loader = build_loader(labelled(f"pipe:cat {tmp_path}/missing.tar", allow_pipe=True))
    assert keys(loader) == []
    assert loader.epochs[-1]["skipped"]["reasons"]["unreadable_shard"] == 1


# -- a member claiming gigabytes ----------------------------------------------------------------------------
def sparse_bomb(path: Path, mode: str, claimed: int = 4 << 30) -> None:
    """A tar (a few KB) whose GNU sparse (PAX 1.0) member ``bomb.jpg`` expands to ``claimed`` bytes of zeros,
    between two good samples."""
    data = f"1\n{claimed - 1}\n1\n".encode().ljust(512, b"\0") + b"x"
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tar:
        def add(name, payload, pax=None):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            info.pax_headers = pax or {}
            tar.addfile(info, io.BytesIO(payload))

        add("good0.jpg", jpeg(seed=1))
        add("good0.cls", b"0")
        add("bomb.jpg", data, {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "bomb.jpg",
                               "GNU.sparse.realsize": str(claimed)})
        add("bomb.cls", b"1")
        add("good1.jpg", jpeg(seed=2))
        add("good1.cls", b"2")


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_member_claiming_gigabytes_is_skipped_unread(tmp_path, mode):
    path = tmp_path / "bomb-00000.tar"
    sparse_bomb(path, mode)
    assert path.stat().st_size < 32_000
    with tarfile.open(path) as tar:  # what the header claims
        assert tar.getmember("bomb.jpg").size == 4 << 30
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    loader = build_loader(labelled(str(tmp_path), max_member_bytes=50_000_000))
    assert keys(loader) == ["good0", "good1"]
    assert loader.epochs[-1]["skipped"]["reasons"] == {"too_large": 1}
    assert loader.epochs[-1]["skipped"]["samples"] == 1
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 500_000  # nothing near the 4 GiB the member claims was allocated


# -- a wrong sizes.json ---------------------------------------------------------------------------------------
def test_wrong_sizes_json_is_reported(tmp_path, caplog):
    directory, expected = make_image_shards(tmp_path, [30, 5])
    update_sizes(directory, {"shard-00000.tar": 10})  # it has 30
    loader = build_loader(labelled(str(directory)))
    with caplog.at_level(logging.WARNING, logger="vispre.data"):
        assert keys(loader) == sorted(expected)  # every sample still read
    assert loader.epochs[-1]["skipped"]["reasons"] == {"size_mismatch": 1}
    assert loader.epochs[-1]["skipped"]["samples"] == 0  # a shard event, not skipped samples
    assert any("shard-00000.tar" in r.message and "sizes.json says 10" in r.message and "has 30" in r.message
               for r in caplog.records)


# -- a server trickling bytes -----------------------------------------------------------------------------
@pytest.fixture
def trickle_server(tmp_path):
    """127.0.0.1: /slow.tar sends a byte every 0.2 s (forever, as far as a reader can tell); the rest is
    served from tmp_path."""
    stop = threading.Event()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *args):
            pass

        def do_GET(self):
            if self.path != "/slow.tar":
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 20))
            self.end_headers()
            try:
                while not stop.is_set():
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}"
    stop.set()
    httpd.shutdown()
    httpd.server_close()


def test_trickling_server_hits_the_shard_deadline(trickle_server):
    root, base = trickle_server
    _, expected = make_image_shards(root / "data", [5], write_sizes=False)
    config = DataConfig(spec=f"{base}/data/shard-00000.tar", format="labelled", eval_size=8, resampled=False,
                        batch_size=4, workers=0, http_timeout=5.0, shard_deadline=1.0)
    assert keys(build_loader(config)) == sorted(expected)  # a good shard reads well within the deadline

    config.spec = f"{base}/slow.tar"
    slow = build_loader(config)
    start = time.monotonic()
    assert keys(slow) == []
    assert time.monotonic() - start < 4.0  # the deadline (1 s) plus at most a byte's wait, not forever
    assert slow.epochs[-1]["skipped"]["reasons"] == {"unreadable_shard": 1}


# -- value checks -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, field", [
    (dict(views=[{"count": 2, "size": 0}]), "data.views.0.size"),
    (dict(batch_size=0), "data.batch_size"),
    (dict(workers=-1), "data.workers"),
    (dict(crop_pct=1.5), "data.crop_pct"),
    (dict(shard_deadline=-1.0), "data.shard_deadline"),
])
def test_data_values_are_checked(tmp_path, change, field):
    from vispre.data.transforms import CropGroup

    views = change.pop("views", None)
    config = DataConfig(spec=str(tmp_path), **change)
    if views is not None:
        config.views = [CropGroup(**v) for v in views]
    with pytest.raises(ValueCheckError, match=field.replace(".", r"\.")):
        build_loader(config)


# -- shard commands on shards they cannot read ----------------------------------------------------------------
def test_shard_commands_exit_nonzero_on_unreadable_shards(tmp_path, capsys):
    from vispre.cli import main

    directory, _ = make_image_shards(tmp_path / "ok", [4])
    missing = f"{tmp_path}/nothing-{{00000..00001}}.tar"
    (tmp_path / "noise").mkdir()
    (tmp_path / "noise" / "x-00000.tar").write_bytes(bytes(range(256)) * 8)
    assert main(["shards", "inspect", str(directory)]) == 0
    for spec in (missing, str(tmp_path / "noise"), str(tmp_path / "no-such-dir")):
        capsys.readouterr()
        assert main(["shards", "inspect", spec]) == 1, spec
        assert "could not be read" in capsys.readouterr().err
    assert main(["shards", "stream", str(directory), "--workers", "0", "--crop", "16"]) == 0
    capsys.readouterr()
    assert main(["shards", "stream", missing, "--workers", "0", "--crop", "16"]) == 1
    assert "2 shards could not be read" in capsys.readouterr().err


def test_the_deadline_counts_time_spent_reading_not_a_slow_consumer(tmp_path):
    from vispre.data.urls import open_url

    directory, _ = make_image_shards(tmp_path, [3])
    stream = open_url(str(directory / "shard-00000.tar"), deadline=0.5)
    first = stream.read(512)
    time.sleep(0.7)  # the training side is slow: not the shard's fault
    assert len(first) == 512 and len(stream.read(512)) == 512
    stream.close()


def test_pipe_without_permission_is_a_user_error(capsys):
    from vispre.cli import main

    assert main(["shards", "inspect", "pipe:cat /dev/null"]) == 2
    assert capsys.readouterr().err.strip() == ("vispre shards inspect: error: shard URL 'pipe:cat /dev/null' runs a "
                                               "shell command; allow 'pipe:' URLs with data.allow_pipe=true (vispre "
                                               "pretrain) or --allow-pipe (vispre shards)")
