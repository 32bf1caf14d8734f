"""Batch ingest with Ray Data (scripts/ingest.py) into a deployed app, checked over HTTP."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from deployments.config import AppArgs, load_app_args
from deployments.ingest import IngestReport, id_from_name, ingest, list_images
from tests.conftest import RunningApp, deploy, kill_actors, serve_config
from tests.helpers import distinct_uploads

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parent.parent
BAD = {"fake.png", "broken.jpg"}
FEATURES = {"phash": {}, "color": {}, "thumbnail": {}}
ALL = sorted(FEATURES)


def _gallery(directory: Path, photo_paths: list[Path]) -> dict[str, Path]:
    """A small gallery: photos at two depths, one upper-case suffix, and files to pass over.

    Returns the name (relative, POSIX) -> source photo of each good image.
    """
    good = {}
    for i, src in enumerate(photo_paths):
        name = src.name if i % 2 == 0 else f"sub/deeper/{src.name}"
        if i == 1:
            name = f"sub/{src.stem}.JPG"
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, directory / name)
        good[name] = src
    (directory / "fake.png").write_text("not an image at all\n")
    data = photo_paths[0].read_bytes()
    (directory / "broken.jpg").write_bytes(data[: len(data) // 3])
    (directory / "notes.txt").write_text("not listed: not an image extension\n")
    (directory / "._hidden.jpg").write_bytes(b"\0\5\26\7")  # a macOS resource fork
    return good


def _copies(directory: Path, photo_paths: list[Path]) -> Path:
    """A folder of plain copies of ``photo_paths``."""
    directory.mkdir()
    for src in photo_paths:
        shutil.copy(src, directory / src.name)
    return directory


@pytest.fixture(scope="module")
def ing_app(ray_session: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    """The real app, deployed under its own actor names and data directory."""
    from ray import serve

    name = f"ing{uuid.uuid4().hex[:8]}"
    running = deploy(name, tmp_path_factory.mktemp(name), ray_session, features=FEATURES)
    yield running
    serve.delete("test")
    kill_actors(name)


@pytest.fixture(scope="module")
def args(ing_app: RunningApp) -> AppArgs:
    """The args the app was deployed with (as ``deploy`` builds them)."""
    config = serve_config(ing_app.name, ing_app.data_dir, features=FEATURES)
    return AppArgs.model_validate(config["args"])


@pytest.fixture(scope="module")
def client(ing_app: RunningApp) -> Iterator[httpx.Client]:
    """An HTTP client of the deployed app."""
    with httpx.Client(base_url=ing_app.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, photo_paths: list[Path]) -> Path:
    """The gallery the ingest tests share (see ``_gallery``)."""
    directory = tmp_path_factory.mktemp("gallery")
    _gallery(directory, photo_paths)
    return directory


@pytest.fixture(scope="module")
def first_run(gallery: Path, args: AppArgs) -> IngestReport:
    """The first ingest of the gallery (small batches, so that there are several)."""
    return ingest(gallery, args, batch_size=3, progress=False, app_name="test")


# --- no Ray -------------------------------------------------------------------------------
def test_list_images_is_recursive_and_filters_by_extension(
    tmp_path: Path, photo_paths: list[Path]
) -> None:
    good = _gallery(tmp_path, photo_paths)
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "thumb.jpg").write_bytes(b"x")
    (tmp_path / "_DSC0001.JPEG").write_bytes(b"x")  # Ray Data's own listing would drop it
    assert list_images(tmp_path) == sorted([*good, *BAD, "_DSC0001.JPEG"])
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "fake.png")


def test_id_from_name() -> None:
    assert id_from_name("sub/0042.jpg") == 42
    for bad in ("cover.jpg", "-3.jpg", "1e3.png", "12 .jpg", f"{2**63}.jpg"):
        with pytest.raises(ValueError):
            id_from_name(bad)


def test_load_app_args_reads_the_serve_config() -> None:
    args = load_app_args(ROOT / "configs" / "serve.yaml", "imgsearch")
    assert args.name == "imgsearch" and args.enabled == [
        *("phash", "color", "global", "clip", "local"),
        *("tags", "ocr", "caption", "thumbnail"),
    ]
    with pytest.raises(ValueError, match="no application named"):
        load_app_args(ROOT / "configs" / "serve.yaml", "nope")


# --- against the deployed app -------------------------------------------------------------
def test_every_good_photo_is_stored_and_bad_files_are_reported(
    first_run: IngestReport, gallery: Path, client: httpx.Client, photo_paths: list[Path]
) -> None:
    good = set(list_images(gallery)) - BAD
    assert len(good) == len(photo_paths)
    assert first_run.stored == len(good) and first_run.skipped == 0
    reasons = dict(first_run.failed)
    assert set(reasons) == BAD
    assert "not an image" in reasons["fake.png"]
    assert "truncated" in reasons["broken.jpg"] or "corrupt" in reasons["broken.jpg"]

    ids = set()
    for name in good:
        r = client.get("/images", params={"file_name": name})
        assert r.status_code == 200, (name, r.text)
        body = r.json()
        assert body["file_name"] == name and sorted(body["features"]) == ALL
        by_id = client.get(f"/images/{body['image_id']}").json()
        assert by_id["file_name"] == name and sorted(by_id["features"]) == ALL
        ids.add(body["image_id"])
    assert len(ids) == len(good)
    for name in BAD:
        assert client.get("/images", params={"file_name": name}).status_code == 404


def test_a_stored_photo_is_found_by_search(
    first_run: IngestReport, client: httpx.Client, photo_paths: list[Path]
) -> None:
    # Features written by the Ray Data pool match what the Serve extractors compute.
    src = photo_paths[2]
    r = client.post("/search/image", files={"image": (src.name, src.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    exact = {
        hit["file_name"]
        for hit in r.json()["results"]
        if hit["matches"].get("phash", {}).get("distance") == 0
    }
    assert src.name in exact


def test_second_run_skips_everything(
    first_run: IngestReport, gallery: Path, args: AppArgs, client: httpx.Client
) -> None:
    before = client.get("/health").json()["images"]
    again = ingest(gallery, args, progress=False, app_name="test")
    assert again.stored == 0 and again.skipped == first_run.stored
    assert {name for name, _ in again.failed} == BAD  # never stored, so reported every run
    assert client.get("/health").json()["images"] == before


def test_a_missing_feature_is_redone(
    first_run: IngestReport, gallery: Path, args: AppArgs, ing_app: RunningApp
) -> None:
    import ray

    name = "sub/deeper/" + sorted(p.name for p in (gallery / "sub" / "deeper").iterdir())[0]
    image_id = ray.get(ing_app.actor("catalog").id_of.remote(name))
    assert ray.get(ing_app.actor("index:color").remove.remote([image_id])) == [image_id]

    # Asked for phash only, the image counts as stored.
    only_phash = ingest(gallery, args, features=["phash"], progress=False, app_name="test")
    assert only_phash.stored == 0 and only_phash.skipped == first_run.stored

    redo = ingest(gallery, args, progress=False, app_name="test")
    assert redo.stored == 1 and redo.skipped == first_run.stored - 1
    assert ray.get(ing_app.actor("catalog").id_of.remote(name)) == image_id  # same id again
    assert ray.get(ing_app.actor("index:color").has.remote([image_id])) == [image_id]


def test_thumbnails_are_stored_and_backfilled(
    tmp_path: Path, args: AppArgs, client: httpx.Client, photo_paths: list[Path]
) -> None:
    """Ray Data ingest stores thumbnails; images stored without one (as before thumbnails)
    get theirs from a run with ``features=["thumbnail"]``, which stores nothing else."""
    folder = tmp_path / "older"
    folder.mkdir()
    names = [f"older-{p.name}" for p in photo_paths[:3]]
    for name, src in zip(names, photo_paths, strict=False):
        shutil.copy(src, folder / name)
    before = ingest(folder, args, features=["phash", "color"], progress=False, app_name="test")
    assert before.stored == 3
    ids = [client.get("/images", params={"file_name": n}).json()["image_id"] for n in names]
    missing = client.get(f"/images/{ids[0]}/thumbnail")
    assert missing.status_code == 404 and "--features thumbnail" in missing.json()["detail"]

    backfill = ingest(folder, args, features=["thumbnail"], progress=False, app_name="test")
    assert backfill.stored == 3 and not backfill.failed
    for image_id, name in zip(ids, names, strict=True):
        got = client.get(f"/images/{image_id}/thumbnail")
        assert got.status_code == 200 and got.headers["content-type"] == "image/webp"
        info = client.get(f"/images/{image_id}").json()
        assert info["file_name"] == name
        assert info["features"] == ["phash", "color", "thumbnail"]
    assert ingest(folder, args, progress=False, app_name="test").skipped == 3


def test_ids_from_filenames(
    tmp_path: Path, args: AppArgs, client: httpx.Client, photo_paths: list[Path]
) -> None:
    names = {"1001.jpg": photo_paths[0], "1002.jpg": photo_paths[1], "a/1003.jpeg": photo_paths[2]}
    extra = {"cover.jpg": photo_paths[3], "b/1001.jpg": photo_paths[4]}
    for name, src in {**names, **extra}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tmp_path / name)

    report = ingest(tmp_path, args, ids_from_filenames=True, progress=False, app_name="test")
    assert report.stored == len(names)
    reasons = dict(report.failed)
    assert set(reasons) == set(extra)
    assert "not an integer" in reasons["cover.jpg"] and "1001.jpg" in reasons["b/1001.jpg"]
    for name in names:
        image_id = int(Path(name).stem)
        body = client.get(f"/images/{image_id}").json()
        assert body["file_name"] == name and sorted(body["features"]) == ALL

    again = ingest(tmp_path, args, ids_from_filenames=True, progress=False, app_name="test")
    assert again.stored == 0 and again.skipped == len(names)


def test_a_name_conflict_costs_only_its_own_file(ing_app: RunningApp) -> None:
    """A name taken since the resume check (an API upload meanwhile) fails alone."""
    import asyncio

    import ray

    from index_actors.client import IndexClient

    catalog = ing_app.actor("catalog")
    assert ray.get(catalog.register.remote("conflict-a.jpg", 7001)) == (7001, "conflict-a.jpg")
    client = IndexClient(catalog, {}, {})
    got = asyncio.run(client.store([("conflict-b.jpg", 7002), ("conflict-a.jpg", 7003)], {}))
    assert [(s.image_id, s.file_name) for s in got] == [
        (7002, "conflict-b.jpg"),
        (None, "conflict-a.jpg"),
    ]
    assert [s.conflict for s in got] == [
        None,
        "file name 'conflict-a.jpg' already belongs to image 7001",
    ]
    for image_id in (7001, 7002):
        assert ray.get(catalog.unregister.remote(image_id))


def _command(tmp_path: Path, ing_app: RunningApp, folder: Path, *options: str) -> list[str]:
    """``scripts/ingest.py`` of ``folder`` into the module's app (a config file naming it as
    app ``cli``, written under ``tmp_path``), connected to this test's Ray cluster."""
    import ray

    config = tmp_path / "serve.yaml"
    app_args = {"name": ing_app.name, "data_dir": str(ing_app.data_dir)}
    config.write_text(yaml.safe_dump({"applications": [{"name": "test", "args": app_args}]}))
    return [
        sys.executable,
        str(ROOT / "scripts" / "ingest.py"),
        str(folder),
        f"--config={config}",
        "--app=test",
        f"--address={ray.get_runtime_context().gcs_address}",
        *options,
    ]


