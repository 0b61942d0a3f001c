"""Network slimming inside a PyTorch Lightning fit: the sparsity penalty on the BN scaling factors
while ``Trainer.fit`` trains your LightningModule, physical pruning when the fit ends.

    from ncslim.lightning import SlimmingCallback

    slim = SlimmingCallback("tl1", lam="auto", ratio=0.5, mode="proximal", a=1.0)
    trainer = lightning.pytorch.Trainer(max_epochs=30, callbacks=[slim])
    trainer.fit(my_module, train_loader)         # my_module.example_input_array: one batch
    small, report = slim.pruned, slim.report     # fine-tune `small`

Needs ``pip install 'ncslim[lightning]'``. Where the method's hooks run (:mod:`ncslim.sparsity`):

- ``after_backward`` (the subgradient) in ``on_before_optimizer_step``: after gradient
  accumulation, and with ``precision="16-mixed"`` after Lightning's ``scaler.unscale_``, so the
  penalty adds to true gradients, not ones scaled by 65536;
- ``after_step(lr)`` (the proximal step, the controller's count) in ``on_train_batch_end`` of
  a batch that stepped, with the learning rate that step used (read before the step: a
  per-step scheduler has already moved it by ``on_train_batch_end``);
- ``begin_epoch`` / ``end_epoch`` in ``on_train_epoch_start`` / ``on_train_epoch_end``, which
  also logs lambda and the sparsity through ``LightningModule.log`` as ``slim/...``.

The method's state (lambda, the controller's step count and aim) travels in Lightning's
checkpoint, so ``trainer.fit(..., ckpt_path=...)`` continues exactly where the fit stopped.
"""

from .callback import SlimmingCallback

__all__ = ["SlimmingCallback"]
