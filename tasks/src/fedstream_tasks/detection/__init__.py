"""FedVision's workload: single-stage object detection across camera owners.

``DetectionTask`` (tasks ``fedvision``, ``fedvision-small``, ``fedvision-tiny``) trains the
anchor-free detector of ``model`` on a site's VOC or COCO data (``data``) and reports VOC
mAP@0.5 and COCO mAP@[.5:.95] (``metrics``).
"""

from fedstream_tasks.detection.task import PRESETS, DetectionData, DetectionTask

__all__ = ["PRESETS", "DetectionData", "DetectionTask"]
