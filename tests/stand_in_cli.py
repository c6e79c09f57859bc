# The tests' stand-in for cli.py: the run's side of the contract in a fraction of a second.
# Everything the runner reads is written with the contract's own code (rundir.layout names,
# sweeps.contract's history, training.json, stop flag and lifeline), so it cannot drift from
# what cli.py does. Options: --x, --peak/--y (a known optimum), --mode ok|error|crash|kill|hang,
# --epochs, --delay, --test_delay, and --data.fold (a CV fold: writes fold_done.json).
# The test that uses it puts the repository on sys.path first (tests/test_offline_runner.py).
import json
import os
import sys
import time
import zipfile
from pathlib import Path

from rundir.layout import CHECKPOINT_DIR, FOLD_DONE, HISTORY_FILE, LAST_CHECKPOINT, RUN_DIR_ENV, TRAINING_FILE
from rundir.records import checkpoint_problem
from sweeps.contract.history import append_history, truncate_history, write_training
from sweeps.contract.lifeline import watch_runner
from sweeps.contract.signals import StopSignal

StopSignal.install()
watch_runner()  # cli.py's contract: stop when the runner is gone
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
run_dir = Path(os.environ[RUN_DIR_ENV])
history = run_dir / HISTORY_FILE
with open(run_dir / "env.json", "w") as f:
    json.dump({"argv": sys.argv, "python": sys.executable, "pid": os.getpid(),
               **{k: os.environ.get(k) for k in ("CUDA_VISIBLE_DEVICES", "WANDB_MODE", "WANDB_PROJECT",
                                                 "XRAY_RUNNER_LIFELINE", "OMP_NUM_THREADS", "XRAY_GPU_SLOT")}}, f)


PAD = b"\0" * 1024 * int(args.get("ckpt_kb", 0))  # --ckpt_kb: checkpoints of that size, and a best one


def save(epoch):  # last.ckpt: a zip, as torch.save writes; "epoch" is the next epoch to train
    (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    tmp = run_dir / CHECKPOINT_DIR / "tmp.ckpt"
    with zipfile.ZipFile(tmp, "w") as z:
        z.writestr("state.json", json.dumps({"epoch": epoch}))
        z.writestr("pad", PAD)
    os.replace(tmp, run_dir / LAST_CHECKPOINT)


def save_best(epoch):  # ModelCheckpoint's best-epoch=NNN.ckpt (the value rises every epoch: the latest)
    for old in (run_dir / CHECKPOINT_DIR).glob("best-*.ckpt"):
        old.unlink()
    with zipfile.ZipFile(run_dir / CHECKPOINT_DIR / f"best-epoch={epoch:03d}.ckpt", "w") as z:
        z.writestr("pad", PAD)


metric = args.get("sweep.metric", "val/score")
x = float(args.get("x", 0.5))
if "peak" in args:  # a known optimum: the score falls with the distance of (x, y) from the peak
    px, py = map(float, args["peak"].split(","))
    x = 1 - (x - px) ** 2 - (float(args["y"]) - py) ** 2
if "data.fold" in args:
    x *= 1 + int(args["data.fold"]) / 10  # folds differ, so that a mean is a mean
mode = args.get("mode", "ok")
epochs, delay = int(args.get("epochs", 3)), float(args.get("delay", 0.02))
start = 0
if "ckpt_path" in args:
    problem = checkpoint_problem(args["ckpt_path"], load=False)
    if problem is None:
        with zipfile.ZipFile(args["ckpt_path"]) as z:
            start = json.loads(z.read("state.json"))["epoch"]
    else:
        print(f"cannot resume from the checkpoint ({problem}): training starts over from epoch 0")
    truncate_history(history, start)
with open(run_dir / "starts.jsonl", "a") as f:
    f.write(json.dumps({"pid": os.getpid(), "epoch": start, "time": time.time()}) + "\n")
if mode == "error":
    print("error: model.lr must be positive, got -1", file=sys.stderr)
    sys.exit(2)
if mode == "crash":
    raise RuntimeError("CUDA out of memory (fake)")
if mode == "kill":
    os.kill(os.getpid(), 9)
write_training(run_dir / TRAINING_FILE, epochs, done=False)
for epoch in range(start, epochs):
    end = time.time() + delay
    while time.time() < end and not StopSignal.requested:
        time.sleep(0.01)
    if StopSignal.requested:
        save(epoch)
        with open(run_dir / "stopped.json", "w") as f:
            json.dump({"by": StopSignal.reason, "epoch": epoch, "time": time.time()}, f)
        sys.exit(0)
    append_history(history, {"epoch": epoch, "step": epoch, metric: x * (1 + epoch) / epochs})
    save(epoch + 1)
    if PAD:
        save_best(epoch)
write_training(run_dir / TRAINING_FILE, epochs, done=True)
time.sleep(float(args.get("test_delay", 0)))  # the test after fit; a stop now does not cut it
with open(run_dir / "test.json", "w") as f:
    json.dump({"stopped_during_test": StopSignal.requested}, f)
if "data.fold" in args:
    (run_dir / FOLD_DONE).write_text(json.dumps({"fold": int(args["data.fold"])}))
while mode == "hang" and not StopSignal.requested:
    time.sleep(0.05)
