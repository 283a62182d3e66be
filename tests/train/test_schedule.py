"""hamt.train.schedule: WarmupCosine's values at the corners, the roll-back scale, what resume restores."""

from __future__ import annotations

import pytest

from hamt.train.schedule import WarmupCosine


def test_warmup_then_cosine_to_min_lr():
    s = WarmupCosine(lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=14)
    assert [s(i) for i in range(4)] == pytest.approx([1e-3 * k / 5 for k in (1, 2, 3, 4)])  # linear, below lr
    assert s(4) == pytest.approx(1e-3)  # the peak right after warm-up
    assert s(9) == pytest.approx((1e-3 + 1e-4) / 2)  # half-way through the decay
    assert s(14) == s(100) == pytest.approx(1e-4)
    assert all(s(i) >= s(i + 1) for i in range(4, 20))  # monotone after the peak


def test_scale_multiplies_and_only_scale_is_restored():
    s = WarmupCosine(lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=10, scale=0.5)
    assert s(0) == pytest.approx(5e-4) and s(10) == pytest.approx(5e-5)
    longer = WarmupCosine(lr=1e-3, min_lr=1e-4, warmup_steps=0, max_steps=20)
    longer.load_state_dict(s.state_dict())  # a resumed run may extend max_steps: the shape comes from params
    assert longer.scale == 0.5 and longer.max_steps == 20
