"""The batch pipeline: on-device shuffling, cropping, flipping and normalising, whole batches
at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafiles import (
    isolated,  # noqa: F401  (autouse: no test sees the real data or network)
    )

from ncslim.data import DATASETS, batches
from ncslim.data.batching import _crop_flip

# ----------------------------------------------------------------------------- batches


def unnormalise(x: torch.Tensor, info) -> torch.Tensor:
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def reference_crop(image: np.ndarray, oy: int, ox: int, flip: bool) -> np.ndarray:
    padded = np.pad(image, ((0, 0), (4, 4), (4, 4)))
    crop = padded[:, oy:oy + 32, ox:ox + 32]
    return crop[:, :, ::-1] if flip else crop


def random_images(n: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, channels, 32, 32), generator=gen, dtype=torch.uint8)


def test_crop_flip_matches_slicing_for_every_offset():
    image = random_images(1)[0]
    offsets = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)]
    oy, ox, flip = (torch.tensor(v) for v in zip(*offsets))
    out = _crop_flip(image.expand(len(offsets), -1, -1, -1), oy, ox, flip)
    for k, (a, b, f) in enumerate(offsets):
        np.testing.assert_array_equal(out[k].numpy(), reference_crop(image.numpy(), a, b, f))


def test_eval_batches_in_order_with_partial_last():
    info = DATASETS["cifar10"]
    images, labels = random_images(10), torch.arange(10)
    out = list(batches(images, labels, 4, info=info, train=False))
    assert [y.tolist() for _, y in out] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    x = torch.cat([b for b, _ in out])
    assert x.dtype == torch.float32 and torch.equal(unnormalise(x, info), images)
    dropped = list(batches(images, labels, 4, info=info, train=False, drop_last=True))
    assert [len(y) for _, y in dropped] == [4, 4]


def test_normalisation_values():
    for name, value in [("cifar10", 100), ("fashion-mnist", 37), ("svhn", 255)]:
        info = DATASETS[name]
        images = torch.full((3, info.in_channels, 32, 32), value, dtype=torch.uint8)
        x, _ = next(batches(images, torch.zeros(3, dtype=torch.long), 8, info=info, train=False))
        expected = (value / 255 - torch.tensor(info.mean)) / torch.tensor(info.std)
        torch.testing.assert_close(x, expected.view(1, -1, 1, 1).expand_as(x).float())


def test_train_shuffle_is_a_seeded_permutation():
    info = DATASETS["svhn"]  # no augmentation: batches are exactly the shuffled images
    images, labels = random_images(50), torch.arange(50)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(seed)
        return list(batches(images, labels, 8, info=info, train=True, generator=gen))

    first = epoch(0)
    order = torch.cat([y for _, y in first])
    assert sorted(order.tolist()) == list(range(50)) and order.tolist() != list(range(50))
    assert [len(y) for _, y in first] == [8] * 6 + [2]
    assert torch.equal(unnormalise(torch.cat([x for x, _ in first]), info), images[order])
    again = epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not torch.equal(torch.cat([y for _, y in epoch(1)]), order)
    gen = torch.Generator().manual_seed(0)
    two = [torch.cat([y for _, y in batches(images, labels, 8, info=info, train=True,
                                            generator=gen)]) for _ in range(2)]
    assert not torch.equal(two[0], two[1])  # each call is a new epoch
    assert [len(y) for _, y in batches(images, labels, 8, info=info, train=True,
                                       drop_last=True)] == [8] * 6


def test_augmented_images_are_translations_and_flips():
    info = DATASETS["cifar10"]
    images, labels = random_images(24, seed=3), torch.arange(24)
    gen = torch.Generator().manual_seed(5)
    candidates = [(oy, ox, f) for oy in range(9) for ox in range(9) for f in (False, True)]
    seen = set()
    for x, y in batches(images, labels, 10, info=info, train=True, generator=gen):
        for got, src in zip(unnormalise(x, info).numpy(), y.tolist()):
            matches = [c for c in candidates
                       if np.array_equal(got, reference_crop(images[src].numpy(), *c))]
            assert len(matches) == 1
            seen.add(matches[0])
    assert len(seen) > 12


def test_augmentation_statistics():
    """Offsets uniform over 0..8 in both directions, about half the images flipped."""
    info = DATASETS["cifar100"]
    n = 4000
    ramp = (10 + 7 * torch.arange(32)).to(torch.uint8)
    image = torch.stack([ramp.expand(32, 32), ramp.view(32, 1).expand(32, 32),
                         torch.full((32, 32), 50, dtype=torch.uint8)])
    images = image.expand(n, -1, -1, -1).contiguous()
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([b for b, _ in batches(images, torch.zeros(n, dtype=torch.long), 256,
                                         info=info, train=True, generator=gen)])
    pixels = unnormalise(x, info).long()
    flipped = pixels[:, 0, 16, 17] < pixels[:, 0, 16, 16]
    assert 0.45 < flipped.float().mean() < 0.55
    centre = torch.where(flipped, pixels[:, 0, 16, 15], pixels[:, 0, 16, 16])
    ox = (centre - 10) // 7 - 12  # unflipped: column 16 shows source column 16 + ox - 4
    oy = (pixels[:, 1, 16, 16] - 10) // 7 - 12
    for offsets in (ox, oy):
        counts = offsets.bincount(minlength=9)
        assert len(counts) == 9 and counts.min() > 0.8 * n / 9 and counts.max() < 1.2 * n / 9
    top = pixels[:, 2, 0, 4:28]  # oy < 4: the top row comes from the zero padding
    assert (top[oy < 4] == 0).all() and (top[oy >= 4] == 50).all()


def test_channels_last_and_generator_free_use():
    info = DATASETS["cifar10"]
    images, labels = random_images(6), torch.arange(6)
    gen = torch.Generator().manual_seed(2)
    plain = list(batches(images, labels, 4, info=info, train=True, generator=gen))
    gen = torch.Generator().manual_seed(2)
    cl = list(batches(images, labels, 4, info=info, train=True, generator=gen,
                      channels_last=True))
    for (a, ya), (b, yb) in zip(plain, cl):
        assert b.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert sorted(torch.cat([y for _, y in batches(images, labels, 4, info=info,
                                                   train=True)]).tolist()) == list(range(6))


def test_batches_bad_args_fail_at_the_call():
    info = DATASETS["cifar10"]
    images, labels = random_images(4), torch.arange(4)
    for size in (0, -1, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            batches(images, labels, size, info=info, train=False)
    with pytest.raises(ValueError, match="uint8"):
        batches(images.float(), labels, 2, info=info, train=False)
    with pytest.raises(ValueError, match="labels"):
        batches(images, labels[:3], 2, info=info, train=False)
    with pytest.raises(ValueError, match="channels"):
        batches(images, labels, 2, info=DATASETS["fashion-mnist"], train=False)
