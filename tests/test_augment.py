"""Batched augmentation: shape, range, exactness of the flip, seeding, the offline expansion."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from trainables import augment

NO_WARP = dict(degrees=0.0, translate=0, erase_p=0.0)  # the online policy reduced to its flip


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def batch():
    """64 asymmetric blobs in [0.5, 1] on a zero background, away from the borders."""
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 6:22, 9:19] = torch.rand(64, 1, 16, 10, generator=gen(1)) * 0.5 + 0.5
    return x


def uint8_images(n, seed=2):
    return (torch.rand(n, 28, 28, generator=gen(seed)) * 255).to(torch.uint8)


@pytest.mark.parametrize("policy", augment.POLICIES)
def test_shape_dtype_range(batch, policy):
    for x in (batch, torch.ones_like(batch), torch.rand(64, 1, 28, 28, generator=gen(4))):
        out = augment.augment_batch(x, policy, gen())
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("policy", ["none", "offline"])
def test_identity_policies(batch, policy):
    assert augment.augment_batch(batch, policy, gen()) is batch


def test_unknown_policy(batch):
    with pytest.raises(ValueError, match="unknown augmentation policy"):
        augment.augment_batch(batch, "mixup", gen())


@pytest.mark.parametrize("policy", ["flip", "shift", "online"])
def test_flip_is_a_flip(batch, policy):
    kwargs = {"flip": {}, "shift": dict(translate=0), "online": NO_WARP}[policy]
    out = augment.augment_batch(batch, policy, gen(), **kwargs)
    flipped = (out == batch.flip(-1)).flatten(1).all(1)
    kept = (out == batch).flatten(1).all(1)
    assert (flipped | kept).all() and flipped.any() and kept.any()
    assert torch.equal(augment.random_flip(batch, gen(), p=1.0), batch.flip(-1))


def test_pure_shift_moves_pixels_exactly(batch):
    """With no rotation, the affine step is an integer shift with zero fill: pad-and-crop."""
    out = augment.random_affine(batch, gen(3), degrees=0.0)
    shifts = set()
    for i in range(32):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.allclose(out[i], torch.roll(batch[i], (-dy, -dx), (-2, -1)),
                                     atol=1e-6)]
        assert len(matches) == 1, i  # the blob sits away from the borders: a roll is the shift
        shifts.add(matches[0])
    assert len(shifts) > 5  # the shifts vary, in both axes


def test_affine_grid_matches_torch():
    theta = torch.randn(16, 2, 3, generator=gen())
    for h, w in ((28, 28), (20, 32)):
        ref = F.affine_grid(theta, [16, 1, h, w], align_corners=False)
        assert torch.allclose(augment._affine_grid(theta, h, w), ref, atol=1e-5)


def test_shift_policy_is_a_flip_then_an_exact_integer_shift(batch):
    """``shift``: every image is the original or its mirror, moved by whole pixels (at most 2 per
    axis) with zero fill: bit-exact, no interpolation, the object's mass kept."""
    out = augment.augment_batch(batch, "shift", gen(3))
    shifts = set()
    for i in range(64):
        matches = [(f, dy, dx) for f in (0, 1) for dy in range(-2, 3) for dx in range(-2, 3)
                   if torch.equal(out[i], torch.roll(batch[i].flip(-1) if f else batch[i],
                                                     (-dy, -dx), (-2, -1)))]
        assert len(matches) == 1, i  # the blob sits away from the borders: a roll is the shift
        shifts.add(matches[0])
    assert {s[0] for s in shifts} == {0, 1} and len({s[1:] for s in shifts}) > 10
    edge = torch.ones(8, 1, 28, 28)
    moved = augment.random_shift(edge, gen(), pixels=2)
    assert set(moved.unique().tolist()) <= {0.0, 1.0}  # zero fill where the image moved away
    assert torch.equal(augment.random_shift(edge, gen(), pixels=0), edge)


@pytest.mark.parametrize("policy", ["flip", "shift", "online"])
def test_seeded(batch, policy):
    a = augment.augment_batch(batch, policy, gen(5))
    assert torch.equal(a, augment.augment_batch(batch, policy, gen(5)))
    assert not torch.equal(a, augment.augment_batch(batch, policy, gen(6)))


def test_online_changes_images_but_keeps_their_content(batch):
    out = augment.augment_batch(batch, "online", gen())
    assert (out != batch).flatten(1).any(1).float().mean() > 0.9
    mass = out.sum((1, 2, 3)) / batch.sum((1, 2, 3))
    assert mass.median() > 0.7  # rotation and shift keep the object; erasing removes a part
    warped = augment.augment_batch(batch, "online", gen(), erase_p=0.0)
    mass = warped.sum((1, 2, 3)) / batch.sum((1, 2, 3))
    assert ((mass > 0.95) & (mass < 1.05)).all()  # no erasing: the blob is only moved


