"""Several models in one server: the model store and the pipelines resident in memory.

The model store is a folder (DRIFTSEG_MODEL_STORE; default <state dir>/models) of checkpoints named by
their sha256, `<sha256>.pt`, each with its provenance beside it, `<sha256>.json` (where it came from:
its parent, the job or the person that added it, when). Content addressing makes a model's name its
identity: a stream bound to a sha256 gets those exact weights on every replica that reaches the folder
(at scale, a volume all replicas mount). Files are written atomically and never changed.

`Models` holds the base model (DRIFTSEG_CHECKPOINT, which every stream starts on) and, loaded on first
use, at most DRIFTSEG_MAX_MODELS others, the least recently used dropped first. A stream on the base
model costs nothing of this. A model may serve beside the base only if its network reads and writes the
same things (architecture, classes, input size), so that a stream's state and labels mean the same on
either."""
import argparse
import json
import logging
import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path

from driftseg.models.checkpoint import file_sha256, load_checkpoint, read_checkpoint_file, write_atomically
from driftseg.service.errors import Conflict, NotFound, Unprocessable

log = logging.getLogger("driftseg.service")

SHA256_HEX = 64


class ModelStore:
    def __init__(self, directory: Path):
        self.directory = Path(directory).expanduser()

    def path(self, sha: str) -> Path:
        return self.directory / f"{sha}.pt"

    def add(self, checkpoint: Path, provenance: dict | None = None) -> str:
        """Copy a checkpoint into the store (once: a model already there keeps its first provenance); its
        sha256. ValueError saying what is wrong with a file that is not a driftseg checkpoint."""
        load_checkpoint(checkpoint)  # the whole file checked before it can be served
        sha = file_sha256(checkpoint)
        if not self.path(sha).is_file():
            record = {"sha256": sha, "added": time.time(), "source": str(Path(checkpoint).resolve()), **(provenance or {})}
            with open(checkpoint, "rb") as src:
                write_atomically(self.path(sha), lambda f: shutil.copyfileobj(src, f))
            write_atomically(self.directory / f"{sha}.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
        return sha

    def provenance(self, sha: str) -> dict:
        try:
            return json.loads((self.directory / f"{sha}.json").read_text())
        except (OSError, ValueError):
            return {"sha256": sha}

    def list(self) -> list[dict]:
        """The provenance of every model in the store, the most recently added first."""
        if not self.directory.is_dir():
            return []
        found = [self.provenance(p.stem) for p in self.directory.glob("*.pt") if len(p.stem) == SHA256_HEX]
        return sorted(found, key=lambda r: r.get("added", 0), reverse=True)

    def find(self, sha: str) -> Path:
        """The stored checkpoint of `sha`; NotFound (404) saying how to add it."""
        if len(sha) != SHA256_HEX or any(c not in "0123456789abcdef" for c in sha):
            raise Unprocessable(f"model {sha[:80]!r} is not a sha256 (64 lowercase hex digits)")
        path = self.path(sha)
        if not path.is_file():
            raise NotFound(f"model {sha[:16]}... is not in the model store {self.directory}: add it with "
                           "`driftseg models add CHECKPOINT` (GET /adaptation/models lists the store)")
        return path


def signature(checkpoint: Path) -> dict:
    """What a model must share with the base to serve beside it: architecture, classes and input size."""
    payload = read_checkpoint_file(checkpoint, mmap=True)
    return {"arch": payload["arch"], "arch_kwargs": payload["arch_kwargs"], "class_names": list(payload["class_names"]),
            "input_size": list(payload["input_size"])}


class Models:
    """The base model's Served and the resident others, by sha256. `load(path)` builds a Served (the
    engine's pipeline factory, service/adaptation.py); it runs in the model thread."""

    def __init__(self, base, store: ModelStore, max_models: int, load, base_checkpoint: Path,
                 refusal: str | None = None):
        """`refusal`: why this server cannot serve other models (its engine), or None."""
        self.base, self.store, self.max_models, self._load, self.refusal = base, store, max_models, load, refusal
        self.base_checkpoint = Path(base_checkpoint)
        self._signature = signature(base_checkpoint)
        self._resident: OrderedDict[str, object] = OrderedDict()  # sha256 -> Served, least recently used first
        self._lock = threading.Lock()

    def check(self, sha: str) -> None:
        """NotFound or Unprocessable for a model not in the store, Conflict for one that cannot serve beside
        the base (another architecture, classes or input size)."""
        if sha == self.base.fingerprint:
            return
        if self.refusal:
            raise Conflict(self.refusal)
        theirs = signature(self.store.find(sha))
        differs = [k for k in self._signature if theirs[k] != self._signature[k]]
        if differs:
            raise Conflict(f"model {sha[:16]}... differs from the served model in {', '.join(differs)} "
                           f"({theirs['arch']}, {len(theirs['class_names'])} classes, input {theirs['input_size']}): "
                           "only models adapted from it serve beside it")

    def get(self, sha: str | None):
        """The Served of model `sha` (None or the base's sha256: the base), loaded on first use (blocking:
        call it from the model thread)."""
        if sha is None or sha == self.base.fingerprint:
            return self.base
        with self._lock:
            served = self._resident.get(sha)
            if served is not None:
                self._resident.move_to_end(sha)
                return served
        served = self._load(self.store.find(sha))
        with self._lock:
            self._resident[sha] = served
            while len(self._resident) > self.max_models:
                dropped, _ = self._resident.popitem(last=False)
                log.info("model %s... dropped from memory (DRIFTSEG_MAX_MODELS=%d)", dropped[:16], self.max_models)
        log.info("model %s... loaded", sha[:16])
        return served

    def path(self, sha: str) -> Path:
        """The checkpoint file of model `sha`: the base's, or the store's."""
        return self.base_checkpoint if sha == self.base.fingerprint else self.store.find(sha)

    def resident(self) -> list[str]:
        with self._lock:
            return [self.base.fingerprint, *self._resident]


def default_store() -> Path:
    """The model store `driftseg serve` uses without flags: DRIFTSEG_MODEL_STORE, else DRIFTSEG_STATE_DIR's
    (or the default state dir's) `models` folder."""
    from driftseg.service.settings import ENV_PREFIX, Settings  # pydantic-settings: the serve extra

    if os.environ.get(f"{ENV_PREFIX}MODEL_STORE"):
        return Path(os.environ[f"{ENV_PREFIX}MODEL_STORE"]).expanduser()
    state_dir = os.environ.get(f"{ENV_PREFIX}STATE_DIR") or Settings.model_fields["state_dir"].default
    return Path(state_dir).expanduser() / "models"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"driftseg models {prog}", description=description)
    parser.add_argument("--store", type=Path, help="the model store folder (default: DRIFTSEG_MODEL_STORE, else "
                        "DRIFTSEG_STATE_DIR/models, as `driftseg serve` finds it)")
    return parser


def add_main(argv=None) -> None:
    parser = _parser("add", "Add a checkpoint to the model store, named by its sha256, and print the sha256, "
                     "which PUT /adaptation/model binds a stream to.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--note", help="a line of provenance kept with it (where it came from, why)")
    args = parser.parse_args(argv)
    store = ModelStore(args.store or default_store())
    print(store.add(args.checkpoint, {"note": args.note} if args.note else None))


def list_main(argv=None) -> None:
    args = _parser("list", "The model store's models, the most recently added first: one JSON line each, "
                   "its provenance.").parse_args(argv)
    for record in ModelStore(args.store or default_store()).list():
        print(json.dumps(record))
