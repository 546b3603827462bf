"""BatchSampler determinism/checkpointing and the CIFAR augmentation against a loop reference."""

import io

import pytest
import torch
import torch.nn.functional as F

import gradreg.data as gd


def take(sampler, k):
    return [next(sampler) for _ in range(k)]


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_stream_and_different_seed_differs():
    a = take(gd.BatchSampler(50, 7, seeded(0)), 20)
    b = take(gd.BatchSampler(50, 7, seeded(0)), 20)
    c = take(gd.BatchSampler(50, 7, seeded(1)), 20)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))
    assert all(t.dtype == torch.int64 and t.shape == (7,) for t in a)


@pytest.mark.parametrize("n,batch_size", [(10, 3), (12, 4), (5, 12), (1, 1)])
def test_stream_is_one_randperm_per_epoch(n, batch_size):
    sampler = gd.BatchSampler(n, batch_size, seeded(3))
    stream = torch.cat(take(sampler, 10))
    oracle_generator = seeded(3)
    epochs = -(-len(stream) // n)
    oracle = torch.cat([torch.randperm(n, generator=oracle_generator) for _ in range(epochs)])
    torch.testing.assert_close(stream, oracle[: len(stream)])
    assert sampler.epoch == epochs
    for e in range(len(stream) // n):  # every index exactly once per epoch
        assert sorted(stream[e * n : (e + 1) * n].tolist()) == list(range(n))


def test_state_dict_resumes_identical_stream():
    sampler = gd.BatchSampler(10, 4, seeded(5))
    take(sampler, 4)  # mid-epoch: position 6 of epoch 2
    buffer = io.BytesIO()
    torch.save(sampler.state_dict(), buffer)
    expected = take(sampler, 9)
    buffer.seek(0)
    resumed = gd.BatchSampler(10, 4, seeded(999))
    resumed.load_state_dict(torch.load(buffer))
    got = take(resumed, 9)
    assert all(torch.equal(u, v) for u, v in zip(got, expected))
    assert resumed.epoch == sampler.epoch
    with pytest.raises(ValueError, match="batch_size"):
        gd.BatchSampler(10, 5, seeded(0)).load_state_dict(sampler.state_dict())


def test_bad_sampler_arguments():
    with pytest.raises(ValueError):
        gd.BatchSampler(0, 4, seeded(0))


# --- augmentation ---------------------------------------------------------------------------


def loop_reference(x, shifts, flips, pad=4):
    """One example at a time: zero pad, crop at offset (pad - dy, pad - dx), then maybe flip."""
    out = torch.empty_like(x)
    h, w = x.shape[-2:]
    for i in range(x.shape[0]):
        padded = F.pad(x[i], (pad, pad, pad, pad))
        dy, dx = int(shifts[i, 0]), int(shifts[i, 1])
        crop = padded[:, pad - dy : pad - dy + h, pad - dx : pad - dx + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def test_translate_flip_matches_loop_reference():
    g = seeded(0)
    x = torch.randn(64, 3, 32, 32, generator=g, dtype=torch.float64)
    shifts = torch.randint(-4, 5, (64, 2), generator=g)
    flips = torch.rand(64, generator=g) < 0.5
    torch.testing.assert_close(gd.translate_flip(x, shifts, flips), loop_reference(x, shifts, flips), rtol=0, atol=0)


def test_random_translate_flip_uses_documented_draws():
    x = torch.randn(16, 3, 8, 10, generator=seeded(1))
    out = gd.random_translate_flip(x, seeded(2))
    g = seeded(2)
    shifts = torch.randint(-4, 5, (16, 2), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    torch.testing.assert_close(out, loop_reference(x, shifts, flips), rtol=0, atol=0)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    torch.testing.assert_close(gd.random_translate_flip(x, seeded(2)), out)


def test_translate_flip_special_cases():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 5, 6) + 1
    zero = torch.zeros(2, 2, dtype=torch.long)
    torch.testing.assert_close(gd.translate_flip(x, zero, torch.tensor([False, False])), x)
    torch.testing.assert_close(gd.translate_flip(x, zero, torch.tensor([True, True])), x.flip(-1))
    right = gd.translate_flip(x, torch.tensor([[0, 4], [0, 4]]), torch.tensor([False, False]))
    assert (right[..., :4] == 0).all()
    torch.testing.assert_close(right[..., 4:], x[..., :2])
    down = gd.translate_flip(x, torch.tensor([[-2, 0], [-2, 0]]), torch.tensor([False, False]))
    torch.testing.assert_close(down[..., :3, :], x[..., 2:, :])
    assert (down[..., 3:, :] == 0).all()
    with pytest.raises(ValueError, match="shifts"):
        gd.translate_flip(x, torch.tensor([[5, 0], [0, 0]]), torch.tensor([False, False]))


def test_translation_draws_cover_the_range():
    out = gd.random_translate_flip(torch.ones(4000, 1, 9, 9), seeded(4))
    zero_rows = (out.sum(dim=(1, 3)) == 0).sum(dim=1)  # rows zeroed = |dy|
    zero_cols = (out.sum(dim=(1, 2)) == 0).sum(dim=1)  # columns zeroed = |dx|
    assert set(zero_rows.tolist()) == set(range(5)) and set(zero_cols.tolist()) == set(range(5))
    assert (out.sum(dim=(1, 2, 3)) == 81).float().mean().item() == pytest.approx(1 / 81, abs=0.01)
