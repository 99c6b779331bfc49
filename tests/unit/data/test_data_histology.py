"""The histology loader on small data sets in the real on-disk layout (class folders of TIFFs),
and its download against a local HTTP server (checksum, unpacking, locking, failures)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the histology loader reads images with Pillow")

from fedrun.data import histology  # noqa: E402
from fedrun.data.histology import (  # noqa: E402
    CLASS_NAMES,
    HISTOLOGY_FOLDER,
    HistologyInMemory,
    download_histology,
    find_histology_root,
    list_histology,
    read_image,
    split_train_valid,
    write_synthetic_histology,
)
from fedrun.errors import DataError  # noqa: E402

PER_CLASS = 5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """``<tmp>/Kather_texture_2016_image_tiles_5000/<class>/*.tif``, 5 tiles per class."""
    base = tmp_path_factory.mktemp("histology")
    write_synthetic_histology(base / HISTOLOGY_FOLDER, per_class=PER_CLASS)
    return base


def zipped(root: Path, top: str = HISTOLOGY_FOLDER) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(root)}")
    return buffer.getvalue()


@pytest.fixture
def server() -> Iterator[dict]:
    """An HTTP server on 127.0.0.1 serving ``files[path] = bytes``; counts requests."""
    state: dict = {"files": {}, "hits": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            state["hits"] += 1
            body = state["files"].get(self.path.split("?")[0])
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state["base"] = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------- reading the folders
def test_synthetic_set_has_the_real_layout(dataset):
    root = find_histology_root(dataset)
    assert root == dataset / HISTOLOGY_FOLDER
    files = list_histology(root)
    assert files.classes == CLASS_NAMES
    assert len(files.paths) == 8 * PER_CLASS
    assert all(p.suffix == ".tif" for p in files.paths)
    assert np.bincount(files.labels).tolist() == [PER_CLASS] * 8
    tile = read_image(files.paths[0])
    assert tile.shape == (150, 150, 3) and tile.dtype == np.uint8
    assert read_image(files.paths[0], size=40).shape == (40, 40, 3)


def test_split_is_stratified_disjoint_and_reproducible():
    labels = np.repeat(np.arange(8), 10)
    train, valid = split_train_valid(labels, 0.8, seed=0)
    again = split_train_valid(labels, 0.8, seed=0)
    assert np.array_equal(train, again[0]) and np.array_equal(valid, again[1])
    assert set(train).isdisjoint(valid) and len(train) + len(valid) == 80
    assert np.bincount(labels[train]).tolist() == [8] * 8
    assert np.bincount(labels[valid]).tolist() == [2] * 8


def test_shards_split_the_data_between_collaborators(dataset):
    one = HistologyInMemory("1", collaborator_count=2, data_dir=str(dataset), image_size=32)
    two = HistologyInMemory("2", collaborator_count=2, data_dir=str(dataset), image_size=32)
    # 5 tiles per class: 4 training and 1 validation each, halved between the shards
    assert one.get_train_data_size() + two.get_train_data_size() == 32
    assert one.get_valid_data_size() + two.get_valid_data_size() == 8
    assert abs(one.get_train_data_size() - two.get_train_data_size()) <= 1
    assert one.get_feature_shape() == (32, 32, 3) and one.X_train.dtype == np.uint8
    pixels = {x.tobytes() for x in one.X_train} | {x.tobytes() for x in one.X_valid}
    assert pixels.isdisjoint({x.tobytes() for x in two.X_train})
    again = HistologyInMemory("1", collaborator_count=2, data_dir=str(dataset), image_size=32)
    assert np.array_equal(again.X_train, one.X_train) and np.array_equal(again.y_train, one.y_train)


def test_batches_are_float_images_in_unit_range(dataset):
    loader = HistologyInMemory("1", collaborator_count=1, data_dir=str(dataset), batch_size=8)
    batches = list(loader.get_train_loader())
    assert sum(len(x) for x, _ in batches) == loader.get_train_data_size() == 32
    x, y = batches[0]
    assert x.dtype == np.float32 and x.shape[1:] == (150, 150, 3)
    assert x.min() >= 0.0 and x.max() <= 1.0 and y.dtype == np.int64
    valid = list(loader.get_valid_loader(batch_size=3))
    assert sum(len(x) for x, _ in valid) == 8 and valid[0][0].dtype == np.float32
    assert loader.num_classes == 8 and loader.class_names == CLASS_NAMES


def test_a_folder_data_path_is_the_collaborators_own_data(dataset, tmp_path, monkeypatch):
    loader = HistologyInMemory(str(dataset), image_size=24)
    assert loader.get_train_data_size() == 32 and loader.get_valid_data_size() == 8
    monkeypatch.chdir(dataset)
    relative = HistologyInMemory(HISTOLOGY_FOLDER, image_size=24)
    assert relative.get_train_data_size() == 32


def test_no_data_path_builds_an_empty_loader_with_known_shapes():
    loader = HistologyInMemory(None, image_size=150)
    assert loader.get_train_data_size() == 0 and loader.get_valid_data_size() == 0
    assert loader.get_feature_shape() == (150, 150, 3) and loader.num_classes == 8
    assert list(loader.get_train_loader()) == []


def test_data_is_found_through_the_environment_and_the_workspace(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDRUN_HISTOLOGY_DIR", str(dataset))
    via_env = HistologyInMemory("1", collaborator_count=4, image_size=16, download=False)
    assert via_env.get_train_data_size() == 8
    monkeypatch.delenv("FEDRUN_HISTOLOGY_DIR")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "histology").symlink_to(dataset / HISTOLOGY_FOLDER)
    via_cwd = HistologyInMemory("1", collaborator_count=4, image_size=16, download=False)
    assert np.array_equal(via_cwd.y_train, via_env.y_train)


def test_missing_data_without_download_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FEDRUN_HISTOLOGY_DIR", raising=False)
    with pytest.raises(DataError) as err:
        HistologyInMemory("1", download=False)
    assert err.value.code == "FX-DATA-030"
    assert "zenodo.org/records/53169" in err.value.fix
    assert str(tmp_path / "data" / "histology") in err.value.message


def test_class_count_must_match_the_model(dataset):
    with pytest.raises(DataError) as err:
        HistologyInMemory("1", data_dir=str(dataset), num_classes=5, image_size=16)
    assert err.value.code == "FX-DATA-034" and "num_classes: 8" in err.value.fix


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_a_corrupt_tile_is_named(tmp_path):
    write_synthetic_histology(tmp_path / "set", per_class=2, size=16, classes=CLASS_NAMES[:2])
    bad = tmp_path / "set" / CLASS_NAMES[0] / "broken.tif"
    bad.write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(DataError) as err:
        HistologyInMemory(str(tmp_path / "set"), num_classes=2, image_size=16, train_fraction=1.0)
    assert err.value.code == "FX-DATA-032" and "broken.tif" in err.value.message


def test_folders_without_class_folders_are_refused(tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError) as err:
        list_histology(tmp_path / "flat")
    assert err.value.code == "FX-DATA-034"


# ---------------------------------------------------------------------- download
def test_download_checks_the_sha384_and_unpacks_into_place(dataset, server, tmp_path):
    archive = zipped(dataset / HISTOLOGY_FOLDER)
    server["files"]["/tiles.zip"] = archive
    digest = hashlib.sha384(archive).hexdigest()
    root = download_histology(
        tmp_path / "dl", url=server["base"] + "/tiles.zip?download=1", sha384=digest
    )
    assert root == tmp_path / "dl" / HISTOLOGY_FOLDER
    assert len(list_histology(root).paths) == 8 * PER_CLASS
    leftovers = [p.name for p in (tmp_path / "dl").iterdir() if p.name != HISTOLOGY_FOLDER]
    assert leftovers == [".histology.lock"]  # no partial download, no unpack folder, no zip


def test_download_keeps_the_archive_when_asked(dataset, server, tmp_path):
    archive = zipped(dataset / HISTOLOGY_FOLDER, top="other_name")
    server["files"]["/a.zip"] = archive
    download_histology(
        tmp_path / "dl",
        url=server["base"] + "/a.zip",
        sha384=hashlib.sha384(archive).hexdigest(),
        keep_archive=True,
    )
    assert (tmp_path / "dl" / HISTOLOGY_FOLDER / "01_TUMOR").is_dir()
    assert (tmp_path / "dl" / "Kather_texture_2016_image_tiles_5000.zip").read_bytes() == archive


def test_a_wrong_checksum_keeps_nothing(dataset, server, tmp_path):
    server["files"]["/tiles.zip"] = zipped(dataset / HISTOLOGY_FOLDER)
    with pytest.raises(DataError) as err:
        download_histology(tmp_path / "dl", url=server["base"] + "/tiles.zip")  # real SHA-384
    assert err.value.code == "FX-DATA-031"
    assert histology.HISTOLOGY_SHA384 in err.value.message
    assert [p.name for p in (tmp_path / "dl").iterdir()] == [".histology.lock"]


def test_http_errors_and_unreachable_servers_are_reported(server, tmp_path):
    with pytest.raises(DataError) as missing:
        download_histology(tmp_path / "a", url=server["base"] + "/nothing.zip", sha384="0")
    assert missing.value.code == "FX-DATA-033" and "404" in missing.value.message
    assert "zenodo.org/records/53169" in missing.value.fix
    with pytest.raises(DataError) as refused:
        download_histology(tmp_path / "b", url="http://127.0.0.1:9/x.zip", sha384="0", timeout=5)
    assert refused.value.code == "FX-DATA-033"


def test_unsafe_archive_members_are_refused(server, tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("../escape.tif", b"x")
    server["files"]["/evil.zip"] = buffer.getvalue()
    with pytest.raises(DataError) as err:
        download_histology(
            tmp_path / "dl",
            url=server["base"] + "/evil.zip",
            sha384=hashlib.sha384(buffer.getvalue()).hexdigest(),
        )
    assert err.value.code == "FX-DATA-032"
    assert not (tmp_path / "escape.tif").exists()


def test_concurrent_downloads_fetch_once(dataset, server, tmp_path):
    archive = zipped(dataset / HISTOLOGY_FOLDER)
    server["files"]["/tiles.zip"] = archive
    digest = hashlib.sha384(archive).hexdigest()
    results: list[Path] = []

    def fetch():
        results.append(
            download_histology(tmp_path / "dl", url=server["base"] + "/tiles.zip", sha384=digest)
        )

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and len(set(results)) == 1
    assert server["hits"] == 1


def test_loader_downloads_when_the_data_is_missing(dataset, server, tmp_path, monkeypatch):
    archive = zipped(dataset / HISTOLOGY_FOLDER)
    server["files"]["/mirror.zip"] = archive
    monkeypatch.setattr(histology, "HISTOLOGY_SHA384", hashlib.sha384(archive).hexdigest())
    monkeypatch.setenv("FEDRUN_HISTOLOGY_URL", server["base"] + "/mirror.zip")
    monkeypatch.delenv("FEDRUN_HISTOLOGY_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    loader = HistologyInMemory("2", collaborator_count=2, image_size=16)
    assert (tmp_path / "data" / "histology" / HISTOLOGY_FOLDER / "08_EMPTY").is_dir()
    assert loader.get_train_data_size() == 16 and server["hits"] == 1
    HistologyInMemory("1", collaborator_count=2, image_size=16)  # found now: no new download
    assert server["hits"] == 1
