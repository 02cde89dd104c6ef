"""Training: ``torch_loop`` (inputs, augmentation, the bf16 / channels_last loop, prediction) and
``freezing`` (the freeze / unfreeze strategies of paper 4)."""
