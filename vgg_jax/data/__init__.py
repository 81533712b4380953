"""The data wing: image sources, decoding and the host's preprocessing, fed through Grain.

decode       image bytes -> uint8 RGB pixels (libjpeg-turbo, Pillow), with the pixel limit
transforms   the paper's rescale and crop windows on numpy images (OpenCV resizing)
sources      random-access sources (in-memory arrays, encoded bytes, files) and skipped files
folders      folder:PATH datasets, a sub-folder per class
imagenet     imagenet:PATH, ILSVRC-2012 as downloaded (train folders, flat validation folder)
pipeline     Grain datasets: train, evaluation and whole-image streams, by index arithmetic
tfds         tensorflow-datasets TFRecords through tf.data (the optional `tfds` extra)

It imports numpy, OpenCV, simplejpeg, Pillow and Grain, and TensorFlow only in `tfds`; never
the model, training or evaluation code.
"""
