"""Build ``extractors/hypernyms.json``: the broader words (WordNet hypernyms) of each
ImageNet class and of each Places365 category WordNet knows, which text search matches
below a direct tag ("flower" and "plant" find a photo tagged "daisy").

    python scripts/build_hypernyms.py [--wordnet DIR] [--places DIR] [--out FILE]

Run once, when the table should change; the app only reads the shipped file. It needs
WordNet 3.0 from Debian's ``wordnet-base`` package (``apt-get install wordnet-base``: the
files in /usr/share/wordnet; Princeton's licence allows use and redistribution with its
notice) and the Places365 label file ``categories_places365.txt`` (in ``~/.cache/places365``
after ``python scripts/fetch_models.py places``); ImageNet's classes come from timm.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from extractors.places import _readable
from extractors.tags import imagenet_labels
from extractors.textdoc import HYPERNYMS

WORDNET = Path("/usr/share/wordnet")
PLACES = Path.home() / ".cache" / "places365"

#: Synsets (data.noun offsets) left out of every chain: WordNet's top levels and the
#: abstractions just below them. Each is above a large part of the table ("object" above
#: 958 of the 1000 ImageNet classes, "artifact" above 522 and most places), so a query for
#: one would find nearly everything, and their words mostly mean something else in a query
#: ("object", "whole", "thing", "matter", "part", "point", "agent"). Below them the words
#: are what a photo shows: "animal", "plant", "bird", "vehicle", "building", "room".
TOO_ABSTRACT = {
    "00001740",  # entity
    "00001930",  # physical entity
    "00002137",  # abstraction
    "00002452",  # thing
    "00002684",  # object, physical object
    "00003553",  # whole, unit
    "00004258",  # living thing, animate thing
    "00004475",  # organism, being
    "00007347",  # causal agent
    "14778436",  # agent (a drug's, a detergent's)
    "00019128",  # natural object
    "00020827",  # matter
    "00020090",  # substance (matter)
    "00019613",  # substance (a part)
    "15046900",  # solid (food's, beside nutrient)
    "00021939",  # artifact
    "03575240",  # instrumentality
    "00027167",  # location
    "08620061",  # point
    "13809207",  # part, portion
    "00031921",  # relation
    "00023100",  # psychological feature
    "00024264",  # attribute
    "00027807",  # shape
    "00033020",  # communication
    "00031264",  # group
}
#: A Places365 category names a place, so its sense is a physical thing (an object, or a
#: body of water under "thing"), neither a living one nor a part of a body: this skips
#: senses such as "arch" the curve and the foot's, "church" the institution, "stage" the
#: period, "diner" the eater.
PLACE_ROOTS = {"00002684", "00002452"}
LIVING = "00004258"
BODY = "08"  # the lexicographer file noun.body
#: Categories whose sense those rules miss (read off the built table): the sense meant.
#: WordNet has no useful one for "wave" (a movement) and "sky" (a gas): they get none.
PLACE_SENSES = {
    "bus_interior": "02924116",  # inside a bus: a bus, not "inside"
    "canal": "02947212",  # the waterway, not a feature of Mars
    "car_interior": "02958343",
    "coast": "09428293",  # the seashore, not a sledging slope
    "galley": "03412220",  # a ship's kitchen, not the vessel
    "harbor": "08639058",  # the port, not a refuge
    "jacuzzi": "03543603",  # a hot tub (WordNet lacks the brand)
    "mountain_snowy": "09359803",  # a mountain
    "office_cubicles": "02873839",  # booths, cubicles
    "rainforest": "09284015",  # forest land, not vegetation (a group)
    "reception": "04061793",  # the reception room, not a broadcast's quality
    "runway": "04120842",  # the airstrip, not a log chute
    "sandbox": "04134339",  # the plaything, not a foundry's mould
    "train_interior": "04468005",
    "underwater": "09376198",  # under the ocean
}


class WordNet:
    """WordNet's nouns from its files: each synset's words and hypernyms (data.noun), and
    each lemma's senses, most frequent first (index.noun)."""

    def __init__(self, folder: Path) -> None:
        self.words: dict[str, list[str]] = {}
        self.lexfile: dict[str, str] = {}
        self.parents: dict[str, list[str]] = {}
        # data.noun: offset lex_filenum ss_type w_cnt (hex) [word lex_id]... p_cnt
        # [symbol offset pos source/target]... | gloss; licence lines start with spaces.
        for line in (folder / "data.noun").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            fields = line.split(" | ")[0].split()
            offset, n = fields[0], int(fields[3], 16)
            self.words[offset] = [w.replace("_", " ") for w in fields[4 : 4 + 2 * n : 2]]
            self.lexfile[offset] = fields[1]
            at = 4 + 2 * n
            pointers = [fields[at + 1 + 4 * j : at + 5 + 4 * j] for j in range(int(fields[at]))]
            # "@" hypernym, "@i" the class of an instance ("Eiffel Tower" -> tower).
            self.parents[offset] = [o for s, o, pos, _ in pointers if s in ("@", "@i")]
        # index.noun: lemma pos synset_cnt p_cnt [symbol]... sense_cnt tagsense_cnt
        # [offset]... (the last synset_cnt fields).
        self.senses: dict[str, list[str]] = {}
        for line in (folder / "index.noun").read_text(encoding="latin-1").splitlines():
            if not line.startswith(" "):
                fields = line.split()
                self.senses[fields[0]] = fields[len(fields) - int(fields[2]) :]

    def ancestors(self, offset: str) -> list[str]:
        """Every hypernym of a synset, nearest first (breadth first over all parents)."""
        seen, out, level = {offset}, [], [offset]
        while level:
            level = list(dict.fromkeys(p for o in level for p in self.parents[o] if p not in seen))
            seen.update(level)
            out += level
        return out

    def broader(self, offset: str) -> list[str]:
        """A synset's hypernyms as words, nearest first, the abstract ones left out: each
        synset's first word only, its most familiar (WordNet lists them so); the others are
        often rare or another sense's ("machine" for a car, "toy" for a toy dog)."""
        heads = (self.words[o][0] for o in self.ancestors(offset) if o not in TOO_ABSTRACT)
        return list(dict.fromkeys(heads))

    def place(self, lemma: str) -> str | None:
        """The sense of ``lemma`` that can be a place (``PLACE_ROOTS``), if any: the first
        whose usual name it is (its synset's first word), else the first. Senses without
        tagged frequencies are in no useful order: "mansion" the zodiac sign comes before
        the house, whose first word is "mansion"."""
        places = [
            o
            for o in self.senses.get(lemma, [])
            if self.lexfile[o] != BODY
            and (above := set(self.ancestors(o))) & PLACE_ROOTS
            and LIVING not in above
        ]
        named = [o for o in places if self.words[o][0] == lemma.replace("_", " ")]
        return (named or places)[0] if places else None


