"""The web demo: upload any image, or pick one of the test split, and see the top-5 classes.

An upload goes through the data layer's decoder and nothing else (`sources.read_image`: only
the PIL decoders of UPLOAD_FORMATS, any failure one line; RGB, bilinear resize to 32x32, as
image folders are read for training) and then through `Ensemble.probs`, the call inference.py
labels the Kaggle pickle with, so the page shows what a submission made with the same
checkpoints and TTA level would answer.
"""

from __future__ import annotations

import itertools

import gradio as gr
import numpy as np
import torch

from budgetnet.data.sources import UPLOAD_FORMATS, ImageSet, decode_images, load_split
from budgetnet.errors import UserError
from budgetnet.evaluation.ensemble import Ensemble

TOP_K = 5
CPU = torch.device("cpu")  # one image at a time: a GPU would only add transfers
API_NAME = "predict"  # gradio_client: Client(url).predict(image, api_name="/predict")
# Element ids of the input image and of the result, for browsers driven by a test.
IMAGE_ID, LABEL_ID = "image", "top5"


def pick_examples(test: ImageSet, count: int) -> np.ndarray:
    """Indices of `count` test images taken from the classes in turn (the first image of every
    class, then the second, ...), so that a page of examples shows every class."""
    per_class = [np.flatnonzero(test.labels == c) for c in range(len(test.classes))]
    rounds = itertools.zip_longest(*per_class)
    order = [int(i) for i in itertools.chain.from_iterable(rounds) if i is not None]
    return np.asarray(order[:count], dtype=np.int64)


def load_examples(data: str | None, count: int, classes: list[str]) -> ImageSet | None:
    """`count` images of the test split of `data`, or of the data layer's default location
    ($BUDGETNET_DATA, ./data) when `data` is None; there, finding none means no examples.
    Never downloads: the demo starts offline."""
    if count < 1:
        return None
    try:
        test = load_split(data, "test", download=False)
    except UserError:
        if data is not None:
            raise
        return None
    if test.classes != classes:
        raise UserError(
            f"{test.source}: classes {test.classes} differ from the model's {classes}; "
            "pick examples from the data it was trained on with --data"
        )
    index = pick_examples(test, count)
    return test.subset(index, f"{len(index)} examples")


class Classifier:
    """The path of an image file -> the ensemble's top-5 {class: probability}, on the CPU."""

    def __init__(self, ensemble: Ensemble, tta: int) -> None:
        self.ensemble, self.tta = ensemble, tta

    def __call__(self, path: str | None) -> dict[str, float]:
        if path is None:
            raise gr.Error("Upload an image or pick an example first.")
        try:  # an undecodable upload, or a release that gives non-finite probabilities
            image = decode_images([path], UPLOAD_FORMATS)
            probs = self.ensemble.probs(image, tta=self.tta, batch_size=1, device=CPU)[0]
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        top = np.argsort(-probs, kind="stable")[:TOP_K]
        return {self.ensemble.classes[i]: float(probs[i]) for i in top}


def unopened_uploads(image: gr.Image) -> gr.Image:
    """`image`, whose upload reaches the classifier as the file's path, unopened: gradio's own
    preprocessing would first open it with PIL's every plugin (DDS, TIFF, ...), whose errors
    end in a traceback. A pasted or webcam image (a data: URL) is still saved by gradio, as
    PNG. Set on the instance: a gr.Image subclass would make gradio write a .pyi stub beside
    this module at every import."""
    default = image.preprocess

    def preprocess(payload):
        data_url = (getattr(payload, "url", None) or "").startswith("data:")
        if payload is not None and payload.path is not None and not data_url:
            return str(payload.path)
        return default(payload)

    image.preprocess = preprocess
    return image


def build_page(classify: Classifier, examples: ImageSet | None = None) -> gr.Blocks:
    """The page: an image input, the top-5 label output, and the examples under them."""
    ensemble = classify.ensemble
    description = (
        f"Model {ensemble.describe()}: {len(ensemble.classes)} classes, TTA level "
        f"{classify.tta}. Uploads of any size are converted to RGB and resized to 32x32 "
        "pixels, as the training images were."
    )
    if examples is not None:
        description += f" Examples: {examples.source}."
    # The uploaded file is handed over untouched (no re-encoding, not even opened), so the data
    # layer's decoder is the only thing that reads it; examples are stored as lossless PNG.
    image = unopened_uploads(
        gr.Image(type="filepath", image_mode=None, format="png", label="Image", elem_id=IMAGE_ID)
    )
    return gr.Interface(
        fn=classify,
        inputs=image,
        outputs=gr.Label(num_top_classes=TOP_K, label="Top 5", elem_id=LABEL_ID),
        examples=None if examples is None else [[x] for x in examples.images],
        cache_examples=False,
        title="budgetnet",
        description=description,
        flagging_mode="never",
        api_name=API_NAME,
        analytics_enabled=False,  # no calls home: the demo runs offline
    )
