"""What careless input gets: one clear error or a warning naming the problem, never silently wrong output."""
from pathlib import Path

import numpy as np
import pytest
import torch

import zegseg
from zegseg.engine.setup_config import load_config
from zegseg.modeling.vocabulary import VocabularyError, check_vocabulary, parse_vocabulary

from .helpers import TINY_INFERENCE_OPTS


@pytest.fixture
def tiny_cfg(tiny_clip_path, tmp_path):
    def make(*opts):
        extra = ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.CLIP.EMBED_CACHE_DIR", str(tmp_path / "cache")]
        return load_config("configs/toy/zegformer.yaml", TINY_INFERENCE_OPTS + extra + list(opts))

    return make


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------ item 6: vocabulary types
def test_a_single_string_is_read_like_the_demo_option_never_split_into_letters(tiny_cfg):
    torch.manual_seed(0)
    predictor = zegseg.Predictor(tiny_cfg(), vocabulary="sky")
    assert predictor.vocabulary == ["sky"]
    assert predictor.set_vocabulary("sky; tv, monitor").vocabulary == ["sky", "tv, monitor"]
    assert predictor(random_image(32, 40)).vocabulary == ["sky", "tv, monitor"]
    assert predictor.set_vocabulary("cat, dog").vocabulary == ["cat", "dog"]  # no ";": "," separates classes
    # the unseen classes may be one string too, read the same way
    predictor.set_vocabulary("sky; grass; tree", unseen_classes="grass; tree")
    assert predictor.model.test_unseen_mask.tolist() == [False, True, True]
    built = zegseg.Predictor(tiny_cfg(), vocabulary="sky; grass", unseen_classes="grass")
    assert built.vocabulary == ["sky", "grass"]
    assert built.model.test_unseen_mask.tolist() == [False, True]


def test_the_string_rule_is_the_demo_rule():
    import demo.demo as demo

    for text in ("sky", "cat, dog, sky", "tv,monitor ;sky;", " , ", "tv, monitor;"):
        assert demo.parse_vocabulary(text) == parse_vocabulary(text)
    assert check_vocabulary("tv, monitor;")[0] == ["tv, monitor"]


@pytest.mark.parametrize(
    "names, message",
    [
        (["sky", None], r"class name #1 of the vocabulary is None \(NoneType\), not text"),
        (["sky", 3], r"class name #1 of the vocabulary is 3 \(int\), not text"),
        ([True, "grass"], r"#0 .* is True \(bool\), not text \(YAML reads unquoted yes/no/on/off as booleans"),
        (None, "must be a list of class names or one string, got NoneType"),
        (7, "got int"),
        ({"sky": 1}, "got dict"),
        ({"sky", "grass"}, "is a set: give a list"),
        (b"sky", "is bytes: decode it"),
        ("", "the vocabulary is empty"),
        (" ; ", "the vocabulary is empty"),
        (["sky", " "], "class name #1 of the vocabulary is empty"),
        (["sky", "\t\n"], "class name #1 of the vocabulary is empty"),
    ],
)
def test_bad_vocabularies_raise_one_clear_error(names, message):
    with pytest.raises(VocabularyError, match=message):
        check_vocabulary(names)


def test_non_text_names_are_refused_by_every_entry_point(tiny_cfg):
    torch.manual_seed(0)
    predictor = zegseg.Predictor(tiny_cfg(), vocabulary=["sky", "grass"])
    for bad in (["sky", None], ["sky", 1.5], None):
        with pytest.raises(VocabularyError, match="not text|list of class names"):
            predictor.set_vocabulary(bad)
        with pytest.raises(VocabularyError):
            zegseg.Predictor(tiny_cfg(), vocabulary=bad if bad is not None else 0)
    with pytest.raises(VocabularyError, match="#0 of the unseen classes is None"):
        predictor.set_vocabulary(["sky"], unseen_classes=[None])
    assert predictor.vocabulary == ["sky", "grass"]  # a refused vocabulary leaves the old one in place


def test_a_yaml_vocabulary_with_unquoted_yes_no_is_refused_with_a_hint(tiny_clip_path, tmp_path):
    config = tmp_path / "vocab.yaml"
    base = Path("configs/toy/zegformer.yaml").resolve()
    config.write_text(f"_BASE_: {base}\nTEST:\n  VOCABULARY: [sky, no, grass]\n")
    cfg = load_config(str(config), TINY_INFERENCE_OPTS + ["MODEL.CLIP.NAME", str(tiny_clip_path)])
    assert cfg.TEST.VOCABULARY == ["sky", False, "grass"]
    with pytest.raises(VocabularyError, match=r"#1 of the vocabulary is False \(bool\).*quote them"):
        zegseg.Predictor(cfg)


