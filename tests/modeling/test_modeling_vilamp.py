import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from vilamp.modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration

KEYFRAMES_TWO_OF_FIVE = [False, True, False, False, True]
KEYFRAMES_TWO_OF_THREE = [True, False, True]


def single_video(inputs, video, keyframe_masks):
    """The inputs of one video of a batch built by `video_inputs`, without its padding."""
    frame_start = sum(len(mask) for mask in keyframe_masks[:video])
    frame_end = frame_start + len(keyframe_masks[video])
    keep = inputs["attention_mask"][video].bool()
    return {
        "input_ids": inputs["input_ids"][video][keep][None],
        "attention_mask": inputs["attention_mask"][video][keep][None],
        "pixel_values_videos": inputs["pixel_values_videos"][frame_start:frame_end],
        "keyframe_mask": inputs["keyframe_mask"][frame_start:frame_end],
        "query_embeds": inputs["query_embeds"][video : video + 1],
        "video_frame_counts": inputs["video_frame_counts"][video : video + 1],
    }


def test_forward_returns_logits_and_video_tokens(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits.shape == (*inputs["input_ids"].shape, model.config.text_config.vocab_size)
    assert outputs.video_hidden_states.shape == (4 * 2 + 3 + 1, model.config.text_config.hidden_size)


def test_save_and_load_through_auto_classes(tiny_model, video_inputs, tmp_path):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    model.save_pretrained(tmp_path)

    assert isinstance(AutoConfig.from_pretrained(tmp_path), ViLaMPConfig)
    with torch.no_grad():
        expected = model(**inputs).logits
        for auto_class in (AutoModel, AutoModelForImageTextToText):
            loaded = auto_class.from_pretrained(tmp_path).eval()
            assert isinstance(loaded, ViLaMPForConditionalGeneration)
            torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=0, atol=0)


def test_config_round_trip_keeps_vilamp_fields(tiny_config, tmp_path):
    config = tiny_config(dfm_reference_rule="paper", vision_chunk_size=3, keyframe_pooled_size=3)
    config.save_pretrained(tmp_path)
    loaded = ViLaMPConfig.from_pretrained(tmp_path)
    assert loaded.dfm_reference_rule == "paper"
    assert loaded.vision_chunk_size == 3
    assert loaded.keyframe_pooled_size == 3
    assert loaded.text_config.hidden_size == 32
    assert loaded.vision_config.patch_size == 14


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("query_embed_dim", 0, "`query_embed_dim` must be at least 1"),
        ("keyframe_pooled_size", 0, "`keyframe_pooled_size` must be at least 1"),
        ("vision_chunk_size", 0, "`vision_chunk_size` must be None"),
        ("dfm_reference_rule", "nearest", "dfm_reference_rule"),
    ],
)
def test_config_rejects_invalid_vilamp_fields(tiny_config, field, value, message):
    with pytest.raises(Exception, match=message):
        tiny_config(**{field: value})


