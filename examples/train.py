"""A stand-in for a training script, written the way Studio jobs should be:

- a few "epochs", each saving a checkpoint to $STUDIO_CHECKPOINT_DIR;
- on start, resume from the checkpoint if one exists (a rerun after an
  interruption picks up where the last attempt stopped);
- on SIGTERM, save and exit cleanly;
- after each epoch, a line `STUDIO_PROGRESS=0.4` (the fraction done), which
  Studio shows as a progress bar;
- what it produces goes to $STUDIO_OUTPUT_DIR (metrics per epoch under
  results/, the model as model.bin), which Studio uploads at the end of
  every attempt and `studio run` downloads into ./studio-out/JOB/.

Usage: train.py [--epochs N] [--epoch-seconds S] [--fail-with CODE]
"""
import argparse
import json
import os
import random
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--epoch-seconds", type=float, default=0.5)
parser.add_argument("--fail-with", type=int, default=0, help="exit with this code at the end")
args = parser.parse_args()

ckpt_dir = os.environ.get("STUDIO_CHECKPOINT_DIR", "checkpoints")
os.makedirs(ckpt_dir, exist_ok=True)
ckpt = os.path.join(ckpt_dir, "train.json")

out_dir = os.environ.get("STUDIO_OUTPUT_DIR", "outputs")
os.makedirs(os.path.join(out_dir, "results"), exist_ok=True)
with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(vars(args), f, sort_keys=True)

state = {"epoch": 0, "loss": 1.0}
if os.path.exists(ckpt):
    with open(ckpt) as f:
        state = json.load(f)
    print(f"resuming from checkpoint: epoch {state['epoch']}", flush=True)


def save():
    tmp = ckpt + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, ckpt)


def save_model():
    # 4 MiB of "weights", a function of the epoch reached.
    with open(os.path.join(out_dir, "model.bin"), "wb") as f:
        f.write(random.Random(state["epoch"]).randbytes(4 << 20))


def on_term(signum, frame):
    save()
    save_model()
    print(f"SIGTERM: checkpoint saved at epoch {state['epoch']}; exiting", flush=True)
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)

while state["epoch"] < args.epochs:
    time.sleep(args.epoch_seconds)
    state["epoch"] += 1
    state["loss"] = round(state["loss"] * 0.7, 6)
    save()
    with open(os.path.join(out_dir, "results", f"epoch-{state['epoch']:03}.json"), "w") as f:
        json.dump(state, f)
    print(f"epoch {state['epoch']}/{args.epochs} loss {state['loss']}", flush=True)
    # Studio draws this as a progress bar (studio status --watch, studio ui).
    print(f"STUDIO_PROGRESS={state['epoch'] / args.epochs:.3f}", flush=True)

save_model()
print("training done", flush=True)
sys.exit(args.fail_with)
