import hashlib
import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from loraflow.errors import ModelLoadError
from loraflow.models.hashing import (
    CHUNK_SIZE,
    legacy_model_hash,
    lora_hash,
    model_hash,
    model_weights_files,
    sha256_file,
)


def _tensors(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return {f"lora_unet_{i}.lora_down.weight": rng.standard_normal((8, 4), dtype=np.float32) for i in range(n)}


@pytest.fixture
def lora_file(tmp_path):
    path = tmp_path / "ink.safetensors"
    save_file(_tensors(), str(path), metadata={"ss_network_dim": "4"})
    return path


def _tensor_bytes(path):
    """The bytes after the safetensors header, found independently of the code under test."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    json.loads(data[8 : 8 + header_len])  # it really is the header
    return data[8 + header_len :]


def test_model_hash_is_sha256_prefix(lora_file):
    expected = hashlib.sha256(lora_file.read_bytes()).hexdigest()
    assert sha256_file(lora_file) == expected
    assert model_hash(lora_file) == expected[:10]


def test_model_hash_streams_multi_chunk_file(tmp_path):
    path = tmp_path / "big.bin"
    data = np.random.default_rng(1).bytes(2 * CHUNK_SIZE + 123)
    path.write_bytes(data)
    assert model_hash(path) == hashlib.sha256(data).hexdigest()[:10]


def test_legacy_model_hash(tmp_path):
    path = tmp_path / "model.ckpt"
    data = np.random.default_rng(2).bytes(0x100000 + 0x20000)
    path.write_bytes(data)
    assert legacy_model_hash(path) == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]


def test_legacy_model_hash_small_file_hashes_nothing(lora_file):
    assert legacy_model_hash(lora_file) == hashlib.sha256(b"").hexdigest()[:8]


def test_lora_hash_is_addnet_hash(lora_file):
    expected = hashlib.sha256(_tensor_bytes(lora_file)).hexdigest()[:12]
    assert lora_hash(lora_file) == expected
    assert len(expected) == 12
    assert lora_hash(lora_file) != sha256_file(lora_file)[:12]


def test_lora_hash_ignores_metadata(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(_tensors(), str(a), metadata={"name": "a"})
    save_file(_tensors(), str(b), metadata={"name": "something else entirely"})
    assert sha256_file(a) != sha256_file(b)
    assert lora_hash(a) == lora_hash(b)
    c = tmp_path / "c.safetensors"
    save_file(_tensors(seed=5), str(c), metadata={"name": "a"})
    assert lora_hash(c) != lora_hash(a)


def test_lora_hash_non_safetensors_hashes_whole_file(tmp_path):
    path = tmp_path / "old.pt"
    path.write_bytes(b"\x80\x02 pretend pickle")
    assert lora_hash(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_lora_hash_diffusers_folder(tmp_path, lora_file):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(lora_file.read_bytes())
    assert lora_hash(folder) == lora_hash(lora_file)


def test_lora_hash_truncated_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes((10_000).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelLoadError, match="broken.safetensors"):
        lora_hash(path)


def test_diffusers_folder_hashes_unet(tmp_path):
    unet = tmp_path / "kolors" / "unet"
    unet.mkdir(parents=True)
    save_file(_tensors(seed=3), str(unet / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "kolors" / "model_index.json").write_text("{}")
    weights = unet / "diffusion_pytorch_model.safetensors"
    assert model_weights_files(tmp_path / "kolors") == [weights]
    assert model_hash(tmp_path / "kolors") == hashlib.sha256(weights.read_bytes()).hexdigest()[:10]


def test_diffusers_folder_sharded_unet(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    for i in (2, 1, 10):  # hashed in shard-number order
        (unet / f"diffusion_pytorch_model-{i:05d}-of-00010.safetensors").write_bytes(bytes([i]) * 100)
    parts = [bytes([i]) * 100 for i in (1, 2, 10)]
    assert model_hash(tmp_path) == hashlib.sha256(b"".join(parts)).hexdigest()[:10]


def test_diffusers_folder_without_unet(tmp_path):
    with pytest.raises(ModelLoadError, match="unet"):
        model_hash(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="nope.safetensors"):
        model_hash(tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match="nope.safetensors"):
        lora_hash(tmp_path / "nope.safetensors")
