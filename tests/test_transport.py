"""Packs of a run's state: split, checked, joined, resumed -- exact or compact -- and refused
when missing, altered, foreign or not plain tensors."""

import hashlib
import io
import json
from dataclasses import replace

import pytest
import torch

from regvit_lib import train
from regvit_lib.cache import RunStore
from regvit_lib.transport import TransportError, pack_bytes, pack_run, read_manifest, unpack_run
from test_train_cache import RUN  # the small run of the training tests: 12 steps, checkpoints at 5 and 10


class Interrupt(Exception):
    pass


def _cut(root, at: int = 8) -> None:
    """Train RUN in ``root`` and stop it after step ``at`` (last checkpoint: step 5)."""
    def stop(done: int) -> None:
        if done == at:
            raise Interrupt
    with pytest.raises(Interrupt):
        train(RUN, root=root, progress=False, on_step=stop)


def _weights(r) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in r.model.state_dict().items()}


def test_exact_pack_resumes_bit_for_bit_on_another_cache(tmp_path) -> None:
    whole = train(RUN, root=tmp_path / "whole", progress=False)
    _cut(tmp_path / "here")
    manifest = pack_run(RUN, tmp_path / "out", tmp_path / "here", part_bytes=20_000)
    meta = read_manifest(manifest)
    assert meta["kind"] == "checkpoint" and meta["step"] == 5 and not meta["lossy"]
    assert len(meta["parts"]) >= 2 and all(p["bytes"] <= 20_000 for p in meta["parts"])
    assert pack_bytes(manifest) == manifest.stat().st_size + meta["bytes"]
    info = unpack_run(manifest, RUN, tmp_path / "there")
    assert info["written"]
    resumed = train(RUN, root=tmp_path / "there", progress=False)
    assert resumed.metrics["resumed_from"] == 5
    wa, wb = _weights(whole), _weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.curves == whole.curves
    history = json.loads((RunStore(RUN, tmp_path / "there").dir / "transport.json").read_text())
    assert history == [{"step": 5, "lossy": False, "sha256": meta["sha256"]}]


def test_compact_pack_is_smaller_lossy_and_still_finishes(tmp_path) -> None:
    whole = train(RUN, root=tmp_path / "whole", progress=False)
    _cut(tmp_path / "here")
    exact = read_manifest(pack_run(RUN, tmp_path / "exact", tmp_path / "here"))
    manifest = pack_run(RUN, tmp_path / "compact", tmp_path / "here", mode="compact")
    compact = read_manifest(manifest)
    assert compact["lossy"] and compact["bytes"] < exact["bytes"] / 2
    unpack_run(manifest, RUN, tmp_path / "there")
    ck = torch.load(RunStore(RUN, tmp_path / "there").checkpoint_path, weights_only=True)
    assert ck["opt"]["state"] == {} and all(v.dtype != torch.bfloat16 for v in ck["model"].values())
    resumed = train(RUN, root=tmp_path / "there", progress=False)
    assert resumed.metrics["resumed_from"] == 5 and resumed.curves[:2] == whole.curves[:2]
    assert not torch.equal(_weights(whole)["head.weight"], _weights(resumed)["head.weight"])  # not the same run
    history = json.loads((RunStore(RUN, tmp_path / "there").dir / "transport.json").read_text())
    assert history[0]["lossy"] is True


def test_finished_run_travels_and_loads_as_cached(tmp_path) -> None:
    whole = train(RUN, root=tmp_path / "here", progress=False)
    manifest = pack_run(RUN, tmp_path / "out", tmp_path / "here")
    assert read_manifest(manifest)["kind"] == "result"
    unpack_run(manifest, RUN, tmp_path / "there")
    loaded = train(RUN, root=tmp_path / "there", progress=False)
    assert loaded.cached and loaded.metrics == whole.metrics
    assert all(torch.equal(a, b) for a, b in zip(_weights(whole).values(), _weights(loaded).values()))
    with pytest.warns(UserWarning, match="already finished"):  # nothing there is overwritten
        assert unpack_run(manifest, RUN, tmp_path / "there")["written"] is False


def test_an_older_pack_never_replaces_a_later_checkpoint(tmp_path) -> None:
    _cut(tmp_path / "here", at=6)  # checkpoint at step 5
    manifest = pack_run(RUN, tmp_path / "out", tmp_path / "here")
    _cut(tmp_path / "there", at=11)  # checkpoint at step 10
    with pytest.warns(UserWarning, match="step 10"):
        assert unpack_run(manifest, RUN, tmp_path / "there")["written"] is False
    assert int(torch.load(RunStore(RUN, tmp_path / "there").checkpoint_path, weights_only=True)["step"]) == 10


def test_refusals_name_what_is_wrong(tmp_path) -> None:
    with pytest.raises(TransportError, match="neither a result nor a checkpoint"):
        pack_run(RUN, tmp_path / "out", tmp_path / "empty")
    _cut(tmp_path / "here")
    with pytest.raises(TransportError, match="mode"):
        pack_run(RUN, tmp_path / "out", tmp_path / "here", mode="zip")  # type: ignore[arg-type]
    with pytest.raises(TransportError, match="part_bytes"):
        pack_run(RUN, tmp_path / "out", tmp_path / "here", part_bytes=0)
    with pytest.raises(TransportError, match=r"over max_bytes.*compact"):
        pack_run(RUN, tmp_path / "out", tmp_path / "here", max_bytes=1000)
    manifest = pack_run(RUN, tmp_path / "out", tmp_path / "here", part_bytes=20_000)
    other = replace(RUN, seed=1)
    with pytest.raises(TransportError, match="this configuration and code give"):
        unpack_run(manifest, other, tmp_path / "there")
    part = tmp_path / "out" / read_manifest(manifest)["parts"][1]["file"]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(TransportError, match=f"part {part}.*altered"):
        unpack_run(manifest, RUN, tmp_path / "there")
    part.unlink()
    with pytest.raises(TransportError, match=f"part {part}.*missing"):
        unpack_run(manifest, RUN, tmp_path / "there")
    assert not RunStore(RUN, tmp_path / "there").checkpoint_path.exists()  # nothing was written
    manifest.write_text("{not json")
    with pytest.raises(TransportError, match="unreadable manifest"):
        unpack_run(manifest, RUN, tmp_path / "there")


class Payload:
    """Any object that is not plain tensors and containers: weights_only must refuse it."""


def test_a_pickled_object_is_refused_even_with_matching_checksums(tmp_path) -> None:
    buf = io.BytesIO()
    torch.save({"model": Payload(), "step": 5}, buf)
    data = buf.getvalue()
    key = RunStore(RUN, tmp_path / "there").key
    (tmp_path / "x.part00").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "x.manifest.json").write_text(json.dumps({
        "format": 1, "key": key, "kind": "checkpoint", "lossy": False, "step": 5, "bytes": len(data),
        "sha256": sha, "parts": [{"file": "x.part00", "bytes": len(data), "sha256": sha}]}))
    with pytest.raises(TransportError, match="does not load"):
        unpack_run(tmp_path / "x.manifest.json", RUN, tmp_path / "there")
    assert not RunStore(RUN, tmp_path / "there").checkpoint_path.exists()
