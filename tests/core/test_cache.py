"""The embedding cache: hits, eviction, corruption and key mismatch."""

from __future__ import annotations

import numpy as np
import torch

from sammed2d import EmbeddingCache, load_model
from sammed2d.cache import embedding_key
from sammed2d.predictor import embed_slices


def test_lru_eviction_is_bounded_in_bytes():
    cache = EmbeddingCache(max_bytes=3 * 4 * 100)
    for i in range(5):
        cache.put(f"k{i}", torch.full((100,), float(i)))
    assert len(cache) == 3 and cache.nbytes <= 1200
    assert cache.get("k0") is None and cache.get("k4") is not None
    cache.get("k2")  # now most recent
    cache.put("k5", torch.zeros(100))
    assert cache.get("k2") is not None and cache.get("k3") is None


def test_fp16_storage_halves_memory():
    cache = EmbeddingCache(fp16=True)
    cache.put("a", torch.ones(256))
    assert cache.nbytes == 512 and cache.get("a").dtype == torch.float32


def test_disk_store_survives_restart_and_skips_recompute(tmp_path, tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    images = [np.full((32, 32, 3), v, np.uint8) for v in (10, 200)]
    first = embed_slices(model, images, cache=EmbeddingCache(folder=tmp_path))
    assert len(list(tmp_path.rglob("*.npz"))) == 2
    assert not list(tmp_path.rglob("*.tmp"))
    fresh = EmbeddingCache(folder=tmp_path)
    calls = []
    embed_slices(model, images, cache=fresh, progress=lambda d, t: calls.append((d, t)))
    assert fresh.hits == 2 and fresh.misses == 0
    assert calls == [(2, 2)]  # everything came from disk
    again = embed_slices(model, images, cache=fresh)
    assert torch.equal(again[0].embedding, first[0].embedding)


def test_corrupt_entry_is_recomputed(tmp_path, tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    image = [np.full((32, 32, 3), 90, np.uint8)]
    reference = embed_slices(model, image, cache=EmbeddingCache(folder=tmp_path))[0].embedding
    (entry,) = tmp_path.rglob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # truncated
    cache = EmbeddingCache(folder=tmp_path)
    again = embed_slices(model, image, cache=cache)[0].embedding
    assert cache.misses == 1 and torch.equal(again, reference)
    assert EmbeddingCache(folder=tmp_path).get(entry.stem) is not None  # rewritten whole


def test_entry_under_another_key_is_not_served(tmp_path, tiny_checkpoint):
    model = load_model(tiny_checkpoint, device="cpu")
    x = torch.zeros(1, 3, 256, 256)
    key = embedding_key(x, model)
    cache = EmbeddingCache(folder=tmp_path)
    cache.put(key, torch.ones(1, 256, 16, 16))
    other = embedding_key(x, load_model(tiny_checkpoint, device="cpu")) + "0"
    (path,) = tmp_path.rglob("*.npz")
    moved = tmp_path / other[:2] / f"{other}.npz"
    moved.parent.mkdir(exist_ok=True)
    path.rename(moved)  # an entry whose stored key differs from its name, where lookups read
    fresh = EmbeddingCache(folder=tmp_path)
    assert moved == fresh._path(other) and moved.exists()
    assert fresh.get(other) is None


def test_key_depends_on_model_weights(tiny_checkpoint, fixtures_dir):
    x = torch.zeros(1, 3, 256, 256)
    a = load_model(tiny_checkpoint, device="cpu")
    b = load_model(fixtures_dir / "sammed2d_tiny.pth", device="cpu")
    assert embedding_key(x, a) != embedding_key(x, b)
    assert embedding_key(x, a) == embedding_key(x.clone(), a)
    assert embedding_key(x, a) != embedding_key(x + 1e-3, a)


def test_embeddings_reach_the_decoder_channels_last_from_memory_and_disk(tmp_path, litemedsam):
    """Fresh and disk-read embeddings are laid out as the decoder reads them, and the
    decoder gives the same logits whatever layout it is handed."""
    from sammed2d.predictor import ImageEmbedding, decode

    rng = np.random.default_rng(0)
    image = [rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)]
    fresh = embed_slices(litemedsam, image, cache=EmbeddingCache(folder=tmp_path))[0]
    from_disk = embed_slices(litemedsam, image, cache=EmbeddingCache(folder=tmp_path))[0]
    for emb in (fresh, from_disk):
        assert emb.embedding.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fresh.embedding, from_disk.embedding)
    plain = ImageEmbedding(fresh.embedding.contiguous(), fresh.geometry)
    box = np.array([[10, 12, 50, 60]], np.float32)
    a = decode(litemedsam, fresh, boxes=box, multimask_output=False)
    b = decode(litemedsam, plain, boxes=box, multimask_output=False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
