"""JsonFileStore (/v1, /v2) beyond the contract suite: its file's layout, its faults, its group commit."""

from __future__ import annotations

from pathlib import Path

import pytest

from uniquerand.numbers import NumberSpace
from uniquerand.storage.contract import SpaceExhaustedError, StoreCorruptError, StoreSettings, StoreUnavailableError
from uniquerand.storage.json_file import JsonFileStore


def make_store(backend: str, folder: Path, int_max: int = 4294967295, lock_timeout: float = 5.0) -> JsonFileStore:
    assert backend == "json"
    spaces = {"int": NumberSpace("int", 1, int_max), "float": NumberSpace("float", 0, 10**14 - 1, 6)}
    return JsonFileStore(StoreSettings(folder, spaces, "test", lock_timeout))


def codes(store, kind: str, count: int = 1) -> list[int]:
    return store.issue(kind, count).codes


@pytest.mark.parametrize(
    "content", [b'{"format": "uniquerand-json-v1", "int": [1, 2', b'{"int": "x"}', b'{"format": "other"}', b"[]"]
)
def test_json_file_store_refuses_a_file_of_another_layout_and_leaves_it(tmp_path, content):
    (tmp_path / "used_numbers.json").write_bytes(content)
    store = make_store("json", tmp_path)
    with pytest.raises(StoreCorruptError, match="left untouched"):
        store.issue("int")
    with pytest.raises(StoreCorruptError):
        store.stats()
    assert (tmp_path / "used_numbers.json").read_bytes() == content


def test_json_file_store_unreadable_path_is_unavailable(tmp_path):
    (tmp_path / "used_numbers.json").mkdir()
    with pytest.raises(StoreUnavailableError, match="Cannot read"):
        make_store("json", tmp_path).issue("int")


def test_json_file_store_sees_writes_of_another_store_object(tmp_path):
    first, second = make_store("json", tmp_path, int_max=20), make_store("json", tmp_path, int_max=20)
    first.issue("int", 10)
    second.issue("int", 10)
    with pytest.raises(SpaceExhaustedError):
        first.issue("int")


def test_json_file_store_hands_out_nothing_when_its_write_fails_unexpectedly(tmp_path, monkeypatch):
    # A fault injected into the write (not a store error): every request of the group fails, none comes back
    # with codes that were never written, and the store serves again once the fault is gone.
    store = make_store("json", tmp_path, int_max=100)

    def failing_write(data):
        raise MemoryError("injected")

    monkeypatch.setattr(store, "write", failing_write)
    with pytest.raises(StoreUnavailableError, match="nothing was issued"):
        store.issue("int", 3)
    assert not (tmp_path / "used_numbers.json").exists()
    monkeypatch.undo()
    assert len(set(codes(store, "int", 100))) == 100
