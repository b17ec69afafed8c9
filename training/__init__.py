"""The encoder's trainer, kept apart from the library (as open_clip keeps ``open_clip_train``).

``python -m training.train`` fits the sspr encoder's trainable parts (``training.data`` fills
batches with hard negatives, ``training.checkpoint`` makes runs resumable);
``python -m training.fit_lexical`` fits the hybrid's IDF table. Nothing in ``encoder`` imports
this package.
"""