def imagenet_table(wordnet: WordNet) -> dict[str, list[str]]:
    """Each ImageNet class's label (lower case) -> its broader words. Its synset is the
    class's WordNet id ("n11939491" is data.noun's offset 11939491). Two classes share a
    label ("crane" the bird and the machine): a tag cannot tell them apart, so it gets both."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    table: dict[str, list[str]] = {}
    for i, label in enumerate(imagenet_labels()):
        offset = info.index_to_label_name(i).removeprefix("n")
        key = label.lower()
        table[key] = _union(table.get(key, []), wordnet.broader(offset))
    return table


def places_table(wordnet: WordNet, categories: Iterable[str]) -> dict[str, list[str]]:
    """Each Places365 category's label as the tagger gives it ("apartment_building/outdoor")
    -> its sense's usual name when that is another word ("bedchamber" -> "bedroom"), then
    its broader words; for the categories WordNet has. The qualifier after "/" (indoor,
    outdoor, the kind of arena) is left out of the lookup; a compound WordNet lacks is
    looked up by its head, its last words ("forest_path" -> "path": a forest path is a
    path); ``PLACE_SENSES`` settles the rest."""
    table: dict[str, list[str]] = {}
    for category in categories:
        label = _readable(category)
        base = label.split("/")[0]
        parts = base.split("_")
        heads = (wordnet.place("_".join(parts[i:])) for i in range(len(parts)))
        offset = PLACE_SENSES[base] if base in PLACE_SENSES else next(filter(None, heads), None)
        if offset is not None:
            broader = _union([wordnet.words[offset][0]], wordnet.broader(offset))
            table[label.lower()] = [w for w in broader if w != base.replace("_", " ")]
    return table


def _union(first: list[str], second: list[str]) -> list[str]:
    return list(dict.fromkeys(first + second))


def build(wordnet_dir: Path, places_file: Path | None) -> dict[str, dict[str, list[str]]]:
    """The table: ``imagenet`` and ``places`` sections (``places`` only with its file)."""
    wordnet = WordNet(wordnet_dir)
    table = {"imagenet": imagenet_table(wordnet)}
    if places_file is not None:
        lines = places_file.read_text().splitlines()
        table["places"] = places_table(wordnet, (line.split()[0] for line in lines if line))
    return table


def dump(table: dict[str, dict[str, list[str]]]) -> str:
    """The table as JSON, one label a line (readable diffs when it is rebuilt)."""
    sections = []
    for name, rows in sorted(table.items()):
        lines = (f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(rows.items()))
        sections.append(f"{json.dumps(name)}: {{\n" + ",\n".join(lines) + "\n}")
    return "{\n" + ",\n".join(sections) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    """Write the table; exit status 1 when WordNet or the Places365 labels are missing."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--wordnet", type=Path, default=WORDNET, help="WordNet 3.0's dict folder")
    p.add_argument("--places", type=Path, default=PLACES, help="the Places365 files' folder")
    p.add_argument("--out", type=Path, default=HYPERNYMS, help="the table to write")
    ns = p.parse_args(argv)
    places = ns.places / "categories_places365.txt"
    for needed in (ns.wordnet / "data.noun", places):
        if not needed.is_file():
            print(f"{needed} is missing (see --help)", file=sys.stderr)
            return 1
    table = build(ns.wordnet, places)
    ns.out.write_text(dump(table))
    counts = ", ".join(f"{len(rows)} {name} labels" for name, rows in table.items())
    print(f"{ns.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
