"""One algorithm's CPU step in its own process, as in training: median and min step time over
REPS steps after two warm-ups, and per step the user and system CPU time and minor page faults
(getrusage). Usage: python step_faults.py SETTING ALGORITHM REPS (TAG= labels the line)."""
import sys, time, resource, torch, os
torch.set_num_threads(2)
from domainbed_surgery.bench import step_time as st
from domainbed_surgery.bench.settings import SETTINGS, make_minibatches
name, algn, reps = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = SETTINGS[name]; dev = torch.device("cpu"); mb = make_minibatches(s, dev)
a = st.build(algn, s, dev)
for _ in range(2): a.update(mb)
r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.perf_counter()
ts = []
for _ in range(reps):
    s0 = time.perf_counter(); a.update(mb); ts.append(time.perf_counter() - s0)
r1 = resource.getrusage(resource.RUSAGE_SELF); t1 = time.perf_counter()
ts.sort()
print(f"{name} {algn} {os.environ.get('TAG','')}: median {1e3*ts[len(ts)//2]:.1f} ms min {1e3*ts[0]:.1f}; per step: user {1e3*(r1.ru_utime-r0.ru_utime)/reps:.0f} ms sys {1e3*(r1.ru_stime-r0.ru_stime)/reps:.0f} ms minflt {(r1.ru_minflt-r0.ru_minflt)/reps:.0f}")
