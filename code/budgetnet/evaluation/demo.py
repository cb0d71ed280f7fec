"""The web demo: upload any image, or pick one of the test split, and see the top-5 classes.

An upload goes through the data layer's decoder (RGB, bilinear resize to 32x32, as image
folders are read for training) and then through `Ensemble.probs`, the call inference.py labels
the Kaggle pickle with, so the page shows what a submission made with the same checkpoints and
TTA level would answer.
"""

from __future__ import annotations

import itertools

import gradio as gr
import numpy as np
import torch

from budgetnet.data.sources import ImageSet, decode_images, load_split
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
        try:
            image = decode_images([path])
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        probs = self.ensemble.probs(image, tta=self.tta, batch_size=1, device=CPU)[0]
        top = np.argsort(-probs, kind="stable")[:TOP_K]
        return {self.ensemble.classes[i]: float(probs[i]) for i in top}


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
    # image_mode=None hands the uploaded file over untouched (no re-encoding), so the data
    # layer's decoder is the only thing that converts it; examples are stored as lossless PNG.
    image = gr.Image(
        type="filepath", image_mode=None, format="png", label="Image", elem_id=IMAGE_ID
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
