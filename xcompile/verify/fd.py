"""Central finite differences of the self-check (shared by the check and `locate`)."""
from __future__ import annotations

import numpy as np

DIRECTIONS = 2
STEPS = (2e-3, 5e-4)  # relative to the probe's RMS: central differences at the last (smallest); the larger one's
# disagreement with it (a kink crossed within the larger step) adds to the tolerance
FD_SAFETY = 3.0  # x the disagreement between two step sizes (when STEPS has two)


def differences(f: np.ndarray, f0: float) -> dict:
    """`f` [direction, step, sign (+, -)] scores at x +- h v for each h of STEPS, `f0` the score at x: the central
    differences at the smallest step and their own error estimate per direction: |forward - backward difference| at
    that step (large where a kink, ReLU or max, lies within the step; O(h f'') where the score is smooth; at least the
    float32 noise of the central difference), plus FD_SAFETY x the change from a larger step where there is one."""
    h = np.asarray(STEPS)[None, :]
    central = (f[:, :, 0] - f[:, :, 1]) / (2 * h)
    kink = np.abs((f[:, -1, 0] - f0) - (f0 - f[:, -1, 1])) / h[0, -1]
    if len(STEPS) > 1:
        kink = kink + FD_SAFETY * np.abs(central[:, 0] - central[:, -1])
    return {"central": central[:, -1], "own": kink}
