"""A black-box attack in pieces, kept in a journal, resumes where it was interrupted with the same result."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from csg.adversarial import local_search_attack, one_pixel_attack
from csg.adversarial.journal import BlackBoxJournal, attack_in_pieces, journal_path
from csg.core.fingerprint import fingerprint

from test_blackbox import BrightPixel, dark_images


def _same(a, b) -> bool:
    return (torch.equal(a.images, b.images) and torch.equal(a.success, b.success)
            and torch.equal(a.queries, b.queries))


ATTACKS = {
    # A threshold that some candidates reach: the pixel found (and the generation) depends on each image's seed.
    "one-pixel": (one_pixel_attack, BrightPixel(threshold=0.9), dict(population=12, max_iter=6, seed=3), 3),
    # Unbeatable: every image keeps its last iterate, which depends on the seed pixels its batch drew.
    "local-search": (local_search_attack, BrightPixel(threshold=2.0),
                     dict(d=1, t=2, rounds=3, seed=5, images_per_batch=2), 2),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_pieces_with_their_offsets_equal_the_whole_sample(name):
    attack, model, opts, piece = ATTACKS[name]
    x = dark_images(6, c=1, size=8, seed=1)
    y = torch.zeros(6, dtype=torch.long)
    whole = attack(model, x, y, **opts)
    pieces = attack_in_pieces(attack, model, x, y, BlackBoxJournal(None, name, "k"), piece=piece, **opts)
    assert _same(whole, pieces)
    # The offsets matter: pieces that all start from index 0 are seeded alike and come out differently.
    naive = [attack(model, x[s:s + piece], y[s:s + piece], **opts) for s in range(0, 6, piece)]
    assert not torch.equal(torch.cat([r.images for r in naive]), whole.images)


def test_an_interrupted_attack_resumes_from_its_journal(tmp_path):
    x = dark_images(7, c=1, size=8, seed=2)
    y = torch.zeros(7, dtype=torch.long)
    opts = dict(population=12, max_iter=6, seed=0)
    model = BrightPixel(threshold=0.9)
    whole = one_pixel_attack(model, x, y, **opts)
    calls: list[int] = []

    def killed_on_third_piece(*args, index_offset, **kw):
        calls.append(index_offset)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill between pieces: the two finished pieces are on disk
        return one_pixel_attack(*args, index_offset=index_offset, **kw)

    key = fingerprint(attack="one-pixel", options=opts, images=x, labels=y)
    with pytest.raises(KeyboardInterrupt):
        attack_in_pieces(killed_on_third_piece, model, x, y, BlackBoxJournal(tmp_path, "one-pixel", key), piece=2,
                         **opts)
    assert journal_path(tmp_path, "one-pixel").exists()

    calls.clear()
    journal = BlackBoxJournal(tmp_path, "one-pixel", key)
    assert journal.resumed == 4 and journal.discarded is None
    res = attack_in_pieces(lambda *a, index_offset, **kw: calls.append(index_offset) or one_pixel_attack(
        *a, index_offset=index_offset, **kw), model, x, y, journal, piece=2, **opts)
    assert calls == [4, 6]  # only the images not yet attacked
    assert _same(res, whole)
    assert torch.equal(res.extra["generations_run"], whole.extra["generations_run"])
    assert res.extra["population"] == 12

    # Other settings, images or weights: the journal is not used.
    other = BlackBoxJournal(tmp_path, "one-pixel", fingerprint(attack="one-pixel", options={**opts, "seed": 1},
                                                                images=x, labels=y))
    assert other.count == 0 and "other settings" in other.discarded
    # A damaged journal (a disk that filled, a copy cut short) is set aside, not trusted.
    journal_path(tmp_path, "one-pixel").write_bytes(b"PK\x03\x04 cut short")
    broken = BlackBoxJournal(tmp_path, "one-pixel", key)
    assert broken.count == 0 and "could not be read" in broken.discarded


def test_fingerprint_tells_bytes_shapes_and_settings_apart():
    a = np.arange(6, dtype=np.float32)
    base = fingerprint(images=a, options={"seed": 0})
    assert base == fingerprint(options={"seed": 0}, images=a.copy())
    assert base != fingerprint(images=a.reshape(2, 3), options={"seed": 0})
    assert base != fingerprint(images=a.astype(np.float64), options={"seed": 0})
    b = a.copy()
    b[3] += 1e-3
    assert base != fingerprint(images=b, options={"seed": 0})
    assert base != fingerprint(images=a, options={"seed": 1})
