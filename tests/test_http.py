"""Streaming shards over HTTP from a server on 127.0.0.1 that the test starts."""

import functools
import http.server
import threading

import pytest

from tests.shards import make_image_shards
from vispre.data import DataConfig, build_loader
from vispre.data.urls import parse_spec


@pytest.fixture
def server(tmp_path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_stream_reads_every_sample_and_sizes(server):
    root, base = server
    _, keys = make_image_shards(root / "data", [5, 6, 7, 8])
    spec = f"{base}/data/shard-{{00000..00003}}.tar"
    sources = parse_spec(spec)
    assert sources[0].num_samples == 26  # sizes.json fetched over HTTP
    loader = build_loader(DataConfig(spec=spec, format="labelled", eval_size=8, resampled=False, batch_size=4,
                                     workers=2))
    slots = [loader.stream.slot_shards(w, 0) for w in range(2)]
    expected = sum(-(-sum(sources[0].sizes[u] for u in urls) // 4) for urls in slots)
    assert len(loader) == expected
    batches = list(loader)
    assert len(batches) == expected
    assert sorted(k for b in batches for k in b["__key__"]) == sorted(keys)
    assert loader.epochs[-1]["skipped"]["samples"] == 0


def test_http_missing_shard_is_counted(server):
    root, base = server
    _, keys = make_image_shards(root / "data", [5, 6])
    spec = f"{base}/data/shard-{{00000..00002}}.tar"
    loader = build_loader(DataConfig(spec=spec, format="labelled", eval_size=8, resampled=False, batch_size=4,
                                     workers=0))
    assert sorted(k for b in loader for k in b["__key__"]) == sorted(keys)
    assert loader.epochs[-1]["skipped"]["reasons"] == {"unreadable_shard": 1}


def test_pipe_urls_need_permission(tmp_path):
    with pytest.raises(PermissionError, match="allow_pipe"):
        parse_spec("pipe:cat /dev/null")
    assert parse_spec("pipe:cat x.tar", allow_pipe=True)[0].urls == ["pipe:cat x.tar"]
