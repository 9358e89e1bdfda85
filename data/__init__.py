"""Frames and scores, shared by the benchmark, the offline jobs and the service (as timm.data is by
timm's train and validate):

    folder.py       a labelled frame folder in the CamVid layout (images/, labels/, splits.json),
                    where it is found, its class names and palette
    streams.py      ordered frame streams: protocol names, splits, SPLIT:CORRUPTION, the frame cache
    corruptions.py  the synthetic shifts (imagecorruptions, imported only when a frame is corrupted,
                    and the protocol's night)
    transforms.py   uint8 HxWx3 arrays to tensors in [0, 1]; a split's frames resized, on a device
    metrics.py      the confusion matrix and the scores reduced from it (mIoU, Dice)

At import it needs only NumPy, Pillow, torch and torchvision: the serving image imports it.
"""
