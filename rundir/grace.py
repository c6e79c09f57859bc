"""How long a stopping run is given, defined once. Everything derives from the W&B agent:
it sends SIGTERM to the run's main process and SIGKILL 30 s later (wandb/wandb_agent.py,
Agent.KILL_DELAY = 30); SLURM's default KillWait is also 30 s. A run must be gone inside it,
with W&B finished and last.ckpt saved, so each step below leaves time for the ones after."""

AGENT_KILL_AFTER_S = 30.0  # the agent's grace; the offline runner gives its runs the same
FINISH_GRACE_S = 20.0  # a stop after training still lets the test after fit finish this long
CHILD_STOP_S = 20.0  # a stopping run waits this long for its children (DDP ranks, CV folds),
#                      then kills them: 10 s remain for closing the logs and W&B
HARD_STOP_S = 25.0  # a run whose runner died and that has not stopped kills its own group
