"""One algorithm's CPU step in its own process, as in training: the median step time (the
upper middle value of an even count) and the fastest over REPS steps after two warm-ups, and
per step the user and system CPU time and the minor page faults (getrusage).

    python step_faults.py SETTING ALGORITHM REPS    (TAG=... labels the printed line)
"""
import os
import resource
import sys
import time

import torch

from domainbed_surgery.bench import step_time
from domainbed_surgery.bench.settings import SETTINGS, make_minibatches

torch.set_num_threads(2)
name, algorithm, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
setting, device = SETTINGS[name], torch.device("cpu")
batches = make_minibatches(setting, device)
alg = step_time.build(algorithm, setting, device)
for _ in range(2):
    alg.update(batches)
before = resource.getrusage(resource.RUSAGE_SELF)
times = []
for _ in range(reps):
    start = time.perf_counter()
    alg.update(batches)
    times.append(time.perf_counter() - start)
after = resource.getrusage(resource.RUSAGE_SELF)
times.sort()
print(f"{name} {algorithm} {os.environ.get('TAG', '')}: median {1e3 * times[len(times) // 2]:.1f} ms "
      f"min {1e3 * times[0]:.1f}; per step: user {1e3 * (after.ru_utime - before.ru_utime) / reps:.0f} ms "
      f"sys {1e3 * (after.ru_stime - before.ru_stime) / reps:.0f} ms "
      f"minflt {(after.ru_minflt - before.ru_minflt) / reps:.0f}")
