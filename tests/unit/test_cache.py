"""plmkit.cache: hits and misses, keys follow the config, corrupt entries rebuilt, atomic builds, no pickle."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from plmkit.cache import MANIFEST, cache_key, cache_root, cached, verify
from plmkit.errors import ConfigError


def _builder(calls: list, value: float = 1.0):
    def build(tmp):
        calls.append(tmp)
        save_file({"w": torch.full((4,), value)}, str(tmp / "model.safetensors"))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "config.json").write_text(json.dumps({"v": value}))
    return build


def test_miss_then_hit_with_the_same_files(tmp_path):
    calls: list = []
    a = cached("toy", {"steps": 3}, {"model": "m"}, _builder(calls), root=tmp_path)
    b = cached("toy", {"steps": 3}, {"model": "m"}, _builder(calls), root=tmp_path)
    assert (a.hit, b.hit, len(calls)) == (False, True, 1)
    assert a.path == b.path == tmp_path / "toy" / a.key and a.key == b.key
    assert load_file(str(b.path / "model.safetensors"))["w"].tolist() == [1.0] * 4
    info = b.info()
    assert info["hit"] is True and info["key"] == a.key and info["producer"] == "toy"
    manifest = json.loads((b.path / MANIFEST).read_text())
    assert set(manifest["files"]) == {"model.safetensors", "sub/config.json"} and manifest["config"] == {"steps": 3}


def test_key_changes_with_config_inputs_and_producer():
    k = cache_key("toy", {"steps": 3}, {"model": "m"})
    assert k == cache_key("toy", {"steps": 3}, {"model": "m"})
    assert len({k, cache_key("toy", {"steps": 4}, {"model": "m"}), cache_key("toy", {"steps": 3}, {"model": "n"}),
                cache_key("other", {"steps": 3}, {"model": "m"})}) == 4


def test_key_of_a_dataclass_config_follows_its_fields():
    from dataclasses import dataclass

    @dataclass
    class C:
        steps: int = 3

    assert cache_key("toy", C()) == cache_key("toy", {"steps": 3}) != cache_key("toy", C(4))


@pytest.mark.parametrize("fault", ["flip", "truncate", "delete", "extra", "manifest"])
def test_corrupt_entry_is_detected_and_rebuilt(tmp_path, fault):
    calls: list = []
    e = cached("toy", {}, {}, _builder(calls), root=tmp_path)
    f = e.path / "model.safetensors"
    if fault == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))
    elif fault == "truncate":
        f.write_bytes(f.read_bytes()[:-3])
    elif fault == "delete":
        f.unlink()
    elif fault == "extra":
        (e.path / "stray.txt").write_text("x")
    else:
        (e.path / MANIFEST).write_text("{not json")
    assert not verify(e.path)
    again = cached("toy", {}, {}, _builder(calls), root=tmp_path)
    assert again.hit is False and again.info()["rebuilt_corrupt_entry"] and len(calls) == 2
    assert verify(again.path) and load_file(str(again.path / "model.safetensors"))["w"].tolist() == [1.0] * 4


def test_a_failed_build_leaves_no_entry(tmp_path):
    def build(tmp):
        save_file({"w": torch.ones(2)}, str(tmp / "model.safetensors"))
        raise RuntimeError("crash mid-build")

    with pytest.raises(RuntimeError):
        cached("toy", {}, {}, build, root=tmp_path)
    assert not (tmp_path / "toy" / cache_key("toy", {}, {})).exists()
    assert not [p for p in (tmp_path / "toy").iterdir() if not p.name.endswith(".lock")]
    assert cached("toy", {}, {}, _builder([]), root=tmp_path).hit is False


def test_a_killed_build_leaves_no_entry(tmp_path):
    """kill -9 in the middle of writing: the next call sees no entry and builds it."""
    code = f"""
import os, torch
from safetensors.torch import save_file
from plmkit.cache import cached
def build(tmp):
    save_file({{"w": torch.ones(2)}}, str(tmp / "model.safetensors"))
    os.kill(os.getpid(), 9)
