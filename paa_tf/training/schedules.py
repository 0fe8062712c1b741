"""Learning-rate schedule of the PAA recipes: warm-up, then step decay (docs/PAA.md,
"Training recipe")."""

import tensorflow as tf
import tf_keras


class WarmupStepDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
    """LR at update index `step` (0-based, the optimizer's `iterations` before the update).

    * warm-up, `step < warmup_steps`: 'constant' uses `base_lr × warmup_factor` (the
      authors' code, factor 1/3); 'linear' ramps from `base_lr × warmup_factor` to
      `base_lr` (mmdetection, factor 0.001): `base_lr × (f + (1 − f)·step/warmup_steps)`;
    * afterwards `base_lr × decay**k`, k = how many of `lr_steps` are <= `step`.
    """

    def __init__(self, base_lr, lr_steps=(), lr_decay=0.1, warmup_steps=0,
                 warmup_method="constant", warmup_factor=1.0 / 3.0):
        super().__init__()
        if warmup_method not in ("constant", "linear"):
            raise ValueError(f"warmup_method must be 'constant' or 'linear', got {warmup_method!r}")
        self.base_lr = float(base_lr)
        self.lr_steps = tuple(int(s) for s in lr_steps)
        self.lr_decay = float(lr_decay)
        self.warmup_steps = int(warmup_steps)
        self.warmup_method = warmup_method
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        decays = tf.add_n([tf.cast(step >= s, tf.float32) for s in self.lr_steps]) \
            if self.lr_steps else 0.0
        lr = self.base_lr * tf.pow(self.lr_decay, decays)
        if self.warmup_steps > 0:
            if self.warmup_method == "constant":
                factor = tf.constant(self.warmup_factor)
            else:
                progress = step / float(self.warmup_steps)
                factor = self.warmup_factor + (1.0 - self.warmup_factor) * progress
            lr = tf.where(step < self.warmup_steps, lr * factor, lr)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr, "lr_steps": self.lr_steps, "lr_decay": self.lr_decay,
            "warmup_steps": self.warmup_steps, "warmup_method": self.warmup_method,
            "warmup_factor": self.warmup_factor,
        }


def from_config(train_config):
    """The schedule of a `TrainConfig`; base LR scaled by batch / reference batch if asked."""
    base_lr = train_config.base_lr
    if train_config.scale_lr:
        base_lr *= train_config.batch_size / train_config.reference_batch
    return WarmupStepDecay(base_lr, train_config.lr_steps, train_config.lr_decay,
                           train_config.warmup_steps, train_config.warmup_method,
                           train_config.warmup_factor)
