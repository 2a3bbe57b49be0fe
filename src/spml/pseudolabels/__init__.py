"""Pseudo-labellers and their one quality report.

``vlpl`` (Xing et al.: softmax(CLIP similarity / tau) > theta), ``teacher`` (a finished run's
thresholded predictions, Arroyo), ``ccd`` (Kim and Shim: CLIP probabilities calibrated by the class
bias, mixed with local views' labels) and ``quality`` (positives per image, precision, recall,
label mAP against the true labels, for reports only). Pure numpy: the VLM, the model and the
training loop live in higher layers.
"""
