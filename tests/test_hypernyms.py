"""The shipped table of tags' broader words (issue 16): what it covers, and that it is what
scripts/build_hypernyms.py builds (where Debian's wordnet-base is installed)."""

import json

import pytest

from extractors.tags import imagenet_labels
from extractors.textdoc import HYPERNYMS, broader_words, hypernyms
from scripts.build_hypernyms import PLACES, WORDNET, build


def test_the_table_covers_imagenet_with_concrete_words() -> None:
    table = hypernyms()
    labels = imagenet_labels()
    assert sum(bool(table.get(label.lower())) for label in labels) >= 0.95 * len(labels)
    assert table["daisy"] == ["flower", "angiosperm", "spermatophyte", "vascular plant", "plant"]
    assert {"dog", "animal"} <= set(table["german shepherd"])
    assert table["apartment_building/outdoor"] == ["building", "structure"]  # Places365
    assert table["forest_path"][0] == "path"  # a compound by its head
    every = {w for broader in table.values() for w in broader}
    too_abstract = {"entity", "physical entity", "object", "whole", "organism", "artifact"}
    assert not every & too_abstract
    # Its words, less the document's own and the joining ones ("body of water").
    assert broader_words({"tags": [{"label": "Daisy", "score": 0.5}]}) == [
        "flower",
        "angiosperm",
        "spermatophyte",
        "vascular",
        "plant",
    ]
    assert broader_words({"tags": "ocean"}) == ["body", "water"]  # not "of"
    assert broader_words({"tags": "daisy"}, own=["flower"])[0] == "angiosperm"


@pytest.mark.skipif(not (WORDNET / "data.noun").is_file(), reason="no wordnet-base")
def test_the_shipped_table_is_what_the_script_builds() -> None:
    categories = PLACES / "categories_places365.txt"  # the Places365 part where it is here
    built = build(WORDNET, categories if categories.is_file() else None)
    shipped = json.loads(HYPERNYMS.read_text())
    assert {k: shipped[k] for k in built} == built
