#!/usr/bin/env python3
"""FGRPO with a torch policy trained through `dualstream serve`: workers, service, ranks.

    python3 torch_fgrpo.py --serve                       # starts serve itself, FGRPO, 2 ranks, 2 workers
    python3 torch_fgrpo.py --serve --method grpo         # the baseline: the format constraint not enforced
    python3 torch_fgrpo.py --serve --max-async 1         # workers keep within 1 version of the trainer
    python3 torch_fgrpo.py --url http://127.0.0.1:8787   # against a running serve (its config must match: --print-config)

The task (torch_fgrpo_policy.py): answer (a + b) mod m with one token, then END. A second
answer instead of END — a hedge — still counts as right with the lenient accuracy judge, so
plain GRPO learns to hedge and breaks the format constraint "exactly one answer" (channel
`format`, >= --threshold); FGRPO enforces it by dual ascent and keeps learning the sum.

Processes: generation workers (`--workers`) sample completions with the weights of the
checkpoint the trainer publishes and stream them to /ingest with dualstream_client.Producer,
each rollout carrying its token ids and sampling log-probs as binary, and the policy version
it was sampled with. The trainer is `--ranks` processes (dualstream_client.Trainer, rank r of
world W, each receiving its shard of every batch), whose gradients torch.distributed (gloo,
loopback) sums: each rank's loss is the clipped surrogate summed over its shard and divided
by the whole batch's size, so the sum is the full batch's mean. Each step is checkpointed
(fsynced, renamed) before its ack, and the ack's state names that checkpoint: a restarted
trainer resumes from it and never applies a step twice.

Prints a table (per --report-every steps: accuracy, format rate, λ) and the engine's stale
counts; --json writes everything.
"""
import argparse
import asyncio
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


# --- the engine config


def engine_config(settings):
    """The serve config: `format` a constraint (fgrpo) or a weight-0 objective, i.e. only reported (grpo)."""
    config = {
        "groupSize": settings["group_size"],
        "batchGroups": settings["batch_groups"],
        "maxStaleness": settings["max_staleness"],
        "objectives": [{"channel": "accuracy", "weight": 1}],
    }
    if settings["max_async"] is not None:
        config["maxAsync"] = settings["max_async"]
    if settings["method"] == "fgrpo":
        dual = {"rule": "sgd", "lr": settings["dual_lr"], "init": 0, "max": 10}
        config["constraints"] = [{"channel": "format", "sense": ">=", "threshold": settings["threshold"], "sampleThreshold": 0.5, "dual": dual}]
    else:
        config["objectives"].append({"channel": "format", "weight": 0})
    return config


