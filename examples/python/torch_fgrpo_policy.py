"""The torch side of torch_fgrpo.py: the task, the policy, sampling, the loss, checkpoints.

Nothing here talks to the service; `python3 torch_fgrpo_policy.py` runs a self-check.

The task: a prompt is two digits (a, b) in base `modulus`; the answer is (a + b) mod
`modulus`. A completion is two tokens: the answer, then either END (one answer: the format
asked for) or a second digit — a *hedge*, two candidate answers. The accuracy judge counts a
completion right when either answer is (a lenient judge, as answer matchers often are), so
hedging pays: plain GRPO learns it and breaks the format constraint ("exactly one answer");
FGRPO holds the constraint by dual ascent and keeps learning the sum.
"""
import io
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

END = -1  # the second token meaning "no second answer" (stored as index `modulus` in the head)


class Task:
    """Two-digit modular addition with a one-answer format."""

    def __init__(self, modulus=10):
        self.modulus = modulus

    def prompts(self):
        """Every (a, b) prompt, in a fixed order."""
        m = self.modulus
        return [(a, b) for a in range(m) for b in range(m)]

    def answer(self, a, b):
        return (a + b) % self.modulus

    def judge(self, a, b, first, second):
        """Rewards of one completion: accuracy (either answer right) and format (exactly one answer)."""
        right = self.answer(a, b)
        single = second == END
        accuracy = float(first == right or (not single and second == right))
        return {"accuracy": accuracy, "format": float(single)}


class Policy(torch.nn.Module):
    """A small autoregressive MLP over the two completion tokens.

    A shared trunk reads the one-hot prompt; head 1 gives the first answer, head 2 (trunk plus
    the first answer, one-hot) the second token: END or a digit. Head 2's END bias starts at
    `end_bias`, standing in for a pretrained model that mostly follows the format.
    """

    def __init__(self, modulus=10, hidden=128, end_bias=4.0):
        super().__init__()
        self.modulus = modulus
        self.trunk = torch.nn.Sequential(torch.nn.Linear(2 * modulus, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden), torch.nn.ReLU())
        self.first = torch.nn.Linear(hidden, modulus)
        self.second = torch.nn.Linear(hidden + modulus, modulus + 1)
        with torch.no_grad():
            self.second.bias[modulus] = end_bias

    def _encode(self, a, b):
        m = self.modulus
        return torch.cat([F.one_hot(a, m), F.one_hot(b, m)], dim=-1).float()

    def log_probs(self, a, b, first, second):
        """Log-probabilities of the two tokens of each completion: a (n, 2) tensor.

        `second` holds END as -1 (the wire form); the head's END column is `modulus`.
        """
        h = self.trunk(self._encode(a, b))
        lp1 = F.log_softmax(self.first(h), dim=-1).gather(1, first[:, None])[:, 0]
        h2 = torch.cat([h, F.one_hot(first, self.modulus).float()], dim=-1)
        second_index = torch.where(second == END, torch.full_like(second, self.modulus), second)
        lp2 = F.log_softmax(self.second(h2), dim=-1).gather(1, second_index[:, None])[:, 0]
        return torch.stack([lp1, lp2], dim=1)

    @torch.no_grad()
    def sample(self, a, b, generator=None):
        """Samples one completion per prompt: (first, second, log-probs (n, 2)) with END as -1."""
        h = self.trunk(self._encode(a, b))
        first = torch.multinomial(F.softmax(self.first(h), dim=-1), 1, generator=generator)[:, 0]
        h2 = torch.cat([h, F.one_hot(first, self.modulus).float()], dim=-1)
        second = torch.multinomial(F.softmax(self.second(h2), dim=-1), 1, generator=generator)[:, 0]
        second = torch.where(second == self.modulus, torch.full_like(second, END), second)
        return first, second, self.log_probs(a, b, first, second)


def clipped_surrogate(new_logp, old_logp, advantages, clip=0.2):
    """The PPO/GRPO clipped objective, per token, summed over each completion's tokens.

    Returns the per-rollout loss (negated objective), shape (n,): the caller divides the sum
    over its shard by the whole batch's size, so that summing the ranks' gradients gives the
    gradient of the full batch's mean.
    """
    ratio = torch.exp(new_logp - old_logp)
    adv = advantages[:, None]
    objective = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    return -objective.sum(dim=1)


# --- payloads: the completion's tokens and log-probs as binary, readable by any MessagePack peer


def encode_payload(a, b, first, second, logp, version):
    """The rollout payload: token ids (int8) and the sampling log-probs (float32) as bytes."""
    return {
        "prompt": np.array([a, b], dtype=np.int8).tobytes(),
        "tokens": np.array([first, second], dtype=np.int8).tobytes(),
        "logp": np.asarray(logp, dtype=np.float32).tobytes(),
        "version": int(version),
    }


def decode_payloads(payloads):
    """Tensors of a batch's payloads: a, b, first, second (int64) and old log-probs (n, 2)."""
    prompt = np.frombuffer(b"".join(p["prompt"] for p in payloads), dtype=np.int8).reshape(-1, 2).astype(np.int64)
    tokens = np.frombuffer(b"".join(p["tokens"] for p in payloads), dtype=np.int8).reshape(-1, 2).astype(np.int64)
    logp = np.frombuffer(b"".join(p["logp"] for p in payloads), dtype=np.float32).reshape(-1, 2)
    t = torch.from_numpy
    return t(prompt[:, 0].copy()), t(prompt[:, 1].copy()), t(tokens[:, 0].copy()), t(tokens[:, 1].copy()), t(logp.astype(np.float32).copy())


# --- checkpoints: written whole to a temp file, fsynced, then renamed over the old one


def save_atomic(obj, path):
    """torch.save to a temp file in the same folder, fsync, rename: readers see old or new, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path):
    return torch.load(path, map_location="cpu")


def _self_check():
    torch.manual_seed(0)
    task = Task(5)
    policy = Policy(5, hidden=32)
    a = torch.tensor([0, 1, 2, 3, 4])
    b = torch.tensor([4, 3, 2, 1, 0])
    first, second, logp = policy.sample(a, b)
    payloads = [encode_payload(int(a[i]), int(b[i]), int(first[i]), int(second[i]), logp[i].tolist(), 7) for i in range(5)]
    a2, b2, f2, s2, lp2 = decode_payloads(payloads)
    assert torch.equal(a2, a) and torch.equal(b2, b) and torch.equal(f2, first) and torch.equal(s2, second)
    assert torch.allclose(lp2, logp), (lp2, logp)
    assert torch.allclose(policy.log_probs(a, b, first, second), logp)
    assert task.judge(1, 2, 3, END) == {"accuracy": 1.0, "format": 1.0}
    assert task.judge(1, 2, 0, 3) == {"accuracy": 1.0, "format": 0.0}
    assert task.judge(1, 2, 0, 1) == {"accuracy": 0.0, "format": 0.0}
    # at ratio 1 the surrogate's gradient is the policy gradient
    loss = clipped_surrogate(policy.log_probs(a, b, first, second), logp, torch.ones(5)).sum()
    loss.backward()
    print("torch_fgrpo_policy: self-check ok")


if __name__ == "__main__":
    _self_check()
