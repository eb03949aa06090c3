"""Bad inputs to loading and to the model's forward: damaged weight files, incomplete or mistyped saved configs, a
processor saved with the model that lays out the video tokens differently, and placeholders and videos that do not come
together.

Each test saves a tiny model and its processor to `tmp_path` and loads them as a user would, with `AutoModel` and
`AutoProcessor` (`import modeling_vilamp` registers them).
"""

import json
import re

import pytest
import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModel, AutoProcessor

from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration
from vilamp.testing import TINY_SPECIAL_TOKEN_IDS, build_tiny_model, build_tiny_processor

VIDEO_TOKEN_ID = TINY_SPECIAL_TOKEN_IDS["<video>"]
# 48 frames at 8 fps, sampled at 1 fps: 6 frames, 2 of them keyframes pooled to 2x2 -> 4*2 + 4 + 1 = 13 video tokens
VIDEO_NUM_FRAMES = 48
NUM_VIDEO_TOKENS = 13


@pytest.fixture
def saved_model_dir(tmp_path):
    """A tiny model saved with its processor (`keyframe_pooled_size` 2, `<video>` id 508), as `vilamp convert` writes
    them."""
    directory = tmp_path / "vilamp-tiny"
    build_tiny_model().save_pretrained(directory)
    build_tiny_processor().save_pretrained(directory)
    return directory


@pytest.fixture
def video_file(make_video_file):
    return str(make_video_file(VIDEO_NUM_FRAMES))


def edit_json(path, **changes):
    """Rewrites the JSON file `path` with `changes` applied; a change to `...` removes the field."""
    content = json.loads(path.read_text(encoding="utf-8"))
    for name, value in changes.items():
        if value is ...:
            content.pop(name)
        else:
            content[name] = value
    path.write_text(json.dumps(content), encoding="utf-8")


DAMAGES = {
    "garbage": lambda data: b"not safetensors" * 100,
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("model_class", [AutoModel, ViLaMPForConditionalGeneration])
def test_damaged_weights_file_is_named_with_the_fix(saved_model_dir, model_class, damage):
    """A `model.safetensors` with a garbage header, cut short or empty is refused, naming the file and the fix."""
    weights = saved_model_dir / "model.safetensors"
    weights.write_bytes(DAMAGES[damage](weights.read_bytes()))
    message = (
        rf"^{re.escape(str(weights))} cannot be read as safetensors \(Error while deserializing header: .*\): the "
        r"file is damaged or incomplete\. Download the checkpoint again, or .*"
        + re.escape(f"`vilamp convert ORIGINAL_DIR {saved_model_dir} --overwrite`")
    )
    with pytest.raises(SafetensorError, match=message):
        model_class.from_pretrained(saved_model_dir)


def test_damaged_shard_of_a_sharded_checkpoint_is_named(tmp_path):
    """In a checkpoint saved in shards (`model.safetensors.index.json`), only the damaged shard is named."""
    directory = tmp_path / "vilamp-tiny-sharded"
    build_tiny_model().save_pretrained(directory, max_shard_size="100KB")
    build_tiny_processor().save_pretrained(directory)
    shards = sorted(directory.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and (directory / "model.safetensors.index.json").is_file()
    shards[1].write_bytes(shards[1].read_bytes()[:1000])
    with pytest.raises(SafetensorError, match=rf"^{re.escape(str(shards[1]))} cannot be read as safetensors \("):
        AutoModel.from_pretrained(directory)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("text_config", ...),
        ("text_config", None),
        ("vision_config", ...),
        ("video_token_index", ...),
        ("keyframe_pooled_size", ...),
        ("query_embed_dim", ...),
    ],
)
def test_config_without_a_required_field_is_refused(saved_model_dir, field, value):
    """A saved `config.json` without a sub-config or a token-layout field is refused, never filled with 7B defaults."""
    edit_json(saved_model_dir / "config.json", **{field: value})
    message = rf"`config.json` of {saved_model_dir} has no `{field}` \(.*\).*re-convert the checkpoint"
    # the config first: were it to load, the model would build the 7B tower
    with pytest.raises(ValueError, match=message):
        AutoConfig.from_pretrained(saved_model_dir)
    with pytest.raises(ValueError, match=message):
        AutoModel.from_pretrained(saved_model_dir)


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("keyframe_pooled_size", "14", TypeError, r"'keyframe_pooled_size' expected int, got str \(value: '14'\)"),
        ("keyframe_pooled_size", 0, ValueError, r"`keyframe_pooled_size` must be at least 1, got 0"),
        ("query_embed_dim", -16, ValueError, r"`query_embed_dim` must be at least 1, got -16"),
        ("video_token_index", -1, ValueError, r"`video_token_index` must be a token id .* 511, got -1"),
        ("video_token_index", 512, ValueError, r"`video_token_index` must be a token id .* 511, got 512"),
        ("vision_chunk_size", "8", TypeError, r"'vision_chunk_size'"),
        ("dfm_reference_rule", "nearest", TypeError, r"'dfm_reference_rule' expected one of .*nearest"),
    ],
)
def test_mistyped_config_field_is_refused(saved_model_dir, field, value, error, message):
    """A saved `config.json` field of the wrong type or out of range is refused, naming the field, value and fix."""
    edit_json(saved_model_dir / "config.json", **{field: value})
    with pytest.raises(error, match=rf"`config.json` of {saved_model_dir} holds an invalid field \(.*{message}"):
        AutoModel.from_pretrained(saved_model_dir)


