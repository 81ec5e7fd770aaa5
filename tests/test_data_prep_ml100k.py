"""data_prep.ml100k: both raw forms written by the test (a GroupLens-style zip served by a local
HTTP server on 127.0.0.1, and a plain comma-separated ratings.dat), with exact expected output;
and, when present, the real ../shared/data/ml-100k (943 users, 1,682 items, 100,000 ratings)."""
from __future__ import annotations

import csv
import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from data_prep import ml100k
from data_prep.common import DownloadError, stats
from fedmm_lite.data import read_folder
from fedmm_lite.errors import DatasetError

REAL_RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k"

# (user, item, rating, timestamp) in GroupLens's u.data order (not sorted by user)
RATINGS = [
    (3, 2, 4, 300), (1, 1, 5, 100), (2, 3, 1, 250), (1, 2, 3, 90), (2, 1, 2, 200),
    (1, 3, 4, 100),  # same second as (1, 1): both kept
    (3, 1, 5, 310), (3, 4, 2, 305),
]
# u.item: '|' separated, latin-1; item 2's title has an accent; item 4 has no title line
U_ITEM = ("1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy|0|0|1\n"
          "2|Caf\u00e9 au lait (1994)|01-Jan-1994||http://x|0|1|0\n"
          "3|Four  Rooms (1995)|01-Jan-1995||http://x|0|0|0\n")
EXPECTED_INTERACTIONS = [  # sorted by user, timestamp, item (the folder writer's order)
    ("1", "2", "90"), ("1", "1", "100"), ("1", "3", "100"),
    ("2", "1", "200"), ("2", "3", "250"),
    ("3", "2", "300"), ("3", "4", "305"), ("3", "1", "310"),
]


def u_data_text(rows=RATINGS) -> str:
    return "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)


def zip_bytes(u_data: str, u_item: str | None = U_ITEM) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-100k/README", "MovieLens 100K (test fixture)\n")
        zf.writestr("ml-100k/u.data", u_data.encode("latin-1"))
        if u_item is not None:
            zf.writestr("ml-100k/u.item", u_item.encode("latin-1"))
    return buf.getvalue()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def interactions_of(folder: Path) -> list[tuple[str, str, str]]:
    return [(r["user_id"], r["item_id"], r["timestamp"])
            for r in read_csv(folder / "interactions.csv")]


# ----------------------------------------------------------------------------- local server
class _Handler(BaseHTTPRequestHandler):
    """Serves the files of ``server.root``; logs every requested path in ``server.log``."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.log.append(self.path)
        file = self.server.root / self.path.lstrip("/")
        if not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.log = root, []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


# ----------------------------------------------------------------------------- the archive
def test_archive_is_downloaded_checked_and_converted(server, tmp_path, capsys):
    payload = zip_bytes(u_data_text() + "7\t8\n")  # one malformed line
    (server.root / "ml-100k.zip").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    raw = tmp_path / "raw"  # does not exist yet: the archive is downloaded into it
    out = ml100k.convert(raw, tmp_path / "out", url=f"{server.url}/ml-100k.zip", sha256=digest,
                         backoff=0.01)
    assert out == tmp_path / "out"
    assert (raw / "ml-100k.zip").read_bytes() == payload  # kept for re-runs
    assert server.log == ["/ml-100k.zip"]

    assert interactions_of(out) == EXPECTED_INTERACTIONS
    assert read_csv(out / "items.csv") == [
        {"item_id": "1", "title": "Toy Story (1995)", "image": ""},
        {"item_id": "2", "title": "Caf\u00e9 au lait (1994)", "image": ""},
        {"item_id": "3", "title": "Four Rooms (1995)", "image": ""},
        {"item_id": "4", "title": "", "image": ""},  # rated, but not in u.item
    ]
    printed = capsys.readouterr().out
    assert "8 ratings read" in printed and "(archive)" in printed
    assert "skipped 1 malformed lines" in printed and "u.data line 9" in printed
    assert "1 items without title" in printed
    # 3 users, 4 items, 8 interactions: sparsity 1 - 8/12 = 33.33%; GroupLens's counts follow
    assert "33.33%" in printed and "paper (GroupLens)" in printed and "100,000" in printed

    data = read_folder(out)  # the package's own reader accepts the folder
    assert len(data.interactions) == 8 and len(data.items) == 4

    ml100k.convert(raw, tmp_path / "out2", url=f"{server.url}/ml-100k.zip", sha256=digest)
    assert server.log == ["/ml-100k.zip"]  # the archive on disk is used: no second request
    assert interactions_of(tmp_path / "out2") == EXPECTED_INTERACTIONS


def test_a_wrong_checksum_stops_before_anything_is_written(server, tmp_path):
    (server.root / "ml-100k.zip").write_bytes(zip_bytes(u_data_text()))
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        ml100k.convert(tmp_path / "raw", tmp_path / "out", url=f"{server.url}/ml-100k.zip",
                       sha256="0" * 64, backoff=0.01)
    assert not (tmp_path / "raw" / "ml-100k.zip").exists()
    assert not (tmp_path / "out").exists()


def test_by_default_the_grouplens_archive_is_fetched_with_its_checksum(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, dest, *, sha256=None, retries=4, backoff=1.0):
        calls.append((url, dest, sha256))
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        Path(dest).write_bytes(zip_bytes(u_data_text()))
        return dest

    monkeypatch.setattr(ml100k, "download", fake_download)
    assert ml100k.main(["--out", str(tmp_path / "data" / "ml-100k")]) == 0
    assert calls == [("https://files.grouplens.org/datasets/movielens/ml-100k.zip",
                      tmp_path / "data" / "raw-ml-100k" / "ml-100k.zip",
                      "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229")]
    assert interactions_of(tmp_path / "data" / "ml-100k") == EXPECTED_INTERACTIONS


def test_an_extracted_archive_and_a_zip_path_are_read_offline(tmp_path):
    extracted = tmp_path / "raw" / "ml-100k"
    extracted.mkdir(parents=True)
    (extracted / "u.data").write_text(u_data_text(), encoding="latin-1")
    (extracted / "u.item").write_text(U_ITEM, encoding="latin-1")
    out = ml100k.convert(tmp_path / "raw", tmp_path / "a", url="http://127.0.0.1:9/none.zip")
    assert interactions_of(out) == EXPECTED_INTERACTIONS
    assert read_csv(out / "items.csv")[1]["title"] == "Caf\u00e9 au lait (1994)"

    archive = tmp_path / "elsewhere" / "my-copy.zip"
    archive.parent.mkdir()
    archive.write_bytes(zip_bytes(u_data_text(), u_item=None))  # no u.item: titles empty
    out = ml100k.convert(archive, tmp_path / "b", url="http://127.0.0.1:9/none.zip")
    assert interactions_of(out) == EXPECTED_INTERACTIONS
    assert all(r["title"] == "" for r in read_csv(out / "items.csv"))


# ----------------------------------------------------------------------------- ratings.dat
def write_ratings_dat(path: Path, extra: str = "") -> Path:
    """The workplace's layout: comma separated, sorted by user, no header, no titles."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{u},{i},{r},{t}" for u, i, r, t in sorted(RATINGS)]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def test_ratings_dat_gives_the_same_interactions_and_empty_titles(tmp_path, capsys):
    dat = write_ratings_dat(tmp_path / "raw" / "ratings.dat", extra="1;5;3;7\n\n4,9,x,oops\n")
    for source, out in ((dat, tmp_path / "from-file"), (dat.parent, tmp_path / "from-folder")):
        ml100k.convert(source, out, url="http://127.0.0.1:9/none.zip")
        assert interactions_of(out) == EXPECTED_INTERACTIONS
        assert read_csv(out / "items.csv") == [
            {"item_id": i, "title": "", "image": ""} for i in ("1", "2", "3", "4")]
    printed = capsys.readouterr().out
    assert "(ratings.dat)" in printed and "0 titles" in printed
    assert "skipped 2 malformed lines" in printed
    assert "ratings.dat line 9: 1 fields" in printed and "ratings.dat line 11" in printed


