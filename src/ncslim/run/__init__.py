"""Running: what turns a configuration into trained, pruned and measured models on disk.

- :mod:`.train`: the training loop (the hot path: one screen, the method's hooks, no host
  syncs), evaluation, checkpoints (:mod:`.checkpoint`), the device and AMP (:mod:`.device`);
- :mod:`.rundir`: a run folder (claim, resume, the record of its settings) and
  :mod:`.diverged`, runs set aside;
- :mod:`.pipeline`: the stages of ``ncslim run`` (sparsity training, pruning, fine-tuning,
  measuring) and :mod:`.passes` (``--passes N``); :mod:`.sweep` (grids of runs);
- :mod:`.methods`: the sparsity method a configuration asks for; :mod:`.prunerule`: its
  pruning rule applied (the cut, the dry run, the checks before training);
- :mod:`.refit`: ``ncslim finetune`` as one call;
- :mod:`.warmstart` (``--init``), :mod:`.distill` (``--distill``), :mod:`.baselines`
  (Torch-Pruning's BN-scale pruner in the same harness).

Imports every package below it (:mod:`ncslim.util` ... :mod:`ncslim.report`), never
:mod:`ncslim.cli`.
"""
