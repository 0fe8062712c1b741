"""What the benchmarks share: the machine line they print first, repeat timers, real photos."""

import os
import platform
import statistics
import time


def machine_facts(tf=None):
    """'CPU model | cores visible | TensorFlow version' (+ TF's thread settings if `tf`)."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if tf is None:
        import tensorflow as tf
    return (f"{model} | {visible} of {os.cpu_count()} cores visible to this process | "
            f"TensorFlow {tf.__version__}")


def run_times(fn, repeats):
    """Wall-clock seconds of `repeats` calls of `fn()`, in call order."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


# Benchmarks time real photos: a 318-image COCO 2017 excerpt kept beside the repository on the
# development machine (../shared/data/coco_mini), not shipped with it. The tests never need it
# (they generate their data: tests/helpers/sample_data.py); a benchmark without it stops
# and says so.
COCO_PHOTO_GLOBS = ("../shared/data/coco_mini/val2017/*.jpg",
                    "../shared/data/coco_mini/train2017/*.jpg")


def load_photos(count, tf):
    """[(path, uint8 [1, h, w, 3] RGB)] of the first `count` COCO JPEGs of ../shared/data
    (val2017 first), in file-name order; exits with a hint when they are absent."""
    import glob

    paths = [p for pattern in COCO_PHOTO_GLOBS for p in sorted(glob.glob(pattern))][:count]
    if len(paths) < count:
        raise SystemExit(f"found {len(paths)} COCO JPEGs under {COCO_PHOTO_GLOBS}, need {count}; "
                         "run from the project root with ../shared/data present")
    return [(path, tf.io.decode_jpeg(tf.io.read_file(path), channels=3)[None])
            for path in paths]


def alternating_rounds(calls, inputs, rounds, warmup=1, cpu=None):
    """{name: median over rounds of wall seconds per input} of each callable in `calls`.

    Each round calls every one of `calls` (name -> callable(input)) on all `inputs`; the order
    of the callables is reversed every other round, so that load drift and cache effects hit
    all of them alike. `warmup` untimed rounds first (graph loading, kernel selection).
    If `cpu` is a dict, it receives {name: median over rounds of this process's CPU seconds
    per input} (user + system time of all its threads): unlike wall time, it does not grow
    when other processes take the cores, so it is the steadier figure on a shared machine.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            for item in inputs:
                calls[name](item)
    per_round = {name: [] for name in names}
    cpu_round = {name: [] for name in names}
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            for item in inputs:
                calls[name](item)
            cpu_round[name].append((time.process_time() - start_cpu) / len(inputs))
            per_round[name].append((time.perf_counter() - start) / len(inputs))
    if cpu is not None:
        cpu.update({name: statistics.median(times) for name, times in cpu_round.items()})
    return {name: statistics.median(times) for name, times in per_round.items()}
