"""Independent references for dualstream's `pid` and `log` dual rules (test/math/dualSources.test.ts).

- `PIDLagrangian`: OmniSafe's omnisafe/common/pid_lagrange.py (v0.5), its update rule as written
  there (deque of smoothed costs seeded with [0.0], maxlen pid_d_delay; the derivative term
  smooths the episode cost itself), without the logging.
- `safe_rlhf_log_lambda`: safe-rlhf's PPO-Lag multiplier update (safe_rlhf/algorithms/ppo_lag/
  trainer.py): log_lambda is a torch parameter trained by torch.optim.SGD on the loss
  -(episode_cost - threshold) * log_lambda.exp(), then clamped to log_lambda_max.

Reads {"cases": [...]} as JSON on stdin and prints {"lambdas": [[...], ...]}.
"""
import json
import math
import sys
from collections import deque


class PIDLagrangian:
    def __init__(self, pid_kp, pid_ki, pid_kd, pid_d_delay, pid_delta_p_ema_alpha, pid_delta_d_ema_alpha,
                 sum_norm, diff_norm, penalty_max, lagrangian_multiplier_init, cost_limit):
        self._pid_kp = pid_kp
        self._pid_ki = pid_ki
        self._pid_kd = pid_kd
        self._pid_d_delay = pid_d_delay
        self._pid_delta_p_ema_alpha = pid_delta_p_ema_alpha
        self._pid_delta_d_ema_alpha = pid_delta_d_ema_alpha
        self._penalty_max = penalty_max
        self._sum_norm = sum_norm
        self._diff_norm = diff_norm
        self._pid_i = lagrangian_multiplier_init
        self._cost_ds = deque(maxlen=self._pid_d_delay)
        self._cost_ds.append(0.0)
        self._delta_p = 0.0
        self._cost_d = 0.0
        self._cost_limit = cost_limit
        self._cost_penalty = 0.0

    @property
    def cost_penalty(self):
        return self._cost_penalty

    def pid_update(self, ep_cost_avg):
        delta = float(ep_cost_avg - self._cost_limit)
        self._pid_i = max(0.0, self._pid_i + delta * self._pid_ki)
        if self._diff_norm:
            self._pid_i = max(0.0, min(1.0, self._pid_i))
        a_p = self._pid_delta_p_ema_alpha
        self._delta_p *= a_p
        self._delta_p += (1 - a_p) * delta
        a_d = self._pid_delta_d_ema_alpha
        self._cost_d *= a_d
        self._cost_d += (1 - a_d) * float(ep_cost_avg)
        pid_d = max(0.0, self._cost_d - self._cost_ds[0])
        pid_o = self._pid_kp * self._delta_p + self._pid_i + self._pid_kd * pid_d
        self._cost_penalty = max(0.0, pid_o)
        if self._diff_norm:
            self._cost_penalty = min(1.0, self._cost_penalty)
        if not (self._diff_norm or self._sum_norm):
            self._cost_penalty = min(self._cost_penalty, self._penalty_max)
        self._cost_ds.append(self._cost_d)


def omnisafe(case):
    p = case["params"]
    pid = PIDLagrangian(p["kp"], p["ki"], p["kd"], p["delay"], p["alphaP"], p["alphaD"], False, False, p["max"], p["init"], case["limit"])
    out = []
    for cost in case["costs"]:
        pid.pid_update(cost)
        out.append(pid.cost_penalty)
    return out


def safe_rlhf(case):
    import torch

    p = case["params"]
    log_lambda = torch.nn.Parameter(torch.tensor(math.log(p["init"]), dtype=torch.float64))
    log_lambda_max = math.log(p["max"])
    optimizer = torch.optim.SGD([log_lambda], lr=p["lr"])
    out = []
    for cost in case["costs"]:
        episode_cost = torch.tensor(cost, dtype=torch.float64)
        lambda_loss = -(episode_cost - case["limit"]) * log_lambda.exp()
        optimizer.zero_grad()
        lambda_loss.backward()
        optimizer.step()
        with torch.no_grad():
            log_lambda.clamp_(max=log_lambda_max)
        out.append(log_lambda.exp().item())
    return out


if __name__ == "__main__":
    cases = json.load(sys.stdin)["cases"]
    print(json.dumps({"lambdas": [omnisafe(c) if c["kind"] == "omnisafe" else safe_rlhf(c) for c in cases]}))
