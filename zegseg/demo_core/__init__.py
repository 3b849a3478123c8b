"""What the command-line demo (``demo/demo.py``) and the web app (``demo/app.py``) share: reading inputs and
vocabularies, drawing results, writing output files. Both scripts are thin layers over this and
:class:`zegseg.Predictor`."""
from .inputs import Inputs, VocabularyFileError, collect_inputs, read_vocabulary_file
from .outputs import (
    LABELS_SUFFIX,
    OVERLAY_SUFFIX,
    VIDEO_SUFFIX,
    area_rows,
    image_report,
    remove_files,
    render_result,
    result_is_complete,
    write_image_outputs,
    write_json,
    write_png,
)
from .vocabularies import VOCABULARY_PRESETS, preset_vocabulary, vocabulary_text

__all__ = [
    "Inputs",
    "LABELS_SUFFIX",
    "OVERLAY_SUFFIX",
    "VIDEO_SUFFIX",
    "VOCABULARY_PRESETS",
    "VocabularyFileError",
    "area_rows",
    "collect_inputs",
    "image_report",
    "preset_vocabulary",
    "read_vocabulary_file",
    "remove_files",
    "render_result",
    "result_is_complete",
    "vocabulary_text",
    "write_image_outputs",
    "write_json",
    "write_png",
]
