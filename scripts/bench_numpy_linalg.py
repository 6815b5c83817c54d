"""NumPy/LAPACK reference figures for `wgrad bench --filter qr` (issue 16).

Times numpy.linalg.qr (reduced: Q and R, as wgrad returns) on the same f32 uniform(-1, 1)
square inputs and sizes as the bench, median of several runs after a warm-up. Run by hand
(CI runs Rust only):  python scripts/bench_numpy_linalg.py [sizes...]
"""
import sys
import time

import numpy as np


def time_ms(f, min_s=0.5, max_reps=50):
    f()  # warm-up
    t0 = time.perf_counter()
    f()
    once = time.perf_counter() - t0
    reps = max(1, min(max_reps, int(min_s / max(once, 1e-6))))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    sizes = [int(s) for s in sys.argv[1:]] or [256, 512, 1024]
    rng = np.random.default_rng(8)
    print(f"numpy {np.__version__}")
    for n in sizes:
        a = rng.uniform(-1.0, 1.0, (n, n)).astype(np.float32)
        ms = time_ms(lambda: np.linalg.qr(a))
        print(f"qr {n}x{n} f32: {ms:.2f} ms")
        a64 = a.astype(np.float64)
        ms = time_ms(lambda: np.linalg.qr(a64))
        print(f"qr {n}x{n} f64: {ms:.2f} ms")


if __name__ == "__main__":
    main()
