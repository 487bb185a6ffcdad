"""Zoo downloads against a real HTTP server on 127.0.0.1: cache, progress, resume, hash pins,
offline use, mirror folder, unknown names. References are sha256 values computed here."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_helpers import ZooServer, payload, write_registry  # noqa: E402

from excb import ExcbError  # noqa: E402
from excb import zoo  # noqa: E402

SIZE = 3 * 1024 * 1024 + 12345


@pytest.fixture
def server():
    s = ZooServer()
    yield s
    s.close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """A private cache, lock and registry with two entries served by ``server``."""
    monkeypatch.setenv("EXCB_CACHE", str(tmp_path / "cache"))
    for var in ("EXCB_OFFLINE", "EXCB_ZOO_MIRROR", "EXCB_ZOO_LOCK", "EXCB_NO_PROGRESS"):
        monkeypatch.delenv(var, raising=False)
    server.files["/rel/alpha.pth"] = payload(SIZE, 1)
    server.files["/rel/beta.pth"] = payload(1000, 2)
    reg = write_registry(tmp_path / "zoo.yaml", {
        "alpha": {"urls": [server.url("/rel/alpha.pth")]},
        "beta": {"urls": [server.url("/missing.pth"), server.url("/rel/beta.pth")],
                 "sha256": hashlib.sha256(payload(1000, 2)).hexdigest()},
    })
    monkeypatch.setenv("EXCB_ZOO_REGISTRY", str(reg))
    return tmp_path


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_download_into_cache_with_progress_and_lock(env, server, capsys):
    path = zoo.fetch("alpha")
    assert path == env / "cache" / "zoo" / "alpha" / "alpha.pth"
    assert path.read_bytes() == server.files["/rel/alpha.pth"]
    assert not list(path.parent.glob("*.part*"))          # temporaries renamed / removed
    err = capsys.readouterr().err
    assert "alpha" in err and "3.01M" in err and "B/s" in err   # tqdm byte progress bar, total known
    lock = json.loads((env / "cache" / "zoo" / "lock.json").read_text())
    assert lock["entries"]["alpha"]["sha256"] == _sha(server.files["/rel/alpha.pth"])
    assert lock["entries"]["alpha"]["size"] == SIZE
    # a second use is served from the cache: no request
    n = len(server.requests)
    assert zoo.fetch("alpha") == path
    assert len(server.requests) == n


def test_second_url_used_when_first_fails_and_pinned_sha_checked(env, server):
    path = zoo.fetch("beta")
    assert path.read_bytes() == payload(1000, 2)
    assert [r["path"] for r in server.requests] == ["/missing.pth", "/rel/beta.pth"]


def test_dropped_connection_resumes_with_range(env, server):
    server.drop_after = 1024 * 1024
    path = zoo.fetch("alpha", progress=False)
    assert _sha(path.read_bytes()) == _sha(server.files["/rel/alpha.pth"])
    assert len(server.requests) == 2
    assert server.requests[0]["range"] is None
    assert server.requests[1]["range"] == f"bytes={1024 * 1024}-"
    assert server.requests[1]["if_range"]                  # guarded by the ETag
    assert server.bytes_sent == SIZE                       # nothing downloaded twice


def test_partial_file_of_a_changed_server_file_restarts(env, server):
    server.drop_after = 1024 * 1024
    with pytest.raises(ExcbError):
        zoo.download(server.url("/rel/alpha.pth"), env / "x.part", progress=False, retries=0)
    assert (env / "x.part").stat().st_size == 1024 * 1024
    server.files["/rel/alpha.pth"] = payload(SIZE, 99)      # re-uploaded meanwhile: new ETag
    zoo.download(server.url("/rel/alpha.pth"), env / "x.part", progress=False)
    assert (env / "x.part").read_bytes() == payload(SIZE, 99)  # not a splice of old and new


def test_changed_file_on_server_refused_by_hash(env, server):
    first = zoo.fetch("alpha", progress=False)
    old = _sha(first.read_bytes())
    first.unlink()                                         # cache lost, lock kept
    server.files["/rel/alpha.pth"] = payload(SIZE, 7)
    new = _sha(payload(SIZE, 7))
    with pytest.raises(ExcbError) as e:
        zoo.fetch("alpha", progress=False)
    msg = str(e.value)
    assert old in msg and new in msg and "lock" in msg
    assert not first.exists()                              # the changed file never becomes the cached one
    assert (first.parent / "alpha.pth.rejected").exists()


def test_cached_file_tampered_is_refused_on_use(env, server):
    path = zoo.fetch("alpha", progress=False)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ExcbError) as e:
        zoo.fetch("alpha")
    assert _sha(bytes(data)) in str(e.value) and _sha(server.files["/rel/alpha.pth"]) in str(e.value)


def test_published_pin_mismatch_refused(env, server, monkeypatch):
    reg = write_registry(env / "zoo2.yaml", {
        "gamma": {"urls": [server.url("/rel/beta.pth")], "sha256_prefix": "0676ba61"},
        "delta": {"urls": [server.url("/rel/beta.pth")],
                  "md5_prefix": hashlib.md5(payload(1000, 2)).hexdigest()[:8]}})
    monkeypatch.setenv("EXCB_ZOO_REGISTRY", str(reg))
    with pytest.raises(ExcbError) as e:
        zoo.fetch("gamma", progress=False)
    assert "0676ba61" in str(e.value) and _sha(payload(1000, 2)) in str(e.value)
    assert zoo.fetch("delta", progress=False).read_bytes() == payload(1000, 2)


def test_offline_without_cache_says_which_file_where(env, server, monkeypatch):
    monkeypatch.setenv("EXCB_OFFLINE", "1")
    with pytest.raises(ExcbError) as e:
        zoo.fetch("alpha")
    msg = str(e.value)
    assert "alpha.pth" in msg and str(env / "cache" / "zoo" / "alpha" / "alpha.pth") in msg
    assert server.url("/rel/alpha.pth") in msg
    assert server.requests == []


def test_offline_with_cache_uses_it_without_network(env, server, monkeypatch):
    path = zoo.fetch("alpha", progress=False)
    n = len(server.requests)
    server.close()                                          # the network is gone
    assert zoo.fetch("alpha", offline=True) == path
    monkeypatch.setenv("EXCB_OFFLINE", "1")
    assert zoo.resolve_checkpoint("zoo:alpha")[0] == str(path)
    assert len(server.requests) == n


def test_mirror_folder(env, server, monkeypatch):
    mirror = env / "mirror"
    (mirror / "beta").mkdir(parents=True)
    (mirror / "beta" / "beta.pth").write_bytes(payload(1000, 2))
    (mirror / "alpha.pth").write_bytes(b"flat layout")
    monkeypatch.setenv("EXCB_ZOO_MIRROR", str(mirror))
    assert zoo.fetch("beta") == mirror / "beta" / "beta.pth"
    assert zoo.fetch("alpha") == mirror / "alpha.pth"
    assert server.requests == []
    (mirror / "beta" / "beta.pth").write_bytes(b"not the published file")
    with pytest.raises(ExcbError) as e:                      # pinned sha256 still applies
        zoo.fetch("beta")
    assert _sha(b"not the published file") in str(e.value)
    (mirror / "alpha.pth").unlink()
    with pytest.raises(ExcbError) as e:
        zoo.fetch("alpha")
    assert str(mirror / "alpha" / "alpha.pth") in str(e.value) and server.requests == []


def test_unknown_name_lists_the_names(env):
    with pytest.raises(ExcbError) as e:
        zoo.resolve_checkpoint("zoo:alpah")
    msg = str(e.value)
    assert "alpah" in msg and "did you mean 'alpha'" in msg and "alpha, beta" in msg


def test_resolve_checkpoint_fills_format_and_arch(env, server):
    path, fmt, arch, rec = zoo.resolve_checkpoint("zoo:beta", format="auto", arch=None)
    assert Path(path).read_bytes() == payload(1000, 2)
    assert (fmt, arch) == ("torchvision", "resnet18")
    assert rec["name"] == "beta" and rec["sha256"] == _sha(payload(1000, 2))
    assert zoo.resolve_checkpoint("zoo:beta", format="dino", arch="resnet50")[1:3] == ("dino", "resnet50")
    assert zoo.resolve_checkpoint("/some/file.pth") == ("/some/file.pth", "auto", None, None)


def test_real_registry_is_complete():
    reg = zoo.load_registry(zoo.DEFAULT_REGISTRY)
    want = {"dino_resnet50", "swav_800ep", "mocov2_800ep", "mocov3_resnet50_1000ep", "barlowtwins_resnet50",
            "vicreg_resnet50", "simsiam_100ep", "deepclusterv2_800ep", "dino_vits16", "mocov3_vits",
            "supervised_resnet50"}
    assert want <= set(reg)
    assert any(e.method == "ExCB" for e in reg.values())
    for name in want:
        e = reg[name]
        assert e.urls and all(u.startswith("https://") for u in e.urls), name
        assert e.url_source and e.published, name
    # numbers restated from the ExCB paper's Table 1 / Table 2 and the releases
    assert reg["dino_resnet50"].published_value("knn_top1")[0] == 67.5
    assert reg["swav_800ep"].published_value("linear_top1")[0] == 75.3
    assert reg["mocov2_800ep"].published_value("linear_top1")[0] == 71.1
    assert reg["dino_vits16"].published_value("linear_top1")[0] == 77.0
    assert reg["supervised_resnet50"].sha256_prefix == "0676ba61"
    assert reg["supervised_resnet50"].urls[0].endswith("resnet50-0676ba61.pth")
    assert reg["mocov2_800ep"].md5_prefix == "a04e12f8"


def test_bad_registry_is_one_line_error(tmp_path, monkeypatch):
    p = write_registry(tmp_path / "z.yaml", {"x": {"format": "nope"}})
    monkeypatch.setenv("EXCB_ZOO_REGISTRY", str(p))
    with pytest.raises(ExcbError) as e:
        zoo.get_entry("x")
    assert "format 'nope'" in str(e.value) and str(p) in str(e.value)