def test_duplicates_keep_the_first_timestamp_and_k_core_is_optional(tmp_path, capsys):
    dat = write_ratings_dat(tmp_path / "ratings.dat", extra="1,1,2,50\n")  # (1, 1) again, earlier
    out = ml100k.convert(dat, tmp_path / "all")
    rows = interactions_of(out)
    assert len(rows) == 8 and ("1", "1", "50") in rows and ("1", "1", "100") not in rows
    assert "dropped 1 duplicated" in capsys.readouterr().out
    # 3-core: user 2 (2 ratings) and items 2, 3, 4 (2, 2, 1) go; users 1 and 3 are left with
    # item 1 only, so they go too: nothing is left
    with pytest.raises(DatasetError, match="nothing is left after the 3-core filter"):
        ml100k.convert(dat, tmp_path / "core3", k_core_min=3)
    out = ml100k.convert(dat, tmp_path / "core2", k_core_min=2)  # only item 4 goes
    assert stats([(u, i, int(t)) for u, i, t in interactions_of(out)])["interactions"] == 7
    assert all(i != "4" for _, i, _ in interactions_of(out))


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(DatasetError, match="ratings.dat: ratings file not found"):
        ml100k.convert(tmp_path / "missing" / "ratings.dat", tmp_path / "out")
    (tmp_path / "junk.dat").write_text("user,item,rating,timestamp\n")
    with pytest.raises(DatasetError, match="junk.dat: no well-formed rating line"):
        ml100k.convert(tmp_path / "junk.dat", tmp_path / "out")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="bad.zip: not a readable zip archive"):
        ml100k.convert(tmp_path / "bad.zip", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("ml-100k/README", "no ratings here\n")
    with pytest.raises(DatasetError, match="no ml-100k/u.data inside the archive"):
        ml100k.convert(tmp_path / "empty.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert ml100k.main(["--raw", str(tmp_path / "junk.dat"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ml100k.main(["--help"])
    assert exit_info.value.code == 0
    assert "--raw" in capsys.readouterr().out
    dat = write_ratings_dat(tmp_path / "ratings.dat")
    assert ml100k.main(["--raw", str(dat), "--out", str(tmp_path / "out")]) == 0
    assert interactions_of(tmp_path / "out") == EXPECTED_INTERACTIONS
    assert ml100k.main(["--raw", str(dat), "--out", str(tmp_path / "k"), "--k-core", "2"]) == 0
    assert len(interactions_of(tmp_path / "k")) == 7


# ----------------------------------------------------------------------------- the real data
def test_real_ml100k_has_every_rating(tmp_path):
    if not (REAL_RAW / "ratings.dat").is_file():
        pytest.skip(f"real ml-100k data absent ({REAL_RAW}); fixture tests still run")
    out = ml100k.convert(REAL_RAW, tmp_path / "ml-100k")
    rows = interactions_of(out)
    s = stats([(u, i, int(t)) for u, i, t in rows])
    assert (s["users"], s["items"], s["interactions"]) == (943, 1_682, 100_000)
    items = read_csv(out / "items.csv")
    assert len(items) == 1_682 and all(it["title"] == "" and it["image"] == "" for it in items)
    data = read_folder(out)
    assert len(data.interactions) == 100_000
