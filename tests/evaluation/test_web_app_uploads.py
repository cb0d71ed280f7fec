"""The web demo's uploads (budgetnet.evaluation.web_app): a file of another format named .png
is refused in one line, by the decoder and by the demo, never opened by PIL's every plugin."""

from __future__ import annotations

import pytest

from budgetnet.data.sources import UPLOAD_FORMATS, decode_images

from refusals import refused
from refusals import saved_as as _saved_as


@pytest.mark.parametrize("kind", ["DDS", "TIFF", "SPIDER"])
def test_other_formats_named_png_are_refused_by_the_demo(tmp_path, release, kind):
    path = tmp_path / "upload.png"
    path.write_bytes(_saved_as(kind))
    refused(lambda: decode_images([str(path)], UPLOAD_FORMATS), "cannot decode image")
    web_app = pytest.importorskip("budgetnet.evaluation.web_app", reason="gradio is not installed")
    from budgetnet.evaluation.ensemble import load_ensemble

    classify = web_app.Classifier(load_ensemble([release], web_app.CPU), tta=1)
    with pytest.raises(web_app.gr.Error) as info:
        classify(str(path))
    assert "cannot decode image" in str(info.value.message) and "\n" not in info.value.message
    # gradio's own preprocessing does not open the upload with PIL's every plugin first
    from gradio.data_classes import ImageData

    component = web_app.unopened_uploads(
        web_app.gr.Image(type="filepath", image_mode=None, format="png")
    )
    assert component.preprocess(ImageData(path=str(path), orig_name="upload.png")) == str(path)