def test_command_line(
    tmp_path: Path, ing_app: RunningApp, client: httpx.Client, photo_paths: list[Path]
) -> None:
    """The script itself, in its own process, connected to this test's Ray cluster."""

    gallery = tmp_path / "photos"
    gallery.mkdir()
    shutil.copy(photo_paths[5], gallery / "2001.jpg")
    shutil.copy(photo_paths[6], gallery / "2002.webp.jpg")  # stem "2002.webp": not an id
    command = _command(tmp_path, ing_app, gallery, "--ids-from-filenames", "--features=phash")
    command.append("--batch-size=8")
    config = tmp_path / "serve.yaml"
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stored 1, skipped 0" in done.stdout, done.stdout
    # For a person: the summary and errors, not Ray's own logs (they stay in its files):
    # on stderr only the progress bar's redraws ("ingest: 50%|...", split by \r).
    noise = [
        line
        for line in done.stderr.splitlines()
        if any(part.strip() and not part.startswith("ingest:") for part in line.split("\r"))
    ]
    assert not noise and "pid=" not in done.stdout, noise[:5]
    assert "2002.webp.jpg: file name stem '2002.webp' is not an integer id" in done.stdout
    assert client.get("/images/2001").json()["features"] == ["phash"]

    bad = subprocess.run(
        [*command[:3], f"--config={config}", "--app=test", command[5], "--features=clip"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "not enabled" in bad.stderr, bad.stderr[-3000:]


def test_a_failed_index_write_leaves_nothing_half_visible(
    ing_app: RunningApp, tmp_path: Path, photo_paths: list[Path]
) -> None:
    """The ingest's write path is the ingress's: when one index cannot take a batch (its
    actor is gone for good), the new images are taken out of the other index and of the
    catalog again, reported, and a later run redoes them. (Actors of its own; the module's
    app computes the features.)"""
    import ray

    from index_actors.client import IndexClient

    name = f"half{uuid.uuid4().hex[:8]}"
    args = AppArgs(name=name, data_dir=str(tmp_path / "data"))
    client = IndexClient.open(name, str(args.data_path()), args.index_specs())
    gallery = _copies(tmp_path / "photos", photo_paths[:3])
    try:
        ray.kill(client.shards["color"][0], no_restart=True)
        report = ingest(gallery, args, progress=False, client=client, app_name="test")
        assert report.stored == 0 and len(report.failed) == 3, report.summary()
        assert all("index write failed" in why for _, why in report.failed)
        assert ray.get(client.catalog.count.remote()) == 0
        assert ray.get(client.shards["phash"][0].count.remote()) == 0

        fresh = IndexClient.open(name, str(args.data_path()), args.index_specs())
        again = ingest(gallery, args, progress=False, client=fresh, app_name="test")
        assert (again.stored, again.failed) == (3, []), again.summary()
    finally:
        kill_actors(name)


def test_ingest_writes_each_image_to_its_shard(
    ing_app: RunningApp, tmp_path: Path, photo_paths: list[Path]
) -> None:
    """With 2 shards, each batch is split by owner: every image is in its owner's index
    actor and in no other, and a second run finds everything stored."""
    import ray

    from index_actors.client import IndexClient
    from index_actors.shards import owner

    name = f"shard{uuid.uuid4().hex[:8]}"
    args = AppArgs(name=name, data_dir=str(tmp_path / "data"), shards=2)
    client = IndexClient.open(name, str(args.data_path()), args.index_specs())
    gallery = _copies(tmp_path / "photos", photo_paths[:6])
    try:
        report = ingest(gallery, args, progress=False, batch_size=4, app_name="test")
        assert (report.stored, report.failed) == (6, []), report.summary()
        ids = ray.get(client.catalog.ids_of.remote(sorted(p.name for p in photo_paths[:6])))
        assert {owner(i, 2) for i in ids} == {0, 1}
        for feature in ("phash", "color"):
            for shard, actor in enumerate(client.shards[feature]):
                mine = sorted(i for i in ids if owner(i, 2) == shard)
                assert ray.get(actor.has.remote(ids)) == mine
        again = ingest(gallery, args, progress=False, app_name="test")
        assert (again.stored, again.skipped) == (0, 6)
    finally:
        kill_actors(name)


def test_the_worker_pool_warning_stays_off_the_output(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``make ingest`` drops the raylet's "N PYTHON worker processes have been started"
    warning that Ray's driver prints from the cluster, and prints every other message."""
    import ray._private.worker as ray_worker

    from scripts.ingest import quiet_pool_warnings

    monkeypatch.setattr(ray_worker, "print_to_stdstream", ray_worker.print_to_stdstream)
    quiet_pool_warnings()
    quiet_pool_warnings()  # once is enough: not wrapped twice
    pool = (
        "WARNING: 12 PYTHON worker processes have been started on node: 92da with address: "
        "192.0.2.2, which is 6x the maximum expected startup concurrency (2)."
    )
    ray_worker.print_to_stdstream({"lines": [pool], "pid": "raylet", "is_err": False}, False)
    assert "worker processes" not in capsys.readouterr().out
    oom = "Task was killed due to the node running low on memory."
    ray_worker.print_to_stdstream({"lines": [oom], "pid": "raylet", "is_err": False}, False)
    assert oom in capsys.readouterr().out


def test_an_ingest_killed_halfway_and_run_again_stores_each_file_once(
    tmp_path: Path, ing_app: RunningApp, client: httpx.Client, photos: dict[str, bytes]
) -> None:
    """``make ingest`` SIGKILLed with part of a folder stored, then run again: the second
    run stores the rest, and each file is there once, under one id."""
    import ray

    folder = tmp_path / "halfway"
    folder.mkdir()
    files = [f"halfway-{i:02d}.jpg" for i in range(24)]
    for name, data in zip(files, distinct_uploads(photos, len(files)), strict=True):
        (folder / name).write_bytes(data)
    command = _command(tmp_path, ing_app, folder, "--features=phash,color", "--batch-size=2")
    catalog = ing_app.actor("catalog")
    before = ray.get(catalog.count.remote())

    def stored() -> int:
        return sum(i is not None for i in ray.get(catalog.ids_of.remote(files)))

    run = subprocess.Popen(command, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while stored() < 4 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    halfway = stored()
    assert 4 <= halfway < len(files), f"{halfway} of {len(files)} stored when killed"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    # The driver writes one batch (2 files) at a time: the kill may have caught one between
    # the catalog and the indexes, so it is redone (a re-add of its name, same id).
    done = re.search(r"stored (\d+), skipped (\d+)", again.stdout)
    assert done is not None, again.stdout
    stored_now, skipped = int(done[1]), int(done[2])
    assert stored_now + skipped == len(files) and halfway - 2 <= skipped <= halfway, again.stdout
    ids = ray.get(catalog.ids_of.remote(files))
    assert None not in ids and len(set(ids)) == len(files)
    assert ray.get(catalog.count.remote()) == before + len(files)
    for image_id in ids:
        assert sorted(client.get(f"/images/{image_id}").json()["features"]) == ["color", "phash"]
