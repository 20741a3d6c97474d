"""Timing on a CUDA GPU: the median of device-event times over repeated runs."""
import statistics

import torch


def median_event_ms(fn, repeats):
    """Median milliseconds of fn() over `repeats` runs, each timed by a pair of CUDA events."""
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
