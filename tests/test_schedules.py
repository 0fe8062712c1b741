"""LR schedule against the reference learning rates of KK and MM (docs/CONVENTIONS.md,
"Reference values")."""

import pytest

from paa_tf import config as config_lib
from paa_tf.training import schedules


@pytest.mark.parametrize("step,expected", [
    (0, 0.003333), (499, 0.003333), (500, 0.01), (59999, 0.01), (60000, 0.001), (80000, 0.0001),
])
def test_kk_constant_warmup_and_steps(step, expected):
    cfg = config_lib.build_config()  # defaults = R50 1x, batch 16
    lr = schedules.from_config(cfg.train)
    assert float(lr(step)) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("step,expected", [(0, 1e-5), (250, 0.005005), (499, 0.009980),
                                           (500, 0.01)])
def test_mm_linear_warmup(step, expected):
    lr = schedules.WarmupStepDecay(0.01, (60000, 80000), 0.1, 500, "linear", 0.001)
    assert float(lr(step)) == pytest.approx(expected, rel=1e-3)


def test_linear_scaling_with_global_batch():
    cfg = config_lib.build_config(overrides="train.batch_size=8,train.warmup_steps=0")
    assert float(schedules.from_config(cfg.train)(0)) == pytest.approx(0.005)
    cfg = config_lib.build_config(overrides="train.batch_size=8,train.scale_lr=false")
    assert float(schedules.from_config(cfg.train)(1000)) == pytest.approx(0.01)
