"""data_prep.amazon and the download helpers of data_prep.common, fully offline: raw files in the
real formats are written to tmp_path and served by a local HTTP server on 127.0.0.1 that can
fail, refuse, or cut a transfer short (to test retries and resume)."""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from data_prep import amazon
from data_prep.common import DownloadError, download, k_core, stats


# ----------------------------------------------------------------------------- local server
class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.root`` under ``/plain/``. ``/down/`` always answers 503, ``/flaky/``
    answers 503 the first time, ``/cut/`` sends only half the body the first time (then closes),
    ``/norange/`` ignores Range headers. Every request is logged as (path, Range header) in
    ``server.log``."""

    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        srv = self.server
        path = self.path
        with srv.lock:
            srv.log.append((path, self.headers.get("Range")))
            seen = srv.seen.get(path, 0)
            srv.seen[path] = seen + 1
        mode, _, rel = path.lstrip("/").partition("/")
        if mode not in ("flaky", "cut", "norange", "plain", "down"):
            self.send_error(404)
            return
        file = srv.root / rel
        if mode == "down" or mode == "flaky" and seen == 0:
            self.send_error(503)
            return
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and mode != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if mode == "cut" and seen == 0:
            self.wfile.write(body[start:start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.log, srv.seen, srv.lock = root, [], {}, threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def jpeg_bytes(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), colour).save(buf, format="JPEG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- downloads
def test_download_resumes_a_cut_transfer_with_range(server, tmp_path):
    payload = bytes(range(256)) * 400
    (server.root / "big.bin").write_bytes(payload)
    dest = download(f"{server.url}/cut/big.bin", tmp_path / "big.bin", backoff=0.01,
                    progress=False)
    assert dest.read_bytes() == payload
    ranges = [r for p, r in server.log if p == "/cut/big.bin"]
    assert ranges[0] is None and ranges[1] == f"bytes={len(payload) // 2}-"
    assert not (tmp_path / "big.bin.part").exists()


def test_download_resumes_a_part_file_from_an_earlier_run(server, tmp_path):
    payload = b"0123456789" * 1000
    (server.root / "f.bin").write_bytes(payload)
    (tmp_path / "f.bin.part").write_bytes(payload[:3000])
    download(f"{server.url}/plain/f.bin", tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == payload
    assert server.log == [("/plain/f.bin", "bytes=3000-")]


def test_download_starts_over_when_range_is_ignored(server, tmp_path):
    payload = b"abcdef" * 500
    (server.root / "g.bin").write_bytes(payload)
    (tmp_path / "g.bin.part").write_bytes(b"stale bytes")
    download(f"{server.url}/norange/g.bin", tmp_path / "g.bin", progress=False)
    assert (tmp_path / "g.bin").read_bytes() == payload


def test_download_retries_then_succeeds_and_skips_existing(server, tmp_path):
    (server.root / "h.bin").write_bytes(b"hello")
    download(f"{server.url}/flaky/h.bin", tmp_path / "h.bin", backoff=0.01, progress=False)
    assert (tmp_path / "h.bin").read_bytes() == b"hello"
    assert len(server.log) == 2  # one 503, one success
    download(f"{server.url}/flaky/h.bin", tmp_path / "h.bin", progress=False)
    assert len(server.log) == 2  # existing file: no request


def test_download_404_fails_at_once_and_sha256_is_checked(server, tmp_path):
    with pytest.raises(DownloadError, match="missing.bin: HTTP 404"):
        download(f"{server.url}/plain/missing.bin", tmp_path / "m.bin", backoff=0.01,
                 progress=False)
    assert len(server.log) == 1  # not retried
    (server.root / "s.bin").write_bytes(b"checked")
    good = hashlib.sha256(b"checked").hexdigest()
    download(f"{server.url}/plain/s.bin", tmp_path / "s.bin", sha256=good, progress=False)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(f"{server.url}/plain/s.bin", tmp_path / "t.bin", sha256="0" * 64,
                 progress=False)
    assert not (tmp_path / "t.bin").exists()


def test_download_gives_up_after_retries(server, tmp_path):
    (server.root / "x").write_bytes(b"x")
    with pytest.raises(DownloadError, match="after 3 attempts"):
        download(f"{server.url}/down/x", tmp_path / "x", retries=2, backoff=0.01,
                 progress=False)
    assert len(server.log) == 3  # 503 every time: tried 1 + 2 times
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- k-core oracle
def test_k_core_cascades_until_stable():
    # k = 2. u3 has one item -> dropped; then i4 (rated by u3 and u2) has one rating -> dropped;
    # then u2 has one item left -> dropped; then i3 (u2, u1) -> one rating -> dropped.
    rows = [("u1", "i1", 0), ("u1", "i2", 0), ("u1", "i3", 0), ("u0", "i1", 0), ("u0", "i2", 0),
            ("u2", "i3", 0), ("u2", "i4", 0), ("u3", "i4", 0)]
    assert sorted(k_core(rows, 2)) == sorted(
        [("u1", "i1", 0), ("u1", "i2", 0), ("u0", "i1", 0), ("u0", "i2", 0)])
    assert k_core(rows, 3) == []


def test_fetched_images_that_do_not_decode_are_failures_not_crashes(server, tmp_path):
    """A decompression bomb (a header claiming 20000 x 20000 pixels) and an HTML page served as
    .jpg are failed images (removed, named), like a 404; a real picture is kept."""
    from bad_images import bomb_png

    (server.root / "img").mkdir()
    (server.root / "img" / "ok.jpg").write_bytes(jpeg_bytes((0, 250, 0)))
    (server.root / "img" / "bomb.png").write_bytes(bomb_png())
    (server.root / "img" / "page.jpg").write_bytes(b"<html>Service unavailable</html>")
    urls = {name: f"{server.url}/plain/img/{file}" for name, file in
            (("OK", "ok.jpg"), ("BOMB", "bomb.png"), ("PAGE", "page.jpg"))}
    done, failed = amazon.fetch_images(urls, tmp_path / "images", workers=2, backoff=0.01)
    assert done == {"OK": "OK.jpg"}
    assert sorted(f.split(":")[0] for f in failed) == ["BOMB", "PAGE"]
    assert all("not a readable image (unreadable)" in f for f in failed)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["OK.jpg"]


# ----------------------------------------------------------------------------- converter
USERS = ["A1", "A2", "A3", "A4"]
CORE_ITEMS = ["B1", "B2", "B3", "B4"]


def ratings_rows():
    """Users A1..A4 rate B1..B4 (the 3-core), A5 rates 2 items (dropped by the 3-core), B5 is
    rated once (dropped), NOMETA is rated by all four but has no metadata (dropped first)."""
    rows = [(u, i, 4.0, 1000 + 10 * k + j) for k, u in enumerate(USERS)
            for j, i in enumerate(CORE_ITEMS)]
    rows += [("A5", "B1", 5.0, 2000), ("A5", "B2", 5.0, 2001), ("A1", "B5", 3.0, 2002)]
    rows += [(u, "NOMETA", 1.0, 3000) for u in USERS]
    rows += [("A1", "B1", 2.0, 900)]  # duplicate (A1, B1): the earlier timestamp 900 stays
    return rows


def write_2014(raw: Path, url: str) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in ratings_rows()] + ["broken,row"]
    (raw / "ratings_Beauty.csv").write_text("\n".join(lines) + "\n")
    meta = [
        {"asin": "B1", "title": "Rose  &amp; lipstick", "imUrl": f"{url}/plain/img/B1.jpg",
         "categories": [["Beauty"]]},
        {"asin": "B2", "title": "Brush set"},  # no image URL
        {"asin": "B3", "title": "Nail polish", "imUrl": f"{url}/plain/img/missing.jpg"},  # 404
        {"asin": "B4", "imUrl": f"{url}/flaky/img/B4.jpg"},  # no title; 503 once
        {"asin": "B5", "title": "Tail item", "imUrl": f"{url}/plain/img/B5.jpg"},
    ]
    text = "\n".join(repr(m) for m in meta[:2]) + "\n{'asin': 'BROKEN', 'title': \n" + \
        "\n".join(repr(m) for m in meta[2:]) + "\n"
    with gzip.open(raw / "meta_Beauty.json.gz", "wt", encoding="utf-8") as f:
        f.write(text)


def read_out(folder: Path):
    with open(folder / "interactions.csv", newline="") as f:
        inter = [(r["user_id"], r["item_id"], int(r["timestamp"])) for r in csv.DictReader(f)]
    with open(folder / "items.csv", newline="") as f:
        items = {r["item_id"]: (r["title"], r["image"]) for r in csv.DictReader(f)}
    return inter, items


def expected_core():
    rows = {(u, i): 1000 + 10 * k + j for k, u in enumerate(USERS)
            for j, i in enumerate(CORE_ITEMS)}
    rows[("A1", "B1")] = 900
    return sorted((u, i, t) for (u, i), t in rows.items())


def test_convert_2014_downloads_raw_files_and_images(server, tmp_path, capsys):
    staged = tmp_path / "staged"
    write_2014(staged, server.url)
    for name in ("ratings_Beauty.csv", "meta_Beauty.json.gz"):
        (server.root / name).write_bytes((staged / name).read_bytes())
    (server.root / "img").mkdir()
    b1, b4 = jpeg_bytes((250, 0, 0)), jpeg_bytes((0, 0, 250))
    (server.root / "img" / "B1.jpg").write_bytes(b1)
    (server.root / "img" / "B4.jpg").write_bytes(b4)

    out = amazon.convert(tmp_path / "raw", tmp_path / "out", "Beauty", k_core=3,
                         base_url=f"{server.url}/plain/", backoff=0.01, workers=2)
    inter, items = read_out(out)
    assert sorted(inter) == expected_core()
    assert items == {"B1": ("Rose & lipstick", "images/B1.jpg"), "B2": ("Brush set", ""),
                     "B3": ("Nail polish", ""), "B4": ("", "images/B4.jpg")}
    assert (out / "images" / "B1.jpg").read_bytes() == b1
    assert (out / "images" / "B4.jpg").read_bytes() == b4
    assert (tmp_path / "raw" / "ratings_Beauty.csv").is_file()  # raw files kept for re-runs

    printed = capsys.readouterr().out
    assert "1 malformed lines skipped" in printed and "1 malformed rows skipped" in printed
    assert "user,item,rating,timestamp" in printed
    assert "dropped 4 ratings of items without metadata" in printed
    assert "1 images failed" in printed and "missing.jpg" in printed
    # ours: 4 users, 4 items, 16 interactions, sparsity 0; the paper's Beauty row follows
    assert "0.00%" in printed and "paper (GFMFR)" in printed and "2,535" in printed

    # a re-run finds raw files and images on disk: no raw or image request is made again
    before = len(server.log)
    amazon.convert(tmp_path / "raw", tmp_path / "out", "Beauty", k_core=3,
                   base_url=f"{server.url}/plain/", backoff=0.01, workers=2)
    again = [p for p, _ in server.log[before:]]
    assert again == ["/plain/img/missing.jpg"]  # only the failed image is tried again


def test_convert_2018_json_meta_and_swapped_columns_offline(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = [f"{i},{u},{r},{t}" for u, i, r, t in ratings_rows()]  # 2018 order: item,user
    (raw / "All_Beauty.csv").write_text("\n".join(lines) + "\n")
    meta = [{"asin": "B1", "title": "Rose lipstick", "imageURL": ["http://x/small.jpg"],
             "imageURLHighRes": ["http://x/B1.jpg"]},
            {"asin": "B2", "title": "Brush set", "imageURL": []},
            {"asin": "B3", "title": "Nail polish"}, {"asin": "B4", "title": "Cream"},
            {"asin": "B5", "title": "Tail"}]
    with gzip.open(raw / "meta_All_Beauty.json.gz", "wt") as f:
        f.write("\n".join(json.dumps(m) for m in meta) + "\nnot json at all\n")
    meta_read, skipped = amazon.read_meta(raw / "meta_All_Beauty.json.gz")
    assert meta_read["B1"] == ("Rose lipstick", "http://x/B1.jpg") and len(skipped) == 1

    out = amazon.convert(raw, tmp_path / "out", "Beauty", download_images=False, k_core=3,
                         version="2018", base_url="http://127.0.0.1:9/")
    inter, items = read_out(out)
    assert sorted(inter) == expected_core()
    assert all(image == "" for _, image in items.values())
    assert "item,user,rating,timestamp" in capsys.readouterr().out


def test_convert_2023_jsonl_offline(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    with gzip.open(raw / "All_Beauty.jsonl.gz", "wt") as f:
        for u, i, r, t in ratings_rows():
            f.write(json.dumps({"rating": r, "user_id": u, "asin": i + "-v", "parent_asin": i,
                                "timestamp": t * 1000}) + "\n")
        f.write('{"user_id": "A9"}\n')  # no item, no timestamp: skipped
    with gzip.open(raw / "meta_All_Beauty.jsonl.gz", "wt") as f:
        for i in CORE_ITEMS + ["B5"]:
            f.write(json.dumps({"parent_asin": i, "title": f"t{i}", "images": [
                {"thumb": "http://x/t.jpg", "large": f"http://x/{i}-alt.jpg", "variant": "PT01"},
                {"thumb": "http://x/t.jpg", "large": f"http://x/{i}.jpg", "variant": "MAIN"},
            ]}) + "\n")
    meta, _ = amazon.read_meta(raw / "meta_All_Beauty.jsonl.gz")
    assert meta["B2"] == ("tB2", "http://x/B2.jpg")  # the MAIN image first
    out = amazon.convert(raw, tmp_path / "out", "Beauty", download_images=False, k_core=3,
                         version="2023")
    inter, items = read_out(out)
    assert sorted(inter) == expected_core()
    assert items["B3"] == ("tB3", "")


def test_cli_no_images_and_bad_options(tmp_path, capsys):
    write_2014(tmp_path / "raw", "http://127.0.0.1:9")
    code = amazon.main(["--category", "Beauty", "--out", str(tmp_path / "out"), "--raw",
                        str(tmp_path / "raw"), "--no-images", "--k-core", "3"])
    assert code == 0
    inter, items = read_out(tmp_path / "out")
    assert stats(inter)["interactions"] == 16 and set(items) == set(CORE_ITEMS)
    # a k-core that empties the data is one clear error line
    code = amazon.main(["--category", "Beauty", "--out", str(tmp_path / "out2"), "--raw",
                        str(tmp_path / "raw"), "--no-images"])
    assert code == 2
    assert "nothing is left after the 10-core filter" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        amazon.main(["--category", "Shoes", "--out", str(tmp_path / "o")])


def test_raw_file_urls_match_the_published_layouts():
    files = amazon.raw_files("Tools_and_Home", "2014")
    assert files["ratings"][0] == ("http://snap.stanford.edu/data/amazon/productGraph/"
                                   "categoryFiles/ratings_Tools_and_Home_Improvement.csv")
    assert files["meta"][1] == "meta_Tools_and_Home_Improvement.json.gz"
    assert amazon.raw_files("Office_Products", "2018")["meta"][0].endswith(
        "amazon_v2/metaFiles2/meta_Office_Products.json.gz")
    assert amazon.raw_files("Beauty", "2023")["ratings"][0].endswith(
        "amazon_2023/raw/review_categories/All_Beauty.jsonl.gz")
