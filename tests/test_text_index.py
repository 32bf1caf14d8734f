"""The text index (issue 5, first step, no Ray): both backends, the embedded one and a real
PostgreSQL server (started here in a folder; `.ci/run` makes sure PostgreSQL is installed)."""

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from extractors.textdoc import checked_doc, doc_text, encode_doc, labels, merge_docs, words
from index_actors.interface import UnknownImage
from index_actors.text import EmbeddedTextIndex, TextFeatureIndex
from index_actors.text_match import TextIndex, TextUnavailable
from index_actors.text_pg import PostgresTextIndex
from scripts.pgserver import pg_server, start, stop

TEXTS = {
    1: {"text": "Please sign to receive your parcel", "tags": "office"},
    2: {"caption": "a photo of a bridge at dusk", "tags": "bridge, outdoor"},
    3: {"text": "Добро пожаловать в Москву", "caption": "a street sign"},
    4: {"text": "東京タワー 333 m", "tags": "tower"},
    5: {"caption": "two friends on a beach", "tags": "beach, outdoor"},
}


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    folder = Path(tempfile.mkdtemp(prefix="pg-test-"))
    os.chmod(folder, 0o755)  # the server runs as the postgres user when we are root
    with pg_server(folder / "pg") as dsn:
        yield dsn


