"""Batched augmentation: shape, range, exactness of the flip, seeding, the offline expansion."""

from __future__ import annotations

import time

import pytest
import torch

from trainables import augment


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 6:22, 9:19] = torch.rand(64, 1, 16, 10, generator=gen(1)) * 0.5 + 0.5
    return x


@pytest.mark.parametrize("policy", augment.POLICIES)
def test_shape_dtype_range(batch, policy):
    out = augment.augment_batch(batch, policy, gen())
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("policy", ["none", "offline"])
def test_identity_policies(batch, policy):
    assert augment.augment_batch(batch, policy, gen()) is batch


def test_flip_is_a_flip(batch):
    out = augment.random_flip(batch, gen())
    flipped = (out == batch.flip(-1)).flatten(1).all(1)
    kept = (out == batch).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any() and kept.any()
    assert torch.equal(augment.random_flip(batch, gen(), p=1.0), batch.flip(-1))


def test_pure_shift_moves_pixels_exactly(batch):
    """With no rotation, the affine step is an integer shift with zero fill: pad-and-crop."""
    out = augment.random_affine(batch, gen(3), degrees=0.0)
    for i in range(8):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.allclose(out[i], torch.roll(batch[i], (-dy, -dx), (-2, -1)),
                                     atol=1e-6)]
        assert matches, i  # the blob sits away from the borders, so a roll equals the shift


@pytest.mark.parametrize("policy", ["flip", "online"])
def test_seeded(batch, policy):
    a = augment.augment_batch(batch, policy, gen(5))
    assert torch.equal(a, augment.augment_batch(batch, policy, gen(5)))
    assert not torch.equal(a, augment.augment_batch(batch, policy, gen(6)))


def test_online_changes_images_but_keeps_their_content(batch):
    out = augment.augment_batch(batch, "online", gen())
    assert (out != batch).flatten(1).any(1).float().mean() > 0.9
    mass = out.sum((1, 2, 3)) / batch.sum((1, 2, 3))
    assert mass.median() > 0.7  # rotation and shift keep the object; erasing removes a part


def test_random_erase_rectangles(batch):
    ones = torch.ones(200, 1, 28, 28)
    out = augment.random_erase(ones, gen(), p=1.0)
    erased = (out == 0).flatten(1).float().mean(1)
    assert (erased > 0).all()
    assert erased.min() >= 0.02 * 0.5 and erased.max() <= 0.33 * 1.5  # rounding of the sides
    for img in (out[:20, 0] == 0):  # each erased region is one axis-aligned rectangle
        rows, cols = img.any(1).nonzero(), img.any(0).nonzero()
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()
    assert augment.random_erase(ones, gen(), p=0.0).equal(ones)


def test_offline_expansion():
    x = (torch.rand(300, 28, 28, generator=gen(2)) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (300,), generator=gen(3))
    x3, y3 = augment.expand_offline(x, y, gen())
    assert x3.shape == (900, 28, 28) and x3.dtype == torch.uint8
    assert torch.equal(y3, torch.cat([y, y, y]))
    assert torch.equal(x3[:300], x)
    second = x3[300:600]
    erased = second != x.flip(-1)
    assert erased.flatten(1).any(1).all()  # every flipped copy carries an erased patch
    assert (second[erased] == 0).all()  # and differs from the flip only there
    blurred = x3[600:].float()

    def total_variation(a):
        return (a[:, 1:] - a[:, :-1]).abs().mean() + (a[:, :, 1:] - a[:, :, :-1]).abs().mean()

    assert total_variation(blurred) < 0.6 * total_variation(x.float())
    assert (blurred - x.float()).abs().mean() < 60
    again, _ = augment.expand_offline(x, y, gen())
    assert torch.equal(again, x3)


def test_batched_not_per_sample():
    x = (torch.rand(10_000, 28, 28, generator=gen()) * 255).to(torch.uint8)
    start = time.perf_counter()
    augment.expand_offline(x, torch.zeros(10_000, dtype=torch.long), gen())
    augment.augment_batch(x[:4096].unsqueeze(1).float() / 255, "online", gen())
    assert time.perf_counter() - start < 5  # a per-image Python loop takes far longer


def test_default_policy():
    assert augment.default_policy("cnn") == "offline"
    assert augment.default_policy("resnet18") == augment.default_policy("inception") == "online"
