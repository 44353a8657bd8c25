"""Train the bundled tiny video DiT (rectified flow on moving-shape videos).

    python scripts/train_tiny_dit.py --minutes 150 --threads 1

Resumes from ``--work/state.pt`` when it exists; otherwise ``--init CHECKPOINT``
starts the model and its EMA from a checkpoint's (float16) weights, e.g. the bundled
one, with a fresh optimizer. Every ``--eval-every`` steps it writes
the float16 EMA weights to ``--work/tiny_wan.safetensors`` and scores them with
``lowbit.models.tiny_dit.detector_eval`` (all 48 captions, fixed seeds, 20 Euler steps,
guidance 3, the analytic detectors of ``lowbit.models.shapes``); the configuration,
step, training time and scores go into the file's metadata and a line into
``--work/log.jsonl``.
Copy that file to ``src/lowbit/models/data/`` to ship it.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from lowbit.models.shapes import random_captions, random_videos
from lowbit.models.tiny_dit import MODEL_CONFIG, build, checkpoint_metadata, detector_eval, load_bundled
from lowbit.models.tiny_dit import save as save_checkpoint

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path(".train"))
    p.add_argument("--minutes", type=float, default=60.0, help="stop after this much training time in this run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a machine with a GPU")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=MODEL_CONFIG["num_layers"])
    p.add_argument("--eval-every", type=int, default=2000)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t-mean", type=float, default=0.0, help="mean of the logit-normal timesteps (below 0: nearer the data)")
    p.add_argument("--init", type=Path, default=None, help="checkpoint to start from when --work has no state")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    state_path = args.work / "state.pt"

    config = dict(MODEL_CONFIG, num_layers=args.layers)
    model = build(config).to(args.device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    step, seconds = 0, 0.0
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    if state_path.exists():
        st = torch.load(state_path, weights_only=False, map_location=args.device)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step, seconds = st["step"], st["seconds"]
        rng.bit_generator.state = st["rng"]
        torch.set_rng_state(st["torch_rng"].cpu())
        print(f"resumed at step {step} ({seconds / 60:.1f} min trained)", flush=True)
    elif args.init is not None:
        start = load_bundled(args.init).to(args.device)
        if start.config != config:
            raise SystemExit(f"{args.init} has configuration {start.config}, not {config}")
        model.load_state_dict(start.state_dict())
        ema.load_state_dict(start.state_dict())
        meta = checkpoint_metadata(args.init)
        step, seconds = int(meta.get("step", 0)), 60.0 * float(meta.get("train_minutes", 0.0))
        print(f"initialised from {args.init} (step {step})", flush=True)

    def save() -> None:
        torch.save(
            {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step,
             "seconds": seconds, "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
             "args": {k: str(v) for k, v in vars(args).items()}},
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)

    stop_at = time.monotonic() + args.minutes * 60
    losses = []
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        captions = random_captions(args.batch, rng)
        x0 = random_videos(captions, rng).to(args.device)
        dropped = [None if u < 0.1 else c for c, u in zip(captions, rng.random(args.batch))]
        t = torch.sigmoid(torch.randn(args.batch) + args.t_mean).to(args.device)  # logit-normal timesteps
        noise = torch.randn_like(x0)
        tt = t.view(-1, 1, 1, 1, 1)
        v = model((1 - tt) * x0 + tt * noise, t, model.captions(dropped))
        loss = torch.nn.functional.mse_loss(v, noise - x0)
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 200)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        seconds += time.monotonic() - t0
        losses.append(loss.item())
        if step % 100 == 0:
            print(f"step {step} loss {np.mean(losses[-100:]):.4f} ({seconds / 60:.1f} min)", flush=True)
        if step % args.save_every == 0:
            save()
        if step % args.eval_every == 0:
            # the scores are those of the shipped (float16) weights
            path, meta = args.work / "tiny_wan.safetensors", {"step": step, "train_minutes": round(seconds / 60, 1)}
            save_checkpoint(ema, path, meta)
            scores = detector_eval(load_bundled(path).to(args.device))
            save_checkpoint(ema, path, {**meta, "scores": scores})
            record = {**meta, "loss": float(np.mean(losses[-500:])), **scores}
            print(json.dumps(record), flush=True)
            with open(args.work / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
    save()


if __name__ == "__main__":
    main()
