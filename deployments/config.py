"""Typed application settings: what ``configs/serve.yaml`` passes to ``build_app`` (Ray-free)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extractors import REGISTRY, WeightsUnavailable, build_extractor
from index_actors.client import IndexSpec
from index_actors.kinds import kind_of
from index_actors.placement import LABEL, Placement
from index_actors.text_pg import TABLE_PREFIX

#: API feature name -> the seed's service name in its routes.
SEED_NAMES = {
    "phash": "phash",
    "color": "color",
    "local": "local_features",
    "global": "global_features",
    "clip": "image_text_features",
}


class FeatureConfig(BaseModel):
    """One feature: whether it runs, its extractor and index options, its fusion weight."""

    # A misspelt setting is an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    #: Compute query features in the ingress instead of calling the deployment; default:
    #: yes for light extractors (no weights, a few ms of CPU).
    query_in_ingress: bool | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    index: dict[str, Any] = Field(default_factory=dict)
    weight: float = 1.0
    #: Index actors this feature's images are spread over; unset: the app's ``shards``.
    shards: int | None = Field(default=None, ge=1, le=1024)
    #: The Serve deployment that computes it; unset: ``extract_<feature>``, one of its own.
    #: Features that name the same one share its replicas (one process for the light
    #: ones; tags riding on the global network: one model, one pass).
    deployment: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


class FusionConfig(BaseModel):
    """Reciprocal-rank fusion and the near-duplicate rule."""

    # A misspelt setting is an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid")

    rank_constant: float = 60.0
    #: phash Hamming distance (of 576 bits) at or under which an image is a near-duplicate.
    duplicate_threshold: int = 64
    #: Results each source contributes before fusion.
    candidates: int = 100
    default_k: int = 20
    max_k: int = 1000


class AppArgs(BaseModel):
    """Everything the application is built from."""

    # A misspelt setting is an error, not a silently ignored line.
    model_config = ConfigDict(extra="forbid")

    #: Prefix of the Ray actor names, so that two apps (or tests) never share an index.
    name: str = "imgsearch"
    #: Where LMDB stores and index snapshots live; relative paths are under the project root.
    data_dir: str = "data"
    max_upload_mb: float = 50.0
    max_pixels: int = 100_000_000
    snapshot_interval_s: float = 30.0
    #: CPU reserved by each index actor; they mostly wait, so none by default.
    index_actor_cpus: float = 0.0
    #: Index actors each feature's images are spread over (one: a single actor per feature,
    #: the layout from before shards); a feature's own ``shards`` overrides it.
    shards: int = Field(default=1, ge=1, le=1024)
    #: How long a search waits for one of several shards before answering without it (the
    #: answer then names it under ``partial``).
    shard_timeout_s: float = Field(default=10.0, gt=0)
    #: How long an add or delete waits for a shard before answering 503 "retry" (its node
    #: is down); the write still happens when the shard returns, and a new image's is undone.
    write_timeout_s: float = Field(default=30.0, gt=0)
    #: The node label that marks the data nodes of a cluster (``ray start --labels
    #: imgsearch-data=<node name>``): shards spread over them and stay on their node. Without
    #: such nodes, everything stays on the head (``index_actors/placement.py``).
    data_label: str = LABEL
    #: The data directory is one filesystem mounted on every node (NFS, say): shards may
    #: run, and restart, on any node.
    shared_data_dir: bool = False
    #: Origins (``https://gallery.example.org``) whose pages may call the API from a
    #: browser (CORS), as the original gallery does from its own origin; ``["*"]``: any.
    #: Empty: same origin only.
    cors_origins: list[str] = Field(default_factory=list)
    #: A file of API keys, one a line: ``read:KEY`` or ``write:KEY``, ``#`` comments; re-read
    #: when it changes. The environment variable ``IMGSEARCH_API_KEYS_FILE`` overrides it;
    #: relative paths are under the project root. Unset: no keys, the API is open, which the
    #: app allows on a loopback ``http_options.host`` only (``deployments/auth.py``).
    api_keys_file: str | None = None
    #: Start without keys on a host that is not loopback: only when something in front of
    #: the app (a reverse proxy, a firewall) checks who reaches it.
    allow_unauthenticated: bool = False
    #: PostgreSQL connection string (libpq) for the text features' indexes (ocr, caption,
    #: tags), each in tables of its own (``<name>_<feature>_*``); unset: the embedded store
    #: under data_dir. Keep a password out of it (~/.pgpass, or PGPASSWORD): it travels
    #: to the index actors as an argument.
    text_dsn: str | None = None
    features: dict[str, FeatureConfig] = Field(
        default_factory=lambda: {"phash": FeatureConfig(), "color": FeatureConfig()}
    )
    fusion: FusionConfig = Field(default_factory=FusionConfig)

    @field_validator("features")
    @classmethod
    def _known_features(cls, value: dict[str, FeatureConfig]) -> dict[str, FeatureConfig]:
        unknown = set(value) - set(REGISTRY)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(REGISTRY)}")
        return value

    @model_validator(mode="after")
    def _table_names(self) -> AppArgs:
        if self.text_dsn and self.text_features:
            for name in self.text_features:
                table = self.text_table(name)
                if not TABLE_PREFIX.fullmatch(table):
                    raise ValueError(
                        f"text table prefix {table!r} (from the app name): it must start "
                        "with a letter or _ and be at most 51 characters"
                    )
        return self

    @property
    def placement(self) -> Placement:
        """Where the index actors run (``index_actors/placement.py``)."""
        return Placement(self.data_label, self.shared_data_dir)

    def text_table(self, feature: str) -> str:
        """Prefix of a text feature's PostgreSQL tables: this app's name, then the feature."""
        return re.sub(r"[^a-z0-9_]", "_", f"{self.name}_{feature}".lower())

    @property
    def enabled(self) -> list[str]:
        """Names of the enabled features, in config order."""
        return [name for name, cfg in self.features.items() if cfg.enabled]

    @property
    def text_features(self) -> list[str]:
        """Enabled features whose output is text (tags, caption, ocr)."""
        return [n for n in self.enabled if kind_of(n).reads_text]

    def data_path(self) -> Path:
        """Absolute data directory (relative paths resolve against the project root)."""
        path = Path(self.data_dir).expanduser()
        return path if path.is_absolute() else Path(__file__).resolve().parent.parent / path

    def deployment_of(self, name: str) -> str:
        """The name of the extractor deployment that computes a feature."""
        return self.features[name].deployment or f"extract_{name}"

    @property
    def deployments(self) -> dict[str, list[str]]:
        """Each extractor deployment and the enabled features it computes, in config order."""
        out: dict[str, list[str]] = {}
        for name in self.enabled:
            out.setdefault(self.deployment_of(name), []).append(name)
        return out

    def query_in_ingress(self, name: str) -> bool:
        """Whether the ingress computes this feature's query features itself."""
        choice = self.features[name].query_in_ingress
        return REGISTRY[name].light if choice is None else choice

    def index_options(self, name: str) -> dict[str, Any]:
        """Options of a feature's index as its kind completes them from the app's settings:
        a vector index takes its extractor's metric, a text index the PostgreSQL DSN and
        tables of its own per app and feature (two apps may share a database)."""
        options = self.features[name].index
        table = self.text_table(name)
        return kind_of(name).index_options(REGISTRY[name].metric, options, self.text_dsn, table)

    def index_specs(self, features: list[str] | None = None) -> dict[str, IndexSpec]:
        """Each enabled feature's index (its kind, width and options) for the index client."""
        names = features or self.enabled
        dims = self.dims(names)
        return {
            name: IndexSpec(
                REGISTRY[name].kind, dims[name], self.index_options(name), self.shards_of(name)
            )
            for name in names
        }

    def shard_counts(self, features: list[str] | None = None) -> dict[str, int]:
        """Each enabled feature's shard count (or of ``features``)."""
        return {name: self.shards_of(name) for name in features or self.enabled}

    def shards_of(self, name: str) -> int:
        """How many index actors a feature's images are spread over. A text feature in
        PostgreSQL has one: the database is its store, shared by any number of shards."""
        if self.text_dsn and kind_of(name).reads_text:
            return 1
        own = self.features[name].shards
        return self.shards if own is None else own

    def extractor_options(self, name: str) -> dict[str, Any]:
        """Constructor options of a feature's extractor, with the app-wide pixel cap."""
        return {"max_pixels": self.max_pixels, **self.features[name].options}

    def dims(self, features: list[str] | None = None) -> dict[str, int | str]:
        """Each enabled feature's width (or of ``features``), or why it cannot be known (an
        unknown model name).

        Model extractors read it from the model's configuration, without weights: an index
        can be opened for a model whose weights arrive later.
        """
        out: dict[str, int | str] = {}
        for name in features or self.enabled:
            try:
                out[name] = build_extractor(name, self.extractor_options(name)).dim
            except WeightsUnavailable as exc:
                out[name] = str(exc)
        return out


def load_app_args(config: str | Path, app: str) -> AppArgs:
    """The validated ``args`` of the application named ``app`` in a Serve config file."""
    with open(config) as f:
        cfg = yaml.safe_load(f) or {}
    apps = cfg.get("applications") or []
    for entry in apps:
        if entry.get("name") == app:
            return AppArgs.model_validate(entry.get("args") or {})
    found = ", ".join(str(e.get("name")) for e in apps) or "none"
    raise ValueError(f"no application named {app!r} in {config} (found: {found})")