def endpoints(url):
    """ws:// URLs of /ingest and /batches and the http:// URL of /healthz from a base URL."""
    base = url.rstrip("/")
    for suffix in ("/ingest", "/batches", "/healthz"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    http = "http" + base[2:] if base.startswith("ws") else base
    ws = "ws" + http[4:]
    return {"ingest": ws + "/ingest", "batches": ws + "/batches", "healthz": http + "/healthz"}


def health(url):
    with urllib.request.urlopen(endpoints(url)["healthz"], timeout=10) as response:
        return json.load(response)


# --- a generation worker


async def worker(settings, index):
    import torch

    from dualstream_client import Producer, Rejected
    from torch_fgrpo_policy import Policy, Task, encode_payload, load

    torch.set_num_threads(1)
    task = Task(settings["modulus"])
    policy = Policy(settings["modulus"], settings["hidden"], settings["end_bias"])
    generator = torch.Generator().manual_seed(settings["seed"] * 1009 + index)
    rng = random.Random(settings["seed"] * 7919 + index)
    prompts = task.prompts()
    weights = os.path.join(settings["run_dir"], "policy.pt")
    stats_path = os.path.join(settings["run_dir"], f"worker-{index}.json")
    stats = {"worker": index, "rollouts": 0, "groups": 0, "syncs": 0, "refused": 0, "refusedStale": 0, "reasons": {}, "versionLag": 0}
    if os.path.exists(stats_path):  # a resumed run counts on
        with open(stats_path) as f:
            stats.update(json.load(f))
    # ids unique across restarts of a run: the engine would take a reused id for a resend
    nonce = os.urandom(4).hex()
    version = -1
    G = settings["group_size"]
    K = settings["max_async"]

    def sync():
        nonlocal version
        checkpoint = load(weights)
        policy.load_state_dict(checkpoint["policy"])
        version = checkpoint["version"]
        stats["syncs"] += 1

    while not os.path.exists(weights):  # the trainer's rank 0 publishes version 0 (or its resumed one) first
        await asyncio.sleep(0.05)
    sync()
    since_sync = 0
    sent = 0
    async with Producer(endpoints(settings["url"])["ingest"], settings["producer_token"]) as producer:
        full_credit = 0  # the largest credit seen: what the engine grants while the trainer keeps up

        while True:
            # sample just in time: not while the engine throttles producers (its credit shrinks
            # while the trainer has batches waiting), or the rollouts would age before they are read
            full_credit = max(full_credit, producer.credit or 0)
            await producer.wait_for_credit(full_credit)
            if K is not None:
                # maxAsync: the engine refuses rollouts sampled below T - K. Catch up before generating
                # while at T - K already, not only below it: rollouts still on their way when the
                # trainer steps again would be refused
                floor = producer.min_policy_version
                if floor is not None and version <= floor:
                    sync()
            elif since_sync >= settings["sync_every"]:
                sync()  # lazily, every --sync-every groups
                since_sync = 0
            chosen = [rng.choice(prompts) for _ in range(settings["send_groups"])]
            a = torch.tensor([p[0] for p in chosen for _ in range(G)])
            b = torch.tensor([p[1] for p in chosen for _ in range(G)])
            first, second, logp = policy.sample(a, b, generator)
            rollouts = []
            for i in range(len(a)):
                ai, bi, fi, si = int(a[i]), int(b[i]), int(first[i]), int(second[i])
                group = sent + i // G
                rollouts.append(
                    {
                        "id": f"w{index}-{nonce}-{sent * G + i}",
                        "promptId": f"w{index}-{nonce}-g{group}",
                        "policyVersion": version,
                        "rewards": task.judge(ai, bi, fi, si),
                        "payload": encode_payload(ai, bi, fi, si, logp[i].tolist(), version),
                    }
                )
            sent += len(chosen)
            since_sync += len(chosen)
            trainer_version = producer.trainer_version
            if trainer_version is not None:
                stats["versionLag"] = max(stats["versionLag"], trainer_version - version)
            try:
                await producer.send(rollouts)
            except Rejected as error:
                stats["refused"] += len(error.errors)
                for item in error.errors:
                    reason = item.reason.split(":")[0]
                    stats["reasons"][reason] = stats["reasons"].get(reason, 0) + 1
                    if item.field == "policyVersion":
                        stats["refusedStale"] += 1
            stats["rollouts"] += len(rollouts)
            stats["groups"] += len(chosen)
            with open(stats_path + ".tmp", "w") as f:
                json.dump(stats, f)
            os.replace(stats_path + ".tmp", stats_path)


# --- a trainer rank


async def train(settings, rank):
    import torch
    import torch.distributed as dist

    from dualstream_client import Trainer
    from torch_fgrpo_policy import Policy, Task, clipped_surrogate, decode_payloads, load, save_atomic

    torch.set_num_threads(1)
    world = settings["ranks"]
    run_dir = settings["run_dir"]
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{settings['dist_port']}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=120),
        )
    torch.manual_seed(settings["seed"])  # every rank starts from the same weights
    task = Task(settings["modulus"])
    policy = Policy(settings["modulus"], settings["hidden"], settings["end_bias"])
    optimizer = torch.optim.Adam(policy.parameters(), lr=settings["lr"])
    parameters = [p for p in policy.parameters()]
    version = 0
    checkpoints = os.path.join(run_dir, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    metrics_path = os.path.join(run_dir, "metrics.jsonl")

    trainer = Trainer(
        endpoints(settings["url"])["batches"],
        settings["trainer_token"],
        state_path=os.path.join(run_dir, f"trainer-rank{rank}.json"),
        rank=rank,
        world_size=world,
    )
    async with trainer:
        own = (trainer.state or {}).get("checkpoint")
        if own is not None:
            # the checkpoint the last acknowledged step named: weights, Adam and version as of trainer.last_step
            checkpoint = load(own)
            policy.load_state_dict(checkpoint["policy"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            version = checkpoint["version"]
        caught_up = trainer.last_step
        if world > 1:
            # a rank that died between its checkpoint and its ack is one step behind the others
            # (ranks step together: no rank can ack step s + 1 before all finished step s). It takes
            # the step from a rank that acknowledged it, and acknowledges it without training again.
            last = torch.tensor([trainer.last_step], dtype=torch.int64)
            steps = [torch.zeros_like(last) for _ in range(world)]
            dist.all_gather(steps, last)
            steps = [int(t) for t in steps]
            caught_up = max(steps)
            if trainer.last_step < caught_up:
                checkpoint = load(os.path.join(checkpoints, f"rank{steps.index(caught_up)}-step{caught_up}.pt"))
                policy.load_state_dict(checkpoint["policy"])
                optimizer.load_state_dict(checkpoint["optimizer"])
                version = checkpoint["version"]
                own = os.path.join(checkpoints, f"rank{rank}-step{caught_up}.pt")
                save_atomic(checkpoint, own)
        for name in os.listdir(checkpoints):  # leftovers of a crash: only the current checkpoint is kept
            if name.startswith(f"rank{rank}-") and os.path.join(checkpoints, name) != own:
                os.unlink(os.path.join(checkpoints, name))
        if rank == 0:
            save_atomic({"version": version, "policy": policy.state_dict()}, os.path.join(run_dir, "policy.pt"))
        if caught_up >= settings["steps"]:
            return
        started = time.monotonic()
        async for batch in trainer:
            if batch.step <= caught_up:
                await batch.ack(policy_version=version, state={"checkpoint": own})
                continue
            payloads = [r["payload"] for r in batch.rollouts]
            a, b, first, second, old_logp = decode_payloads(payloads)
            advantages = torch.as_tensor(batch.advantages, dtype=torch.float32)
            optimizer.zero_grad()
            if len(payloads) > 0:
                new_logp = policy.log_probs(a, b, first, second)
                # summed over this shard, divided by the whole batch: the ranks' sum is the batch mean
                loss = clipped_surrogate(new_logp, old_logp, advantages, settings["clip"]).sum() / batch.batch_size
                loss.backward()
                ratio = torch.exp(new_logp.detach() - old_logp)
                clipped = float(((ratio - 1).abs() > settings["clip"]).float().sum())
            else:
                clipped = 0.0
            judged = [task.judge(int(a[i]), int(b[i]), int(first[i]), int(second[i])) for i in range(len(payloads))]
            versions = [p["version"] for p in payloads]
            figures = torch.tensor(
                [
                    sum(j["accuracy"] for j in judged),
                    sum(j["format"] for j in judged),
                    sum(j["accuracy"] * j["format"] for j in judged),
                    clipped,
                    sum(version - v for v in versions),
                    float(len(payloads)),
                ]
            )
            # one all-reduce per step: the gradients and the batch's figures, flattened together
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
            flat = torch.cat([g.reshape(-1) for g in grads] + [figures])
            if world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p, g in zip(parameters, grads):
                p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
                offset += g.numel()
            accuracy, fmt, strict, clipped, lag, n = flat[offset:].tolist()
            optimizer.step()
            version = batch.step
            path = os.path.join(checkpoints, f"rank{rank}-step{batch.step}.pt")
            save_atomic({"version": version, "step": batch.step, "policy": policy.state_dict(), "optimizer": optimizer.state_dict()}, path)
            if rank == 0:
                # the workers' weights: published before the ack announces the version to them
                save_atomic({"version": version, "policy": policy.state_dict()}, os.path.join(run_dir, "policy.pt"))
                record = {
                    "step": batch.step,
                    "accuracy": accuracy / n,
                    "format": fmt / n,
                    "strict": strict / n,
                    "lambda": (batch.lambda_ or {}).get("format"),
                    "engineFormat": (batch.constraints or {}).get("format", {}).get("mean"),
                    "clipFraction": clipped / (2 * n),
                    "versionLag": lag / n,
                    "rollouts": int(n),
                    "seconds": time.monotonic() - started,
                }
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if batch.step == settings["crash_after_checkpoint"] and rank == world - 1:
                os._exit(3)  # fault injection: checkpointed, not acknowledged (the run is resumed with --run-dir)
            await batch.ack(policy_version=version, state={"checkpoint": path})
            if own is not None and os.path.exists(own):
                os.unlink(own)
            own = path
            if batch.step >= settings["steps"]:
                break
    if world > 1:
        dist.destroy_process_group()


# --- the orchestrator


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Serve:
    """`node bin/dualstream.js serve` on a free port, its data in the run folder (a second run with --run-dir resumes it)."""

    def __init__(self, run_dir, config_path, settings):
        self.log_path = os.path.join(run_dir, "serve.log")
        self.log = open(self.log_path, "w")
        rollouts_per_batch = settings["group_size"] * settings["batch_groups"]
        command = [
            settings["node"],
            os.path.join(REPO, "bin", "dualstream.js"),
            "serve",
            "--config",
            config_path,
            "--data",
            os.path.join(run_dir, "data"),
            "--port",
            "0",
            # a short queue of batches: producers pause while the trainer has a few steps to do,
            # so rollouts are trained on soon after they are sampled
            "--max-outbox",
            str(settings["max_outbox"]),
            "--credit",
            str(2 * rollouts_per_batch),
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        listening = threading.Event()
        self.url = None

        def read():
            for line in self.process.stdout:
                self.log.write(line)
                self.log.flush()
                if self.url is None and "listening on " in line:
                    self.url = line.split("listening on ")[1].split()[0]
                    listening.set()
            listening.set()

        threading.Thread(target=read, daemon=True).start()
        if not listening.wait(60) or self.url is None:
            self.stop()
            sys.exit(f"torch_fgrpo: serve did not start; its output ({self.log_path}):\n{open(self.log_path).read()}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def windows(records, every):
    """Means over consecutive windows of `every` steps."""
    out = []
    for start in range(0, len(records), every):
        chunk = records[start : start + every]
        mean = lambda key: sum(r[key] for r in chunk) / len(chunk)  # noqa: E731
        out.append(
            {
                "steps": [chunk[0]["step"], chunk[-1]["step"]],
                "accuracy": mean("accuracy"),
                "format": mean("format"),
                "strict": mean("strict"),
                "lambda": chunk[-1]["lambda"],
                "clipFraction": mean("clipFraction"),
                "versionLag": mean("versionLag"),
            }
        )
    return out


def print_table(summary):
    settings = summary["settings"]
    print(
        f"{settings['method']}: {settings['steps']} steps of {settings['group_size']}×{settings['batch_groups']} rollouts, "
        f"{settings['ranks']} rank{'s' if settings['ranks'] > 1 else ''}, {settings['workers']} worker{'s' if settings['workers'] > 1 else ''}, maxStaleness {settings['max_staleness']}, "
        f"maxAsync {settings['max_async'] if settings['max_async'] is not None else '-'}; "
        + (f"format >= {settings['threshold']} enforced (dual ascent)" if settings["method"] == "fgrpo" else "format only reported")
    )
    print(f"{'steps':>11} | {'accuracy':>8} | {'format':>6} | {'strict':>6} | {'λ format':>8} | {'lag':>5} | {'clipped':>7}")
    for w in summary["windows"]:
        lam = "-" if w["lambda"] is None else f"{w['lambda']:.3f}"
        steps = f"{w['steps'][0]}-{w['steps'][1]}"
        print(f"{steps:>11} | {w['accuracy']:8.3f} | {w['format']:6.3f} | {w['strict']:6.3f} | {lam:>8} | {w['versionLag']:5.2f} | {w['clipFraction']:7.3f}")
    stale = summary["stale"]
    print(
        f"stale: {stale['engineDropped']} rollouts dropped by the engine (maxStaleness), {stale['refused']} refused at ingest (maxAsync); "
        f"{summary['rollouts']['trained']} of {summary['rollouts']['generated']} generated rollouts trained on; "
        f"workers synced {summary['syncs']} times; {summary['seconds']:.1f} s"
    )


def orchestrate(args):
    started = time.monotonic()
    run_dir = args.run_dir or (None if args.print_config else tempfile.mkdtemp(prefix="torch-fgrpo-"))
    settings = {
        "method": args.method,
        "steps": args.steps,
        "group_size": args.group_size,
        "batch_groups": args.batch_groups,
        "workers": args.workers,
        "ranks": args.ranks,
        "max_async": args.max_async,
        "max_staleness": args.max_staleness,
        "sync_every": args.sync_every,
        "send_groups": args.send_groups or max(1, args.batch_groups // (2 * args.workers)),
        "max_outbox": args.max_outbox,
        "modulus": args.modulus,
        "hidden": args.hidden,
        "end_bias": args.end_bias,
        "lr": args.lr,
        "clip": args.clip,
        "threshold": args.threshold,
        "dual_lr": args.dual_lr,
        "seed": args.seed,
        "crash_after_checkpoint": args.crash_after_checkpoint,
        "node": args.node,
        "run_dir": run_dir,
        "dist_port": free_port(),
        "producer_token": os.environ.get("DUALSTREAM_PRODUCER_TOKEN"),
        "trainer_token": os.environ.get("DUALSTREAM_TRAINER_TOKEN"),
    }
    config = engine_config(settings)
    if args.print_config:
        print(json.dumps(config, indent=2))
        return 0
    os.makedirs(run_dir, exist_ok=True)
    config_path = os.path.join(run_dir, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    serve = Serve(run_dir, config_path, settings) if args.serve else None
    settings["url"] = serve.url if serve else args.url
    settings_path = os.path.join(run_dir, "settings.json")
    with open(settings_path, "w") as f:
        json.dump(settings, f, indent=2)

    published = os.path.join(run_dir, "policy.pt")
    if os.path.exists(published):
        os.unlink(published)  # resuming: workers wait for the weights the trainer resumes with
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [HERE, os.environ.get("PYTHONPATH")])), "PYTHONDONTWRITEBYTECODE": "1"}
    child = lambda *role: subprocess.Popen([sys.executable, os.path.abspath(__file__), "--settings", settings_path, *role], env=env)  # noqa: E731
    ranks = [child("--role", "trainer", "--index", str(r)) for r in range(args.ranks)]
    workers = [child("--role", "worker", "--index", str(i)) for i in range(args.workers)]
    failure = None
    try:
        deadline = time.monotonic() + args.timeout
        while any(p.poll() is None for p in ranks):
            failed = [p for p in ranks + workers if p.poll() not in (None, 0)]
            if failed:
                failure = f"a {'trainer rank' if failed[0] in ranks else 'worker'} exited with code {failed[0].returncode}"
                break
            if serve and serve.process.poll() is not None:
                failure = f"serve exited with code {serve.process.returncode} (see {serve.log_path})"
                break
            if time.monotonic() > deadline:
                failure = f"not done after --timeout {args.timeout} s"
                break
            time.sleep(0.1)
        report = health(settings["url"]) if failure is None else None
    finally:
        for p in workers + ranks:
            if p.poll() is None:
                p.terminate()
        for p in workers + ranks:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if serve:
            serve.stop()
    if failure is not None:
        print(f"torch_fgrpo: {failure}; run folder {run_dir}", file=sys.stderr)
        return 1

    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        # a step re-applied after a crash between its record and its ack is recorded twice: the last counts
        by_step = {record["step"]: record for record in map(json.loads, filter(str.strip, f))}
    records = [by_step[step] for step in sorted(by_step)]
    worker_stats = []
    for i in range(args.workers):
        path = os.path.join(run_dir, f"worker-{i}.json")
        if os.path.exists(path):
            with open(path) as f:
                worker_stats.append(json.load(f))
    public = {k: v for k, v in settings.items() if not k.endswith("_token") and k != "dist_port"}
    summary = {
        "settings": public,
        "config": config,
        "steps": records,
        "windows": windows(records, args.report_every),
        "stale": {
            "engineDropped": report["pipeline"]["stale"],
            "refused": sum(w["refusedStale"] for w in worker_stats),
            "maxVersionLag": max((w["versionLag"] for w in worker_stats), default=0),
        },
        "rollouts": {"generated": sum(w["rollouts"] for w in worker_stats), "trained": sum(r["rollouts"] for r in records)},
        "syncs": sum(w["syncs"] for w in worker_stats),
        "workers": worker_stats,
        "health": report,
        "seconds": time.monotonic() - started,
    }
    print_table(summary)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    if not args.run_dir and not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--serve", action="store_true", help="start `node bin/dualstream.js serve` on a free port, its data in the run folder")
    where.add_argument("--url", default="http://127.0.0.1:8787", help="a running serve (tokens from DUALSTREAM_PRODUCER_TOKEN / DUALSTREAM_TRAINER_TOKEN)")
    parser.add_argument("--node", default="node", help="the node that runs serve (with --serve)")
    parser.add_argument("--method", choices=["fgrpo", "grpo"], default="fgrpo")
    parser.add_argument("--steps", type=int, default=100, help="train up to this step")
    parser.add_argument("--group-size", type=int, default=8, help="config groupSize: completions per prompt")
    parser.add_argument("--batch-groups", type=int, default=16, help="config batchGroups: groups per batch (one step)")
    parser.add_argument("--workers", type=int, default=2, help="generation worker processes")
    parser.add_argument("--ranks", type=int, default=2, help="trainer processes (data-parallel ranks, gloo)")
    parser.add_argument("--max-async", type=int, default=None, metavar="K", help="config maxAsync: the engine refuses rollouts sampled below the trainer's version T - K; workers sync once down to T - K")
    parser.add_argument("--max-staleness", type=int, default=2, help="config maxStaleness")
    parser.add_argument("--sync-every", type=int, default=32, metavar="M", help="without --max-async: workers reload the weights every M groups")
    parser.add_argument("--send-groups", type=int, default=0, help="groups per send of a worker (0: batch-groups / 2 workers)")
    parser.add_argument("--max-outbox", type=int, default=4, help="serve --max-outbox (with --serve)")
    parser.add_argument("--modulus", type=int, default=5, help="the task: (a + b) mod this")
    parser.add_argument("--hidden", type=int, default=128, help="the policy MLP's width")
    parser.add_argument("--end-bias", type=float, default=5.0, help="initial END logit bias (the pretrained format habit)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate")
    parser.add_argument("--clip", type=float, default=0.2, help="PPO ratio clip")
    parser.add_argument("--threshold", type=float, default=0.95, help="format >= this (fgrpo)")
    parser.add_argument("--dual-lr", type=float, default=1.0, help="λ's sgd step (fgrpo)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and sampling")
    parser.add_argument("--report-every", type=int, default=10, help="steps per table row")
    parser.add_argument("--json", help="write the summary (settings, per-step figures, windows, stale counts) here")
    parser.add_argument("--run-dir", help="keep the run's files here (config, serve data, checkpoints); default a temp folder, removed")
    parser.add_argument("--keep", action="store_true", help="keep the temp run folder")
    parser.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    parser.add_argument("--print-config", action="store_true", help="print the serve config these flags need, and exit")
    parser.add_argument("--crash-after-checkpoint", type=int, default=0, metavar="STEP", help="fault injection: the last rank exits after checkpointing STEP, before its ack")
    # internal: the child processes
    parser.add_argument("--role", choices=["trainer", "worker"], help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role is not None:
        sys.path.insert(0, HERE)
        with open(args.settings) as f:
            settings = json.load(f)
        run = train(settings, args.index) if args.role == "trainer" else worker(settings, args.index)
        try:
            asyncio.run(run)
        except KeyboardInterrupt:
            pass
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