@pytest.mark.parametrize("model_class", [AutoModel, ViLaMPForConditionalGeneration])
def test_processor_with_another_keyframe_pooled_size_is_refused(saved_model_dir, model_class):
    """A processor saved with the model whose `keyframe_pooled_size` differs from the config's is refused at loading."""
    edit_json(saved_model_dir / "processor_config.json", keyframe_pooled_size=3)
    with pytest.raises(
        ValueError, match=r"`keyframe_pooled_size` is 3 in `processor_config.json` but 2 in `config.json`"
    ):
        model_class.from_pretrained(saved_model_dir)


def test_config_video_token_index_that_is_not_the_tokenizers_is_refused(saved_model_dir):
    """A `video_token_index` that is not the id the saved tokenizer gives the processor's `<video>` is refused."""
    edit_json(saved_model_dir / "config.json", video_token_index=VIDEO_TOKEN_ID + 1)
    with pytest.raises(
        ValueError,
        match=rf"`video_token` '<video>' has id {VIDEO_TOKEN_ID} in `tokenizer.json` but `video_token_index` is "
        rf"{VIDEO_TOKEN_ID + 1} in `config.json`",
    ):
        AutoModel.from_pretrained(saved_model_dir)


def test_placeholders_without_a_video_are_refused(saved_model_dir, video_file):
    """Prompt ids holding `<video>` placeholders passed without the video are refused by forward and generate."""
    model = AutoModel.from_pretrained(saved_model_dir).eval()
    inputs = AutoProcessor.from_pretrained(saved_model_dir)(text="What moves?", videos=video_file, return_tensors="pt")
    text_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    message = rf"`input_ids` holds {NUM_VIDEO_TOKENS} video placeholders .* but no video was passed"
    with pytest.raises(ValueError, match=message):
        model(**text_inputs)
    with pytest.raises(ValueError, match=message):
        model.generate(**text_inputs, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"`inputs_embeds` holds 13 video placeholders"):
        model(inputs_embeds=model.get_input_embeddings()(inputs["input_ids"]), attention_mask=inputs["attention_mask"])


def test_video_without_placeholders_is_refused(saved_model_dir, video_file):
    """A video passed with prompt ids that hold no `<video>` placeholder is refused, saying none was found."""
    model = AutoModel.from_pretrained(saved_model_dir).eval()
    processor = AutoProcessor.from_pretrained(saved_model_dir)
    inputs = processor(text="What moves?", videos=video_file, return_tensors="pt")
    text_only = processor.tokenizer("What moves in the video?", return_tensors="pt")
    inputs.update(input_ids=text_only["input_ids"], attention_mask=text_only["attention_mask"])
    with pytest.raises(
        ValueError, match=rf"expected {NUM_VIDEO_TOKENS} video tokens .*, found 0 in `input_ids`.* Build the prompt"
    ):
        model(**inputs)


def test_placeholders_of_another_keyframe_pooled_size_are_named(saved_model_dir, tmp_path, video_file):
    """Placeholders laid out by a processor of another `keyframe_pooled_size` are refused, naming that size."""
    model = AutoModel.from_pretrained(saved_model_dir).eval()
    other_processor_dir = tmp_path / "processor-3x3"
    build_tiny_processor().save_pretrained(other_processor_dir)
    edit_json(other_processor_dir / "processor_config.json", keyframe_pooled_size=3)
    inputs = AutoProcessor.from_pretrained(other_processor_dir)(
        text="What moves?", videos=video_file, return_tensors="pt"
    )
    with pytest.raises(
        ValueError,
        match=r"found 23 in `input_ids`.* 23 is the count for `keyframe_pooled_size` = 3: .* "
        r"`config.keyframe_pooled_size` is 2",
    ):
        model(**inputs)


def test_truncated_placeholders_are_refused(saved_model_dir, video_file):
    """A prompt that lost some of its video's placeholders is refused with the counts and how to keep them all."""
    model = AutoModel.from_pretrained(saved_model_dir).eval()
    inputs = AutoProcessor.from_pretrained(saved_model_dir)(text="What moves?", videos=video_file, return_tensors="pt")
    first_placeholder = int((inputs["input_ids"][0] == VIDEO_TOKEN_ID).nonzero()[0])
    keep = torch.ones(inputs["input_ids"].shape[1], dtype=torch.bool)
    keep[first_placeholder] = False
    inputs.update(input_ids=inputs["input_ids"][:, keep], attention_mask=inputs["attention_mask"][:, keep])
    with pytest.raises(
        ValueError, match=rf"expected {NUM_VIDEO_TOKENS} video tokens .*, found {NUM_VIDEO_TOKENS - 1} .* `truncation`"
    ):
        model(**inputs)
