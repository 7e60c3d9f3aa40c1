"""A checkpoint packed into a few files (`recipes.pack`) unpacks into the same checkpoint."""

from __future__ import annotations

import pytest
import torch

from _model_utils import reference_checkpoint
from recipes.pack import pack, unpack
from vlm import VLM


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A tiny checkpoint saved in 64 KiB shards, with a card."""
    directory = tmp_path_factory.mktemp("sharded")
    VLM.from_pretrained(reference_checkpoint(tmp_path_factory, "moe")).save_pretrained(directory,
                                                                                         max_shard_bytes=64 * 1024)
    (directory / "README.md").write_text("# card\n")
    return directory


def test_a_packed_checkpoint_is_its_shards_one_tar_and_the_record_and_unpacks_to_the_same(sharded, tmp_path):
    record = {"results": {"ui_grounding": {"accuracy": 0.5}}, "not_run": ["episodes"]}
    written = pack(sharded, tmp_path / "out", record=record)
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert sorted(p.name for p in written) == sorted(p.name for p in (tmp_path / "out").iterdir())
    assert sorted(p.name for p in written) == sorted([*shards, "checkpoint.tar", "eval.json"])

    assert unpack(tmp_path / "out", tmp_path / "back") == record
    assert sorted(p.name for p in (tmp_path / "back").iterdir()) == sorted(p.name for p in sharded.iterdir())
    ours = VLM.from_pretrained(sharded).model.state_dict()
    again = VLM.from_pretrained(tmp_path / "back").model.state_dict()
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    assert unpack(tmp_path / "out", tmp_path / "out") == record  # in place: the pack folder becomes the checkpoint
    assert VLM.from_pretrained(tmp_path / "out").model.state_dict().keys() == ours.keys()


def test_a_file_over_the_limit_and_a_folder_that_is_no_pack_fail_by_name(sharded, tmp_path):
    with pytest.raises(ValueError, match="over 1,000 bytes .*model-00001-of-"):
        pack(sharded, tmp_path / "out", record={}, max_file_bytes=1000)
    with pytest.raises(FileNotFoundError, match="not a packed checkpoint: it has no checkpoint.tar"):
        unpack(sharded, tmp_path / "back")