def test_generate_with_and_without_cache_match(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with_cache = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    without_cache = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert with_cache.shape[1] == inputs["input_ids"].shape[1] + 6
    torch.testing.assert_close(with_cache, without_cache, rtol=0, atol=0)


def test_generate_first_step_equals_forward(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    generated = model.generate(
        **inputs, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    with torch.no_grad():
        last_logits = model(**inputs).logits[:, -1]
    torch.testing.assert_close(generated.logits[0], last_logits, rtol=0, atol=1e-5)


def test_batch_of_two_videos_equals_each_alone(tiny_model, video_inputs):
    model = tiny_model()
    keyframe_masks = [KEYFRAMES_TWO_OF_FIVE, KEYFRAMES_TWO_OF_THREE]
    inputs = video_inputs(model.config, keyframe_masks, prompt_lengths=[(3, 4), (2, 2)])
    batched = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        batched_video_tokens = model(**inputs).video_hidden_states
    alone_video_tokens = []
    for video in range(2):
        alone = single_video(inputs, video, keyframe_masks)
        generated = model.generate(**alone, max_new_tokens=5, do_sample=False)[0, alone["input_ids"].shape[1] :]
        batched_new_tokens = batched[video, inputs["input_ids"].shape[1] :][: len(generated)]
        torch.testing.assert_close(batched_new_tokens, generated, rtol=0, atol=0)
        with torch.no_grad():
            alone_video_tokens.append(model(**alone).video_hidden_states)
    torch.testing.assert_close(batched_video_tokens, torch.cat(alone_video_tokens), rtol=0, atol=1e-6)


def test_text_only_prompt_in_batch_with_a_video(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_THREE])
    text_only = torch.tensor([[5, 6, 7, 8]])
    width = inputs["input_ids"].shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.nn.functional.pad(text_only, (width - 4, 0))])
    inputs["attention_mask"] = torch.cat(
        [inputs["attention_mask"], torch.nn.functional.pad(torch.ones_like(text_only), (width - 4, 0))]
    )
    batched = model.generate(**inputs, max_new_tokens=4, do_sample=False)[1, width:]
    alone = model.generate(
        input_ids=text_only, attention_mask=torch.ones_like(text_only), max_new_tokens=4, do_sample=False
    )
    alone = alone[0, 4:]
    torch.testing.assert_close(batched[: len(alone)], alone, rtol=0, atol=0)


