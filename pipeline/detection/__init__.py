"""Object detection (``task.kind: detection``): small torchvision FCOS / RetinaNet detectors built for
square images in [-1, 1] (:mod:`pipeline.detection.models`), their evaluation
(:mod:`pipeline.detection.evaluate`) and a picture of their detections (:mod:`pipeline.detection.draw`).
COCO mAP itself is :func:`pipeline.metrics.detection.coco_map`.
"""