def test_vocabulary_error_is_a_value_error_exported_at_top_level():
    assert zegseg.VocabularyError is VocabularyError and issubclass(VocabularyError, ValueError)


# ------------------------------------------------------------------------ item 8: case-insensitive duplicates
@pytest.mark.parametrize(
    "names",
    [["sky", "Sky"], ["blue  sky", "Blue sky"], ["tv, monitor", "Monitor, TV"], ["sky; grass; SKY"]],
)
def test_names_clip_reads_as_the_same_text_are_refused(names):
    vocabulary = names[0] if len(names) == 1 else names
    with pytest.raises(VocabularyError, match="differ only in case, spacing or synonym order.*one embedding"):
        check_vocabulary(vocabulary)


def test_case_duplicates_really_get_one_embedding():
    """Why they are refused: CLIP's tokenizer lower-cases and collapses spaces, so the embeddings are equal."""
    from clip import tokenize

    assert torch.equal(tokenize(["a photo of a Sky."]), tokenize(["a photo of a   sky."]))


def test_the_demo_refuses_case_duplicates(tmp_path):
    import demo.demo as demo

    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(random_image(16, 16)).save(image)
    code = demo.main(
        ["--config-file", "configs/toy/zegformer.yaml", "--input", str(image), "--output", str(tmp_path / "out"),
         "--vocabulary", "sky; Sky"]
    )
    assert code == 2
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- item 8: empty images
@pytest.mark.parametrize("shape", [(0, 0, 3), (0, 12, 3), (12, 0, 3)])
def test_an_empty_image_is_a_clear_error(tiny_cfg, shape):
    torch.manual_seed(0)
    predictor = zegseg.Predictor(tiny_cfg(), vocabulary=["sky", "grass"])
    with pytest.raises(ValueError, match=r"the image is empty \(\d+ x \d+ pixels\)"):
        predictor(np.zeros(shape, dtype=np.uint8))
    assert predictor(random_image(1, 1)).labels.shape == (1, 1)  # the smallest image still works


# ------------------------------------------------------------------------------- item 8: names CLIP cuts off
LONG = "a large old wooden table with many carved legs standing in the corner of the room"


def test_long_names_are_cut_with_a_warning_naming_the_class(tiny_clip_path, caplog):
    from zegseg.modeling.clip import load_clip
    from zegseg.modeling.clip.text_encoder import TextEmbedder

    clip_model = load_clip(str(tiny_clip_path))  # context of 16 tokens
    embedder = TextEmbedder(clip_model, ["a photo of a {}."], disk_cache=False)
    names = ["sky", f"{LONG} near the window", f"{LONG} near the door"]
    with caplog.at_level("WARNING", logger="zegseg"):
        emb = embedder(names)
    # the defect: both long names are cut to the same text, so their embeddings are identical ...
    assert torch.equal(emb[1], emb[2])
    # ... and now each is named, with what CLIP reads, and the pair is named together
    messages = [r.getMessage() for r in caplog.records]
    assert sum("too long for CLIP's 16-token context" in m for m in messages) == 2
    assert any(repr(names[1]) in m and "reads only 'a photo of a a large old wooden" in m for m in messages)
    assert any(f"{names[1]!r} and {names[2]!r} are cut to the same text" in m for m in messages)
    assert not any("'sky'" in m for m in messages)
    # once per name: the same vocabulary again is silent
    caplog.clear()
    with caplog.at_level("WARNING", logger="zegseg"):
        embedder(names)
    assert not caplog.records