@pytest.fixture(params=["embedded", "postgres"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TextIndex]:
    if request.param == "embedded":
        idx: TextIndex = EmbeddedTextIndex(tmp_path)
    else:
        dsn = request.getfixturevalue("pg_dsn")
        idx = PostgresTextIndex(dsn)
        idx.remove(list(range(1, 100)))  # the server is shared by the module's tests
    for image_id, fields in TEXTS.items():
        idx.add(image_id, fields)
    yield idx
    idx.close()


def _top(idx: TextIndex, query: str) -> int | None:
    hits = idx.search(query, k=3)
    return hits[0][0] if hits else None


@pytest.mark.parametrize(
    ("query", "want"),
    [
        ("receive", 1),  # exact
        ("recieve", 1),  # misspelt: a transposition
        ("recive", 1),  # misspelt: a letter missing
        ("foto", 2),  # sound-alike (metaphone FT)
        ("Bridge", 2),  # case
        ("москву", 3),  # Cyrillic
        ("東京タワー", 4),  # CJK, as a whole word
        ("friends beach", 5),
    ],
)
def test_exact_misspelt_and_sound_alike_words(index: TextIndex, query: str, want: int) -> None:
    assert _top(index, query) == want


def test_scores_rank_exact_over_fuzzy(index: TextIndex) -> None:
    exact = dict(index.search("receive"))[1]
    fuzzy = dict(index.search("recieve"))[1]
    assert exact == 0.0 < fuzzy < 1.0
    # Every query word counts: an image matching one of two words is further.
    both = dict(index.search("bridge dusk"))
    assert both[2] == 0.0
    assert dict(index.search("bridge parcel"))[2] == 0.5
    assert index.search("zebra") == []


def test_replace_remove_and_get(index: TextIndex) -> None:
    index.add(1, {"caption": "a red zebra"})
    assert index.get(1) == {"caption": "a red zebra"}
    assert _top(index, "zebra") == 1 and index.search("parcel") == []
    assert index.remove([1, 42]) == [1]
    assert index.get(1) is None and index.search("zebra") == []
    assert index.count == len(TEXTS) - 1


def test_broader_words_of_tags(index: TextIndex) -> None:
    """A tag's broader words (WordNet's hypernyms, the shipped table) find its image, below
    a match of the image's own words; the stored document keeps the tag alone."""
    daisy = {"tags": [{"label": "daisy", "score": 0.9}]}
    index.add(10, daisy)
    index.add(11, {"tags": "flower"})
    index.add(12, {"caption": "a plane"})
    for query in ("flower", "plant", "flowers", "Plant"):
        assert 10 in dict(index.search(query)), query
    assert 10 not in dict(index.search("animal"))
    # A direct tag first; a broader word's exact match before a misspelt own word.
    assert [i for i, _ in index.search("flower", k=2)] == [11, 10]
    assert [i for i, _ in index.search("plant", k=2)] == [10, 12]
    assert dict(index.search("daisy"))[10] == 0.0 < dict(index.search("flower"))[10] < 0.25
    # A broader word is matched as spelt or one edit off, not two ("plant"'s own words are).
    assert 10 not in dict(index.search("blamt")) and 12 in dict(index.search("plamn"))
    assert index.get(10) == daisy  # what GET /images/{id} shows
    index.add(10, {"tags": "tabby"})  # re-tagged: the old broader words go, new ones come
    assert 10 not in dict(index.search("plant")) and _top(index, "cat") == 10
    index.remove([10])
    assert 10 not in dict(index.search("cat"))


def test_bad_input(index: TextIndex) -> None:
    for query in ("", "   ", "?!... ---"):
        with pytest.raises(ValueError, match="no words"):
            index.search(query)
    with pytest.raises(ValueError, match="unknown text fields"):
        index.add(9, {"ocr": "x"})
    long = "word " * 2000  # 10,000 characters of one repeated word: one query word
    assert index.search(long) == []
    assert words("It's 3 o'clock: 12:30!") == ["it", "s", "o", "clock", "12", "30"]


def test_embedded_index_comes_back_from_lmdb(tmp_path: Path) -> None:
    idx = EmbeddedTextIndex(tmp_path)
    for image_id, fields in TEXTS.items():
        idx.add(image_id, fields)
    idx.remove([5])
    idx.close()
    again = EmbeddedTextIndex(tmp_path)
    assert _top(again, "recieve") == 1 and again.search("beach") == [] and again.count == 4


def test_postgres_down_at_start_and_mid_run(tmp_path: Path) -> None:
    down = PostgresTextIndex(f"host={tmp_path} dbname=postgres user=postgres")
    for call in (lambda: down.search("receive"), lambda: down.add(1, TEXTS[1])):
        with pytest.raises(TextUnavailable, match="unreachable"):
            call()
    folder = Path(tempfile.mkdtemp(prefix="pg-down-"))
    os.chmod(folder, 0o755)
    with pg_server(folder / "pg") as dsn:
        idx = PostgresTextIndex(dsn)
        idx.add(1, TEXTS[1])
        stop(folder / "pg")
        with pytest.raises(TextUnavailable):
            idx.search("receive")
        with pytest.raises(TextUnavailable):
            idx.add(2, TEXTS[2])
        start(folder / "pg")
        assert _top(idx, "receive") == 1  # reconnected; the acknowledged add is there
        idx.close()


def test_documents_merge_and_validate() -> None:
    imagenet = {"tags": [{"label": "suspension bridge", "score": 0.6}]}
    places = {"tags": [{"label": "bridge", "score": 0.9}, {"label": "outdoor", "score": 1.0}]}
    merged = merge_docs([imagenet, {"text": "EXIT", "words": []}, places, {"tags": "a, b"}])
    assert labels(merged) == ["suspension bridge", "bridge", "outdoor", "a", "b"]
    assert merged["text"] == "EXIT" and doc_text(merged).startswith("EXIT")
    assert merge_docs([]) == {}
    for bad in ([], {"text": 3}, {"tags": [{"score": 1}]}, {"words": "x"}):
        with pytest.raises(ValueError):
            checked_doc(bad)
    assert checked_doc({"text": "", "caption": "a cat"}) == {"caption": "a cat"}
    assert checked_doc({"text": "EX\x00IT"}) == {"text": "EXIT"}  # jsonb refuses NUL
    assert words("ok " + "x" * 65) == ["ok"]  # OCR noise, not a word


def test_the_text_index_kind(tmp_path: Path, pg_dsn: str) -> None:
    """What the index actor hosts: encoded documents in, text or document queries, by id."""
    for idx in (
        TextFeatureIndex(tmp_path / "ocr"),
        TextFeatureIndex(tmp_path / "ocr", dsn=pg_dsn, table="kind_test"),
    ):
        docs = [encode_doc(TEXTS[i]) for i in (1, 2, 5)]
        assert idx.add([1, 2, 5], np.array(docs, dtype=object)) == 3
        assert idx.has([1, 2, 3]) == [1, 2] and idx.count == 3
        assert idx.docs([2, 9]) == {2: TEXTS[2]}
        assert idx.search("recieve", k=2)[0][0] == 1
        assert idx.search(encode_doc({"caption": "outdoor bridge"}))[0] == (2, 0.0)
        assert [i for i, _ in idx.search("outdoor", threshold=0.0)] == [2, 5]
        assert [i for i, _ in idx.search_by_id(2, k=5)] == [5]  # "outdoor" in common
        with pytest.raises(UnknownImage):
            idx.search_by_id(3)
        assert idx.remove([5, 7]) == [5] and idx.search("beach") == []
        idx.close()