def test_random_erase_rectangles():
    ones = torch.ones(1000, 1, 28, 28)
    out = augment.random_erase(ones, gen(), p=1.0)
    erased = (out == 0).flatten(1).float().mean(1)
    assert ((out == 0) | (out == 1)).all()
    # area fraction ~U(0.02, 0.33), up to rounding a side to whole pixels
    assert erased.min() >= 0.015 and erased.max() <= 0.35
    assert abs(erased.mean() - (0.02 + 0.33) / 2) < 0.02
    tall = wide = 0
    for img in (out[:100, 0] == 0):  # each erased region is one axis-aligned rectangle
        rows, cols = img.any(1).nonzero(), img.any(0).nonzero()
        box = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and box.sum() == img.sum()
        tall += box.shape[0] > box.shape[1]
        wide += box.shape[0] < box.shape[1]
    assert tall > 10 and wide > 10  # aspect ratios on both sides of 1
    assert augment.random_erase(ones, gen(), p=0.0).equal(ones)
    half = (augment.random_erase(ones, gen()) == 0).flatten(1).any(1).float().mean()
    assert 0.4 < half < 0.6  # p=0.5 by default
    u8 = augment.random_erase(torch.full((8, 1, 28, 28), 7, dtype=torch.uint8), gen(), p=1.0)
    assert u8.dtype == torch.uint8 and set(u8.unique().tolist()) == {0, 7}


def total_variation(a):
    a = a.float()
    return (a[:, 1:] - a[:, :-1]).abs().mean() + (a[:, :, 1:] - a[:, :, :-1]).abs().mean()


def test_offline_expansion():
    x = uint8_images(300)
    y = torch.randint(0, 10, (300,), generator=gen(3))
    x3, y3 = augment.expand_offline(x, y, gen())
    assert x3.shape == (900, 28, 28) and x3.dtype == torch.uint8
    assert torch.equal(y3, torch.cat([y, y, y]))
    assert torch.equal(x3[:300], x)
    for img, flipped in zip(x3[300:600], x.flip(-1), strict=True):
        diff = img != flipped
        assert diff.any()  # every flipped copy is erased (p=1)
        rows, cols = diff.any(1).nonzero(), diff.any(0).nonzero()
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        assert (img[box] == 0).all()  # the differences span one rectangle of zeros
        outside = torch.ones_like(diff)
        outside[box] = False
        assert torch.equal(img[outside], flipped[outside])  # and the flip elsewhere
        assert 0.015 <= img[box].numel() / img.numel() <= 0.35
    again, _ = augment.expand_offline(x, y, gen())
    assert torch.equal(again, x3)
    assert not torch.equal(augment.expand_offline(x, y, gen(1))[0], x3)


def test_offline_blur():
    # smooth-ish images (a blob plus noise) so that "close to the original" means something
    x = torch.zeros(50, 28, 28)
    x[:, 6:22, 9:19] = 200
    x = (x + torch.rand(50, 28, 28, generator=gen()) * 55).to(torch.uint8)
    blurred = augment.expand_offline(x, torch.zeros(50, dtype=torch.long), gen())[0][100:]
    assert total_variation(blurred) < 0.7 * total_variation(x)
    assert (blurred.float() - x.float()).abs().mean() < 25
    # the same as a plain 3x3 Gaussian convolution (sigma 1, edges replicated), up to rounding
    t = torch.tensor([-1.0, 0.0, 1.0])
    k = torch.exp(-(t**2) / 2)
    k = (k[:, None] * k[None, :]) / k.sum() ** 2
    padded = F.pad(x.unsqueeze(1).float(), (1, 1, 1, 1), mode="replicate")
    ref = F.conv2d(padded, k[None, None]).squeeze(1)
    assert (blurred.float() - ref).abs().max() <= 0.51


def count_python_calls(fn):
    calls = 0

    def prof(frame, event, arg):
        nonlocal calls
        calls += event == "call"

    sys.setprofile(prof)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def test_batched_not_per_sample():
    """The work in Python does not grow with the batch: no per-image loop anywhere."""
    for n in (16, 2048):
        x = uint8_images(n)
        y = torch.zeros(n, dtype=torch.long)
        xf = x.unsqueeze(1).float() / 255
        offline = count_python_calls(lambda x=x, y=y: augment.expand_offline(x, y, gen()))
        online = count_python_calls(lambda xf=xf: augment.augment_batch(xf, "online", gen()))
        if n == 16:
            small = (offline, online)
    assert (offline, online) == small


def test_default_policy():
    assert augment.default_policy("cnn") == "offline"
    assert augment.default_policy("resnet18") == augment.default_policy("inception") == "online"
    assert {augment.default_policy(m) for m in ("cnn", "resnet18")} <= set(augment.POLICIES)
