"""Whether a training run diverges: each step's loss against the running median of the steps
before it (`train.divergence_factor`).

A loss above `factor` times the median of the last `WINDOW` steps' losses means the run is
diverging: the weights that gave it are not worth resuming from, even while every number is
still finite (a learning rate far too high first multiplies the loss, and only a few steps
later overflows it). The median, not the mean, so that one earlier spike does not raise the
bar. The default factor is measured on the quickstart config (docs/ROBUSTNESS.md,
`bench/bench_loss_spikes.py`); 0 turns the test off.
"""

import collections
import math
import statistics

WINDOW = 20  # steps in the running median


def step_loss(window_mean, previous_mean, count):
    """The newest step's own value from the running means of a window of `count` steps.

    The detector's loss trackers are means since their last reset (the progress line's
    window): mean_n = (x_1 + ... + x_n) / n, so x_n = n * mean_n - (n - 1) * mean_(n-1).
    """
    return count * float(window_mean) - (count - 1) * float(previous_mean)


class DivergenceMonitor:
    """Judges each step's (finite) loss against the running median of the steps before it.

    Args:
      factor: a loss above `factor` x the median diverges; 0 turns the test off.
      recent: the losses of the steps just before (oldest first), e.g. those recorded with
        the checkpoint a run resumes from; at most the last `WINDOW` are used.
    """

    def __init__(self, factor, recent=()):
        self.factor = float(factor)
        self.recent = collections.deque((float(v) for v in recent), maxlen=WINDOW)

    def judge(self, loss):
        """None when `loss` (finite) is in line with the steps before it, else why not.

        A loss that passes joins the window; a diverged one does not.
        """
        if self.factor and self.recent:
            median = statistics.median(self.recent)
            if median > 0 and loss > self.factor * median:
                return (f"the loss {loss:.4g} is more than train.divergence_factor="
                        f"{self.factor:g} times {median:.4g}, the median of the "
                        f"{len(self.recent)} steps before it")
        if math.isfinite(loss):
            self.recent.append(float(loss))
        return None
