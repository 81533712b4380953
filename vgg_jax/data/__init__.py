"""The data wing: image sources, decoding and the host's preprocessing, fed through Grain, and
the device's share of the paper's preprocessing.

input_pipeline  a config's data.source -> sharded, resumable uint8 batches (the one entry point)
decode          image bytes -> uint8 RGB pixels (libjpeg-turbo, Pillow), with the pixel limit
transforms      the paper's rescale and crop windows on numpy images
sources         random-access sources (in-memory arrays, encoded bytes, files) and skipped files
folders         folder:PATH datasets, a sub-folder per class
imagenet        imagenet:PATH, ILSVRC-2012 as downloaded (train folders, flat validation folder)
digits          scikit-learn's handwritten digits (offline); synthetic: class patterns from numpy
pipeline        Grain datasets: train, evaluation and whole-image streams, by index arithmetic
tfds            tensorflow-datasets TFRecords through tf.data (the optional `tfds` extra), with
                preprocessing (tf.image ops) and lazy_tensorflow (TF imported at first use)
augmentation    the device's share: flip, colour shift and normalisation inside the jitted steps

It imports the core alone of vgg_jax (class names, normalisation): never weights, training or
evaluation code; TensorFlow only on the tfds path.
"""