def test_placeholder_mismatch_error_names_expected_count(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    inputs["input_ids"] = inputs["input_ids"][:, 1:]
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    inputs["input_ids"][0, 5] = 7
    with pytest.raises(ValueError, match=r"expected 12 video tokens \(4\*2 \+ 3 \+ 1\), found 11 in `input_ids`"):
        model(**inputs)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda inputs: inputs.update(keyframe_mask=inputs["keyframe_mask"][:-1]), "`keyframe_mask` has shape"),
        (lambda inputs: inputs.update(query_embeds=inputs["query_embeds"][:, :3]), "`query_embeds` must have shape"),
        (lambda inputs: inputs.update(video_frame_counts=torch.tensor([4])), "`video_frame_counts` \\[4\\]"),
        (lambda inputs: inputs.update(pixel_values_videos=inputs["pixel_values_videos"].float()), "must be uint8"),
        (lambda inputs: inputs.pop("query_embeds"), "needs `keyframe_mask` and `query_embeds`"),
        (
            lambda inputs: inputs.update(pixel_values_videos=inputs["pixel_values_videos"][:, :, :28, :28]),
            "frames are 28x28 but the vision tower takes 56x56",
        ),
    ],
)
def test_inconsistent_video_inputs_fail_with_a_clear_message(tiny_model, video_inputs, change, message):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    change(inputs)
    with pytest.raises((ValueError, TypeError), match=message):
        model(**inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_runs_in_float32_and_bfloat16(tiny_model, video_inputs, dtype):
    model = tiny_model().to(dtype)
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.dtype == dtype
    assert torch.isfinite(logits.float()).all()
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 3


def test_bfloat16_video_tokens_stay_close_to_float32(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with torch.no_grad():
        video_args = (inputs["pixel_values_videos"], inputs["keyframe_mask"], inputs["query_embeds"])
        (reference,) = model.get_video_features(*video_args).pooler_output
        (half,) = model.to(torch.bfloat16).get_video_features(*video_args).pooler_output
    torch.testing.assert_close(half.float(), reference, rtol=0.05, atol=0.05)


def test_loss_with_labels_ignores_masked_positions(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.video_token_id] = -100
    outputs = model(**inputs, labels=labels)
    shifted_logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.shape[-1])
    expected = torch.nn.functional.cross_entropy(shifted_logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(outputs.loss, expected)
    outputs.loss.backward()
    assert model.model.feature_merger.linear_iq.weight.grad is not None
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None


def test_logits_to_keep_returns_only_the_last_positions(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with torch.no_grad():
        every_position = model(**inputs).logits
        last_two = model(**inputs, logits_to_keep=2).logits
    assert last_two.shape[1] == 2
    torch.testing.assert_close(last_two, every_position[:, -2:], rtol=0, atol=1e-6)


def test_inputs_embeds_with_placeholders_equal_input_ids(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with torch.no_grad():
        expected = model(**inputs).logits
        inputs["inputs_embeds"] = model.get_input_embeddings()(inputs.pop("input_ids"))
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("rule", ["original", "paper"])
@pytest.mark.parametrize(
    "keyframe_positions",
    [(0, 1), (8, 9), (0, 9), (4, 5), (2, 7)],
    ids=["at-start-adjacent", "at-end", "first-and-last", "middle-adjacent", "spread"],
)
def test_streamed_encoding_equals_one_piece_for_every_chunk_size(tiny_model, video_inputs, rule, keyframe_positions):
    model = tiny_model(dfm_reference_rule=rule)
    mask = [frame in keyframe_positions for frame in range(10)]
    inputs = video_inputs(model.config, [mask, [True, False, False]])
    video_args = [
        inputs[name] for name in ("pixel_values_videos", "keyframe_mask", "query_embeds", "video_frame_counts")
    ]
    with torch.no_grad():
        model.config.vision_chunk_size = 13
        one_piece = torch.cat(model.get_video_features(*video_args).pooler_output)
        for chunk_size in range(1, 13):
            model.config.vision_chunk_size = chunk_size
            torch.testing.assert_close(
                torch.cat(model.get_video_features(*video_args).pooler_output), one_piece, rtol=0, atol=1e-5
            )


def test_paper_rule_changes_only_the_tokens_of_non_keyframes(tiny_model, video_inputs):
    mask = [False, False, True, False, False, True]
    original = tiny_model(dfm_reference_rule="original")
    paper = tiny_model(dfm_reference_rule="paper")
    inputs = video_inputs(original.config, [mask])
    video_args = [inputs[name] for name in ("pixel_values_videos", "keyframe_mask", "query_embeds")]
    with torch.no_grad():
        # without a query term the weights follow the redundancy term alone, which the rule decides
        for model in (original, paper):
            model.model.feature_merger.linear_q.weight.zero_()
            model.model.feature_merger.linear_q.bias.zero_()
        original_tokens = torch.cat(original.get_video_features(*video_args).pooler_output)
        paper_tokens = torch.cat(paper.get_video_features(*video_args).pooler_output)
    # layout: frames 0, 1 (1 token each), keyframe 2 (4 tokens), frames 3, 4, keyframe 5, newline
    keyframes_and_newline = [2, 3, 4, 5, 8, 9, 10, 11, 12]
    torch.testing.assert_close(
        paper_tokens[keyframes_and_newline], original_tokens[keyframes_and_newline], rtol=0, atol=0
    )
    # frames 0 and 1 are their own reference in the original code and have none in the paper
    assert not torch.allclose(paper_tokens[:2], original_tokens[:2])
    # frames 3 and 4 are compared with frame 0 by the original code and with keyframe 2 by the paper's rule
    assert not torch.allclose(paper_tokens[6:8], original_tokens[6:8])


def test_compiled_vision_tower_gives_the_same_video_tokens(tiny_model, video_inputs):
    eager = tiny_model()
    compiled = tiny_model(compile_vision_tower=True, vision_chunk_size=4)
    inputs = video_inputs(eager.config, [KEYFRAMES_TWO_OF_FIVE, KEYFRAMES_TWO_OF_THREE])
    video_args = [
        inputs[name] for name in ("pixel_values_videos", "keyframe_mask", "query_embeds", "video_frame_counts")
    ]
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.get_video_features(*video_args).pooler_output,
            eager.get_video_features(*video_args).pooler_output,
            rtol=1e-5,
            atol=1e-5,
        )


class PeakTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storage that operations allocate and that are alive at once (CPU has no allocator stats)."""

    def __init__(self):
        super().__init__()
        self.current = self.peak = 0
        self.live = set()

    def _release(self, key, num_bytes):
        self.live.discard(key)
        self.current -= num_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        # views and no-op conversions return storage that existed before: not an allocation
        input_storages = {
            id(value.untyped_storage()) for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)
        }
        for tensor in tree_flatten(output)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            if id(storage) not in self.live and id(storage) not in input_storages:
                self.live.add(id(storage))
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, id(storage), storage.nbytes())
        return output


@pytest.mark.slow
def test_streamed_memory_grows_with_frames_only_by_the_output_tokens(tiny_model, video_inputs):
    model = tiny_model(vision_chunk_size=8)
    hidden_size = model.config.text_config.hidden_size
    peaks_beyond_output = {}
    for num_frames in (64, 1024):
        mask = [frame in (3, num_frames - 5) for frame in range(num_frames)]
        inputs = video_inputs(model.config, [mask])
        tracker = PeakTensorBytes()
        with torch.no_grad(), tracker:
            (video_tokens,) = model.get_video_features(
                inputs["pixel_values_videos"], inputs["keyframe_mask"], inputs["query_embeds"]
            ).pooler_output
        output_bytes = video_tokens.numel() * video_tokens.element_size()
        # the token layout keeps a few int64 entries per frame, as small as the output's own growth allows
        layout_bytes = 3 * 8 * num_frames
        peaks_beyond_output[num_frames] = tracker.peak - output_bytes - layout_bytes
    assert peaks_beyond_output[1024] <= peaks_beyond_output[64] * 1.05, peaks_beyond_output
    # one chunk's activations dominate; 1024 frames encoded at once would need far more
    assert video_tokens.shape == (4 * 2 + 1022 + 1, hidden_size)


def test_a_chunk_cut_short_by_free_memory_is_announced(tiny_model, video_inputs, monkeypatch):
    model = tiny_model(vision_chunk_size=None)
    inputs = video_inputs(model.config, [[frame in (3, 40) for frame in range(48)]])
    video_args = (inputs["pixel_values_videos"], inputs["keyframe_mask"], inputs["query_embeds"])
    logger = logging.get_logger("vilamp.modeling_vilamp.modeling_vilamp")
    with torch.no_grad(), CaptureLogger(logger) as captured:
        model.get_video_features(*video_args)
    assert "Vision chunks of" not in captured.out
    # a device with room for the activations of a few of the tiny model's frames (26 KiB each, twice over)
    monkeypatch.setattr("vilamp.modeling_vilamp.modeling_vilamp.free_memory_bytes", lambda device: 300_000)
    with torch.no_grad(), CaptureLogger(logger) as captured:
        model.get_video_features(*video_args)
    assert "Vision chunks of 5 frames instead of 32" in captured.out
    assert "Set `model.config.vision_chunk_size`" in captured.out


def test_generate_never_emits_the_video_placeholder(tiny_model, video_inputs):
    model = tiny_model()
    inputs = video_inputs(model.config, [KEYFRAMES_TWO_OF_FIVE])
    with torch.no_grad():
        last_hidden_state = model.model(**inputs).last_hidden_state[0, -1]
        # every logit 0 but the placeholder's, which points along the last hidden state: it would be picked first
        model.lm_head.weight.zero_()
        model.lm_head.weight[model.config.video_token_id] = last_hidden_state / last_hidden_state.norm()
    prompt_length = inputs["input_ids"].shape[1]
    unsuppressed = model.generate(**inputs, max_new_tokens=1, do_sample=False, suppress_tokens=[])
    assert unsuppressed[0, prompt_length] == model.config.video_token_id
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False, use_cache=False)
    assert model.config.video_token_id not in generated[0, prompt_length:].tolist()


def test_compile_vision_tower_is_a_load_time_option_never_saved(tiny_model, tmp_path):
    from transformers import AutoModel

    tiny_model().save_pretrained(tmp_path)
    compiled = AutoModel.from_pretrained(tmp_path, compile_vision_tower=True)
    assert compiled.model.vision_tower.encoder._compiled_call_impl is not None
    compiled.save_pretrained(tmp_path / "again")
    assert "compile" not in (tmp_path / "again" / "config.json").read_text()
    assert AutoModel.from_pretrained(tmp_path / "again").model.vision_tower.encoder._compiled_call_impl is None