def test_which_names_are_cut_follows_clip_tokenize(tiny_clip_path):
    from clip import tokenize

    from zegseg.modeling.clip.text_encoder import truncated_classes

    template = "a photo of a {}."
    # start + "a photo of a" (4) + name + "." + end must fit in 16: 9 name tokens fit, 11 do not
    fits, dot_cut, too_long = ("red " * 9).strip(), ("red " * 10).strip(), ("red " * 11).strip()
    cut, _ = truncated_classes([fits, dot_cut, too_long], [template], context_length=16)
    assert list(cut) == [too_long]  # a cut after the name (only the full stop lost) is not a cut name
    tokenize([template.format(fits)], context_length=16)  # clip.tokenize agrees: fits ...
    for name in (dot_cut, too_long):  # ... and these do not
        with pytest.raises(RuntimeError, match="too long"):
            tokenize([template.format(name)], context_length=16)
    # learned context vectors take positions too
    assert not truncated_classes(["red car"], ["{}."], context_length=16, reserved_tokens=12)[0]
    cut, _ = truncated_classes(["red car"], ["{}."], context_length=16, reserved_tokens=13)
    assert cut == {"red car": ("{}.", "red")}


# --------------------------------------------------------------------- item 8: names the legend cannot draw
@pytest.fixture
def fresh_fonts(monkeypatch):
    """Font choice re-read from the environment (it is cached per process)."""
    from zegseg.utils import visualize

    caches = (visualize._font_files, visualize._font_plan, visualize._warn_undrawable)

    def clear():
        for f in caches:
            f.cache_clear()

    clear()
    yield monkeypatch
    clear()


def _has_glyphs(text, font):
    """Independent of zegseg's font lookup: a character without a glyph renders as the .notdef box, which is
    what a code point no font has (U+10FFFF) renders as."""
    notdef = font.getmask("\U0010ffff")
    return all(
        (font.getmask(c).size, bytes(font.getmask(c))) != (notdef.size, bytes(notdef)) for c in text if c != " "
    )


def test_legend_never_draws_boxes_for_names_no_font_has(fresh_fonts, caplog):
    from zegseg.utils import visualize

    names = ["sky", "猫", "东京 tower", "naïve café, кошка", "🐱 cat"]
    palette = visualize.class_palette(len(names))
    with caplog.at_level("WARNING", logger="zegseg"):
        rows = visualize.legend_entries(names, range(len(names)), [0.2] * 5, palette)
        visualize.add_legend(np.zeros((40, 40, 3), np.uint8), rows)
    texts = [t for t, _ in rows]
    for text in texts:
        drawn, font = visualize._drawable(text, 14)
        assert drawn == text and _has_glyphs(text, font), text
    if not _has_glyphs("猫", visualize._drawable("猫", 14)[1]):  # no CJK font installed (as on the test machine)
        assert texts[1] == "#1 ?  20.0%" and texts[2] == "#2 ? tower  20.0%"
        warned = [r.getMessage() for r in caplog.records if "no legend font can draw" in r.getMessage()]
        assert len(warned) == 2 and "'猫'" in warned[0] and "fonts-noto-cjk" in warned[0]
    assert texts[0] == "sky  20.0%" and texts[3] == "naïve café, кошка  20.0%"  # DejaVu Sans has these
    # a fixed-width (video) panel measures the same labels
    assert visualize.legend_width(names, 14) >= max(visualize._text_width(t, 14) for t in texts)


def test_zegseg_font_supplies_missing_glyphs(fresh_fonts, caplog):
    import importlib.util

    from zegseg.utils import visualize

    name = "ᶁog"  # U+1D81: in STIX, not in DejaVu Sans
    assert visualize.legend_entries([name], [0], [1.0], visualize.class_palette(1))[0][0] == "#0 ?og  100.0%"
    mpl = next(iter(importlib.util.find_spec("matplotlib").submodule_search_locations))
    stix = str(Path(mpl) / "mpl-data" / "fonts" / "ttf" / "STIXGeneral.ttf")  # shipped with matplotlib
    fresh_fonts.setenv("ZEGSEG_FONT", stix)
    visualize._font_files.cache_clear()
    visualize._font_plan.cache_clear()
    caplog.clear()
    with caplog.at_level("WARNING", logger="zegseg"):
        text = visualize.legend_entries([name], [0], [1.0], visualize.class_palette(1))[0][0]
    assert text == "ᶁog  100.0%" and not caplog.records
    drawn, font = visualize._drawable(text, 14)
    assert font.path == stix and _has_glyphs(drawn, font)

    fresh_fonts.setenv("ZEGSEG_FONT", "/nonexistent/font.ttf")
    visualize._font_files.cache_clear()
    with caplog.at_level("WARNING", logger="zegseg"):
        assert visualize._font_files()
    assert any("ZEGSEG_FONT=/nonexistent/font.ttf is not a file: ignored" in r.getMessage() for r in caplog.records)
