"""service/store.py: the SnapshotStore protocol that both stores implement, and the factory."""
import inspect

import pytest

from driftseg.service.redis_store import RedisStore
from driftseg.service.snapshots import FolderStore
from driftseg.service.store import SnapshotStore, open_store

CHECKPOINT = "c" * 64
METHODS = [name for name, value in vars(SnapshotStore).items() if callable(value) and not name.startswith("_")]


def test_the_protocol_names_no_disk():
    assert set(METHODS) == {"prepare", "ping", "write", "read", "delete", "scan", "where"}
    assert set(SnapshotStore.__annotations__) == {"shared", "healthy", "location"}
    assert not any("disk" in name or "dir" in name for name in [*METHODS, *SnapshotStore.__annotations__])


@pytest.mark.parametrize("store_class", [FolderStore, RedisStore])
def test_each_store_implements_the_protocol(store_class):
    for name in METHODS:
        assert inspect.signature(getattr(store_class, name)).parameters.keys() == \
            inspect.signature(getattr(SnapshotStore, name)).parameters.keys(), name


def test_open_store_picks_the_store_the_settings_name(make_settings, tmp_path):
    folder = open_store(make_settings(), CHECKPOINT, "source")
    assert isinstance(folder, FolderStore) and isinstance(folder, SnapshotStore)
    assert folder.location == str(tmp_path / "state") and not folder.shared
    other = open_store(make_settings(state_store=f"file://{tmp_path}/other"), CHECKPOINT, "source")
    assert isinstance(other, FolderStore) and other.location == str(tmp_path / "other")
    # redis-py connects on the first command, so this needs no server
    shared = open_store(make_settings(state_store="redis://:secret@127.0.0.1:6390/2"), CHECKPOINT, "source")
    assert isinstance(shared, RedisStore) and isinstance(shared, SnapshotStore) and shared.shared
    assert shared.location == "redis://127.0.0.1:6390/2" and "secret" not in shared.where("cam")