cached("toy", {{}}, {{}}, build, root={str(tmp_path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -9
    key = cache_key("toy", {}, {})
    assert not (tmp_path / "toy" / key).exists()
    e = cached("toy", {}, {}, _builder([]), root=tmp_path)
    assert e.hit is False and verify(e.path)


def test_pickle_files_are_refused(tmp_path):
    def build(tmp):
        torch.save({"w": torch.ones(2)}, tmp / "pytorch_model.bin")

    with pytest.raises(ConfigError, match="safetensors"):
        cached("toy", {}, {}, build, root=tmp_path)
    assert not (tmp_path / "toy" / cache_key("toy", {}, {})).exists()


def test_cache_off_rebuilds_and_root_follows_env(tmp_path, monkeypatch):
    calls: list = []
    cached("toy", {}, {}, _builder(calls), root=tmp_path)
    monkeypatch.setenv("PLMKIT_CACHE", "off")
    assert cached("toy", {}, {}, _builder(calls), root=tmp_path).hit is False and len(calls) == 2
    monkeypatch.setenv("PLMKIT_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("PLMKIT_CACHE_DIR")
    monkeypatch.setenv("PLMKIT_HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / "cache"
    assert os.environ["PLMKIT_CACHE"] == "off"


def test_step_store_resumes_finished_steps_and_reruns_stale_ones(tmp_path):
    from plmkit.cache import StepStore

    calls = []

    def step(v):
        calls.append(v)
        return {"v": v, "pair": (v, v + 1), "t": torch.tensor([0.5, 1.5])}

    first = StepStore(tmp_path, "run", {"settings": {"n": 1}})
    fresh = first.run("a", lambda: step(1), inputs={"model": "m1"})
    assert fresh == {"v": 1, "pair": [1, 2], "t": [0.5, 1.5]} and first.resumed == []  # as JSON, like a resumed one
    again = StepStore(tmp_path, "run", {"settings": {"n": 1}})
    assert again.run("a", lambda: step(2), inputs={"model": "m1"}) == fresh and again.resumed == ["a"]
    assert calls == [1] and again.resumed_seconds >= 0
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["seconds"] >= 0 and "cpu" in record
    # other inputs, other settings, or a damaged file: the step runs again and replaces the record
    assert again.run("a", lambda: step(3), inputs={"model": "m2"})["v"] == 3
    other = {"settings": {"n": 2}}
    assert StepStore(tmp_path, "run", other).run("a", lambda: step(4), inputs={"model": "m2"})["v"] == 4
    (tmp_path / "a.json").write_text('{"key": ')
    assert StepStore(tmp_path, "run", other).run("a", lambda: step(5), inputs={"model": "m2"})["v"] == 5
    assert calls == [1, 3, 4, 5]
    no_resume = StepStore(tmp_path, "run", other, resume=False)  # runs again, rewrites the record
    assert no_resume.run("a", lambda: step(6), inputs={"model": "m2"})["v"] == 6 and no_resume.resumed == []
    assert StepStore(tmp_path, "run", {"settings": {"n": 2}}).get("a", {"model": "m2"})["result"]["v"] == 6
    with pytest.raises(ConfigError, match="step name"):
        first.run("../x", lambda: step(6))


def test_step_partial_dir_is_kept_for_the_same_step_and_fresh_otherwise(tmp_path):
    from plmkit.cache import StepStore

    store = StepStore(tmp_path, "run", {"settings": {"n": 1}})
    work = store.partial_dir("train", {"model": "m1"})
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "state").write_text("step 50")
    again = StepStore(tmp_path, "run", {"settings": {"n": 1}}).partial_dir("train", {"model": "m1"})
    assert again == work and (again / "checkpoints" / "state").read_text() == "step 50"  # a stopped step continues
    others = {store.partial_dir("train", {"model": "m2"}), store.partial_dir("other", {"model": "m1"}),
              StepStore(tmp_path, "run", {"settings": {"n": 2}}).partial_dir("train", {"model": "m1"})}
    assert work not in others and len(others) == 3 and not any(p.exists() for p in others)
    no_resume = StepStore(tmp_path, "run", {"settings": {"n": 1}}, resume=False).partial_dir("train", {"model": "m1"})
    assert no_resume == work and not work.exists()  # --no-resume starts the step afresh
