"""Training: one loop for every recipe, and one module per concern beside it.

- loop.py: the loop alone (step, AMP, clipping, hooks, when lines, validations and checkpoints fall);
- recipes/: how a batch becomes a loss; a loss part is named in its recipe's `forward` (base.py:
  the contract, typed `Params`, DDP wrapping and the registry);
- budget.py: the budget in steps, the minutes budget's timing probe and its early stop;
- validation.py: Dice per validation case through the sliding-window core prediction uses;
- state.py: counters, the loss-part window, RNG state, and the checkpoint's fields;
- batches.py, loaders.py: batches to the device, the datasets and loaders;
- optim.py: optimizer, weight-decay groups, LR schedule; losses.py: the configured task loss;
- init.py: warm starts (`--init-from`); teacher.py: a frozen distillation teacher and its reference;
- records.py, progress.py: metrics.jsonl, summary.json, curves.png and the progress bar.

The run folder's files are named in io/run_dir.py; which file a checkpoint field goes to is decided
in io/checkpoint.py.
"""
