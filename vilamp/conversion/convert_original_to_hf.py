"""Converts the original ViLaMP checkpoint (`llava_qwen` layout) into a directory that `AutoModel` and
`AutoProcessor` load.

    python -m vilamp.conversion.convert_original_to_hf --input ViLAMP-llava-qwen --output vilamp-7b

It first checks the arguments, before reading any weight: the paths exist, the output is neither the input nor
inside it nor holding it, and an existing output is replaced only with `--overwrite` and only when an earlier
conversion wrote it (`config.json` of `model_type` "vilamp", `processor_config.json`, and no file a conversion never
writes). Then it reads the original config, the tower configs and the tokenizer, and only then the weights: it builds
`ViLaMPConfig`, renames every model key (`ORIGINAL_TO_HF_KEYS`), splits the keyframe selector's CLIP out for the
processor in open_clip layout (`convert_clip_to_open_clip`), adds the `<video>` token to the tokenizer, checks
everything (`check_converted`) and only then writes the model, the processor and the code for `trust_remote_code`
into a hidden temporary sibling directory renamed into place. SIGINT or SIGTERM while it writes removes the temporary
directory and leaves the output as it was; from the rename on the conversion is complete, and a signal then still exits
128 + the signal with a line saying that the output holds the new conversion (the output checks, the write and the
signals are `atomic_output`'s).

Exit status: 0 on success; 2 for a usage error (a bad flag, a path that does not exist, an output it will not write);
1 when the work fails (an input it cannot convert, weights it refuses to unpickle, a failed conversion check, a stage
of `--verify-reference` beyond its tolerance); 130 on SIGINT, 143 on SIGTERM. Errors are one line on stderr
(`VILAMP_TRACEBACK=1` shows the traceback).
"""

import argparse
import copy
import json
import logging
import os
import pickle
import re
import shutil
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from transformers import AddedToken, AutoTokenizer, CLIPConfig, GenerationConfig, SiglipVisionConfig
from transformers.utils.hub import convert_file_size_to_int

from vilamp import modeling_vilamp, processing
from vilamp.modeling_vilamp import ViLaMPConfig, ViLaMPForConditionalGeneration
from vilamp.processing import KeyframeSelector, ViLaMPProcessor

from .atomic_output import (
    MODEL_CODE_FILES,
    PROCESSOR_CODE_FILES,
    PROCESSOR_CONFIG_NAME,
    ConversionError,
    ConversionUsageError,
    InterruptHandler,
    atomic_directory,
    check_output_dir,
    pause_for_testing,
)
from .verify_reference import check_reference_dir, report_verification

logger = logging.getLogger(__name__)

WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)
EMBEDDING_KEYS = ("model.language_model.embed_tokens.weight", "lm_head.weight")
MODELING_PACKAGE_DIR = Path(modeling_vilamp.__file__).parent
PROCESSING_PACKAGE_DIR = Path(processing.__file__).parent

ORIGINAL_MODEL_TYPE = "llava_qwen"
VIDEO_TOKEN = "<video>"

# Ordered regex swaps from the original checkpoint's keys to this package's; the first match wins. The keyframe
# selector's CLIP (`CLIP_PREFIX`) goes to the processor instead, through `convert_clip_to_open_clip`.
ORIGINAL_TO_HF_KEYS = [
    (r"^model\.vision_tower\.vision_tower\.vision_model\.", "model.vision_tower."),
    (r"^model\.mm_projector\.0\.", "model.multi_modal_projector.linear_1."),
    (r"^model\.mm_projector\.2\.", "model.multi_modal_projector.linear_2."),
    (r"^model\.composer_projector\.", "model.feature_merger."),
    (r"^model\.image_newline$", "model.image_newline"),
    (r"^model\.(embed_tokens|layers|norm)\.", r"model.language_model.\1."),
    (r"^lm_head\.weight$", "lm_head.weight"),
]

# Original keys left out on purpose: the original reads SigLIP's encoder output and never applies `post_layernorm`.
UNUSED_ORIGINAL_KEYS = [r"^model\.vision_tower\.vision_tower\.vision_model\.post_layernorm\."]

# Original config fields and the ViLaMPConfig fields they become.
ORIGINAL_TO_HF_CONFIG = {"composer_proj_dim": "query_embed_dim"}
# Original config fields of the keyframe selection and the ViLaMPProcessor settings they become (the processor runs it).
ORIGINAL_TO_PROCESSOR_SETTINGS = {
    "max_frame_num": "num_keyframes",
    "f2t_thrd": "keyframe_relevance_threshold",
    "f2f_thrd": "keyframe_similarity_threshold",
}

# Qwen2 fields of the original config, copied into `text_config`.
QWEN2_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "tie_word_embeddings",
    "use_sliding_window",
    "sliding_window",
    "max_window_layers",
    "attention_dropout",
    "initializer_range",
    "bos_token_id",
    "eos_token_id",
)

# The original's forward path that this package implements; another value would run code it does not have.
SUPPORTED_ORIGINAL_SETTINGS = {
    "mm_projector_type": "mlp2x_gelu",
    "mm_spatial_pool_mode": "bilinear",
    "composer_type": "sig_pooling",
    "frame_selector_type": "SeqFrameSelector",
    "activate_frame_selector": True,
    "activate_pre_fusion": False,
}

# Configurations of the towers the released checkpoint names, used when their config.json cannot be found.
KNOWN_VISION_TOWERS = {
    "siglip-so400m-patch14-384": {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
    },
}
KNOWN_CLIP_MODELS = {
    "clip-vit-b-32": {
        "projection_dim": 512,
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "vocab_size": 49408,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
        },
    },
}
# Other spellings of the known names (the sentence-transformers copy of CLIP is `clip-ViT-B-32/0_CLIPModel`).
KNOWN_NAME_ALIASES = {"clip-vit-base-patch32": "clip-vit-b-32"}

AUTO_MAP = {
    "AutoConfig": "configuration_vilamp.ViLaMPConfig",
    "AutoModel": "modeling_vilamp.ViLaMPForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_vilamp.ViLaMPForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "processing_vilamp.ViLaMPProcessor"}

# The help of the two directory arguments, however a command line names them.
INPUT_HELP = "the original checkpoint directory (llava_qwen)"
OUTPUT_HELP = "the directory to write: missing or empty, or an earlier conversion's output with --overwrite"

# A directory holding one of these sets of files has a tokenizer to load.
TOKENIZER_FILE_SETS = (("tokenizer.json",), ("vocab.json", "merges.txt"))
# A pickle global that torch's `weights_only` loader refuses, as its message names it.
REFUSED_GLOBAL_PATTERN = re.compile(r"GLOBAL ([\w.]+)")
# What reading the inputs raises besides `ConversionError`: files that are not what they should be (unreadable JSON,
# damaged safetensors, a config field of the wrong type); the command line reports them in one line with exit 1.
INPUT_ERRORS = (ValueError, TypeError, OSError, SafetensorError, StrictDataclassError)


def read_json(path: Path) -> dict:
    """Reads a JSON object of the inputs, naming the file when it holds none."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConversionError(
            f"{path} is not valid JSON ({error}); restore the file from the original checkpoint."
        ) from None
    if not isinstance(content, dict):
        raise ConversionError(f"{path} holds no JSON object; restore the file from the original checkpoint.")
    return content


def read_original_config(checkpoint_dir: Path) -> dict:
    """Reads the original `config.json`, checking that it is a ViLaMP (`llava_qwen`) checkpoint on the path implemented here."""
    config_file = checkpoint_dir / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"No config.json in {checkpoint_dir}; pass the original ViLaMP checkpoint directory.")
    original_config = read_json(config_file)
    model_type = original_config.get("model_type")
    if model_type != ORIGINAL_MODEL_TYPE:
        raise ConversionError(
            f"{config_file} has `model_type` {model_type!r}, but the original ViLaMP checkpoint has "
            f"{ORIGINAL_MODEL_TYPE!r}; pass that checkpoint (a converted one needs no conversion)."
        )
    unsupported = {
        name: original_config.get(name)
        for name, value in SUPPORTED_ORIGINAL_SETTINGS.items()
        if original_config.get(name) != value
    }
    if unsupported:
        raise ConversionError(
            f"{config_file} selects original code paths this package does not implement: {unsupported}; "
            f"the released ViLaMP uses {SUPPORTED_ORIGINAL_SETTINGS}."
        )
    return original_config


def find_weight_files(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors or `.bin`, one file or the shards its index lists (all present)."""
    for index_name, single_name in WEIGHT_FILES:
        index_file, single_file = checkpoint_dir / index_name, checkpoint_dir / single_name
        if index_file.is_file():
            weight_map = read_json(index_file).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError(
                    f"{index_file} has no `weight_map`; restore the file from the original checkpoint."
                )
            shard_names = sorted(set(weight_map.values()))
            missing = [name for name in shard_names if not (checkpoint_dir / name).is_file()]
            if missing:
                raise ConversionError(f"{index_file.name} lists shards missing from {checkpoint_dir}: {missing}.")
            return [checkpoint_dir / name for name in shard_names]
        if single_file.is_file():
            return [single_file]
    names = [name for pair in WEIGHT_FILES for name in pair]
    raise ConversionError(f"No weights in {checkpoint_dir}: expected one of {names}.")


class OriginalStateDict(dict):
    """The original checkpoint's tensors by key; a key it lacks is a `ConversionError` naming the key."""

    def __missing__(self, key: str):
        raise ConversionError(f"The checkpoint has no tensor `{key}`; pass the complete original ViLaMP checkpoint.")


def load_original_state_dict(weight_files: list[Path]) -> OriginalStateDict:
    """Loads every tensor of the weight files that `find_weight_files` lists."""
    return OriginalStateDict((key, tensor) for path in weight_files for key, tensor in load_weight_file(path).items())


def load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    """Reads one weight file; checkpoints are data, so a `.bin` is read only with `weights_only=True`."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as error:
            raise ConversionError(f"Cannot read {path} ({error}); the file is damaged: copy it again.") from None
    try:
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConversionError(refused_pickle_message(path, str(error))) from None
    except Exception as error:  # torch.load raises RuntimeError, KeyError, EOFError, ... for a damaged file
        raise ConversionError(
            f"Cannot read {path} as a PyTorch checkpoint ({error}); the file is damaged: copy it again."
        ) from None
    if not isinstance(tensors, dict) or not all(isinstance(tensor, torch.Tensor) for tensor in tensors.values()):
        raise ConversionError(f"{path} holds no state dict of tensors; pass the original checkpoint's weights.")
    return tensors


def refused_pickle_message(path: Path, torch_message: str) -> str:
    """Why a pickle that torch's `weights_only` loader refuses is refused, without torch's advice to load it unsafely."""
    refused_global = REFUSED_GLOBAL_PATTERN.search(torch_message)
    named = f" (it names `{refused_global[1]}`)" if refused_global else ""
    return (
        f"{path} is a pickle holding objects other than tensors{named}: the converter loads pickles only with torch's "
        "`weights_only=True` and refuses this one, because unpickling it could run code; convert the checkpoint to "
        "safetensors in an environment you trust, then pass that."
    )


def known_configuration(name: str, known: dict[str, dict]) -> dict | None:
    """The known configuration whose name (or alias) the path `name` contains, if any."""
    lowered = name.lower()
    for alias, known_name in KNOWN_NAME_ALIASES.items():
        lowered = lowered.replace(alias, known_name)
    return next((config for known_name, config in known.items() if known_name in lowered), None)


def find_tower_config(path_in_config: str, checkpoint_dir: Path, explicit: Path | None) -> Path | None:
    """
    Finds a tower's config.json: the explicit path if given, else the original config's path resolved as the original
    code did (against the working directory), then against the checkpoint directory and its parent.
    """
    if explicit is not None:
        candidates = [explicit]
    else:
        candidates = [Path(path_in_config), checkpoint_dir / path_in_config, checkpoint_dir.parent / path_in_config]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        if (candidate / "config.json").is_file():
            return candidate / "config.json"
    if explicit is not None:
        raise ConversionError(f"No config.json at {explicit}; pass a tower config file or the directory holding it.")
    return None


def load_tower_config(
    original_config: dict, field: str, checkpoint_dir: Path, explicit: Path | None, known: dict[str, dict], flag: str
) -> dict:
    """Loads the config of the tower named by `original_config[field]`, or the known configuration of that name."""
    path_in_config = original_config.get(field) or ""
    config_file = find_tower_config(path_in_config, checkpoint_dir, explicit)
    if config_file is not None:
        return read_json(config_file)
    known_config = known_configuration(path_in_config, known)
    if known_config is None:
        raise ConversionError(
            f"Cannot find the config of `{field}` {path_in_config!r} (looked in the working directory, {checkpoint_dir} "
            f"and its parent), and it names no known model ({sorted(known)}); pass {flag} with its config.json."
        )
    logger.warning(
        f"`{field}` {path_in_config!r} not found; using the known configuration of that model, checked against the weights."
    )
    return copy.deepcopy(known_config)


@contextmanager
def config_errors(config_name: str, what_to_pass: str):
    """Turns what a transformers config raises for a field of the wrong type or value into a `ConversionError` naming
    the config and what to pass instead."""
    try:
        yield
    except (StrictDataclassError, TypeError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise ConversionError(
            f"The {config_name} has a field of the wrong type or value ({reason}); pass {what_to_pass}."
        ) from error


def check_against_weights(tower: str, from_config: dict[str, int], from_weights: dict[str, int]):
    """Raises when a tower config disagrees with the sizes the weights show."""
    mismatches = [
        f"`{name}` is {from_config[name]} in the config but {value} in the weights"
        for name, value in from_weights.items()
        if from_config[name] != value
    ]
    if mismatches:
        raise ConversionError(f"The {tower} config does not fit the checkpoint: {'; '.join(mismatches)}.")


def converted_vision_config(tower_config: dict, state_dict: dict[str, torch.Tensor]) -> dict:
    """
    The SigLIP config of the converted tower: the original drops the tower's last layer and reads the output of the
    others (before `post_layernorm`), so the checkpoint holds one layer fewer than the tower's config.
    """
    vision_config = dict(tower_config.get("vision_config", tower_config))
    vision_config["model_type"] = "siglip_vision_model"
    prefix = "model.vision_tower.vision_tower.vision_model."
    patch_embedding = state_dict[f"{prefix}embeddings.patch_embedding.weight"]
    num_positions = state_dict[f"{prefix}embeddings.position_embedding.weight"].shape[0]
    with config_errors("vision tower config", "--vision-tower-config with SigLIP's original config.json"):
        config = SiglipVisionConfig(**vision_config)
    check_against_weights(
        "vision tower",
        {
            "hidden_size": config.hidden_size,
            "patch_size": config.patch_size,
            "patches per image": (config.image_size // config.patch_size) ** 2,
            "intermediate_size": config.intermediate_size,
            "num_hidden_layers": config.num_hidden_layers,
        },
        {
            "hidden_size": patch_embedding.shape[0],
            "patch_size": patch_embedding.shape[-1],
            "patches per image": num_positions,
            "intermediate_size": state_dict[f"{prefix}encoder.layers.0.mlp.fc1.weight"].shape[0],
            # the original drops the tower's last layer before saving
            "num_hidden_layers": count_layers(state_dict, f"{prefix}encoder.layers.") + 1,
        },
    )
    return {**vision_config, "num_hidden_layers": vision_config["num_hidden_layers"] - 1, "vision_use_head": False}


def check_clip_config(clip_config: dict, state_dict: dict[str, torch.Tensor]):
    """Checks the keyframe selector's CLIP config against the sizes its weights show."""
    with config_errors("keyframe selector CLIP config", "--clip-config with CLIP's original config.json"):
        config = CLIPConfig.from_dict(clip_config)
    prefix = CLIP_PREFIX
    patch_embedding = state_dict[f"{prefix}vision_model.embeddings.patch_embedding.weight"]
    num_positions = state_dict[f"{prefix}vision_model.embeddings.position_embedding.weight"].shape[0]
    from_config = {
        "projection_dim": config.projection_dim,
        "vision hidden_size": config.vision_config.hidden_size,
        "vision patch_size": config.vision_config.patch_size,
        "vision patches per image + class": (config.vision_config.image_size // config.vision_config.patch_size) ** 2
        + 1,
        "vision num_hidden_layers": config.vision_config.num_hidden_layers,
        "text hidden_size": config.text_config.hidden_size,
        "text num_hidden_layers": config.text_config.num_hidden_layers,
        "text vocab_size": config.text_config.vocab_size,
    }
    check_against_weights(
        "keyframe selector CLIP",
        from_config,
        {
            "projection_dim": state_dict[f"{prefix}text_projection.weight"].shape[0],
            "vision hidden_size": patch_embedding.shape[0],
            "vision patch_size": patch_embedding.shape[-1],
            "vision patches per image + class": num_positions,
            "vision num_hidden_layers": count_layers(state_dict, f"{prefix}vision_model.encoder.layers."),
            "text hidden_size": state_dict[f"{prefix}text_model.embeddings.token_embedding.weight"].shape[1],
            "text num_hidden_layers": count_layers(state_dict, f"{prefix}text_model.encoder.layers."),
            "text vocab_size": state_dict[f"{prefix}text_model.embeddings.token_embedding.weight"].shape[0],
        },
    )


def convert_config(
    original_config: dict, vision_config: dict, *, video_token_index: int, vocab_size: int
) -> ViLaMPConfig:
    """Builds the ViLaMPConfig of a converted checkpoint; the DFM keeps the original code's reference rule."""
    text_config = {name: original_config[name] for name in QWEN2_CONFIG_FIELDS if name in original_config}
    text_config.update(
        model_type="qwen2",
        vocab_size=vocab_size,
        rope_parameters={"rope_type": "default", "rope_theta": original_config.get("rope_theta", 10000.0)},
    )
    if original_config.get("rope_scaling"):
        raise ConversionError(
            f"`rope_scaling` {original_config['rope_scaling']} is not supported; the released ViLaMP has none."
        )
    vilamp_fields = {new: original_config[old] for old, new in ORIGINAL_TO_HF_CONFIG.items() if old in original_config}
    with config_errors("original config.json", "the original checkpoint's unchanged config.json"):
        return ViLaMPConfig(
            vision_config=vision_config,
            text_config=text_config,
            video_token_index=video_token_index,
            dfm_reference_rule="original",
            **vilamp_fields,
        )


def rename_model_key(key: str) -> str | None:
    """The converted name of an original model key, or None when no rule of `ORIGINAL_TO_HF_KEYS` maps it."""
    for pattern, replacement in ORIGINAL_TO_HF_KEYS:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    return None


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Renames the model's tensors; returns them and the original keys that no rule maps (the CLIP ones and
    `UNUSED_ORIGINAL_KEYS` aside)."""
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if key.startswith(CLIP_PREFIX) or any(re.match(pattern, key) for pattern in UNUSED_ORIGINAL_KEYS):
            continue
        new_key = rename_model_key(key)
        if new_key is None:
            unmapped.append(key)
        else:
            converted[new_key] = tensor
    return converted, unmapped


def fit_embeddings_to_vocabulary(state_dict: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """
    Gives the input embeddings and the LM head `vocab_size` rows. Extra rows are dropped, as the original evaluation's
    `resize_token_embeddings(len(tokenizer))` does; missing rows (the `<video>` token when no row is free) are the
    mean of the existing rows, the deterministic centre of what transformers' LLaVA conversions sample.
    """
    fitted = dict(state_dict)
    for key in EMBEDDING_KEYS:
        rows = state_dict[key]
        if rows.shape[0] >= vocab_size:
            fitted[key] = rows[:vocab_size]
        else:
            mean_row = rows.float().mean(0, keepdim=True).to(rows.dtype)
            fitted[key] = torch.cat([rows, mean_row.expand(vocab_size - rows.shape[0], -1)])
    return fitted


def check_tokenizer_files(tokenizer_dir: Path):
    """Raises, with the fix first, when `tokenizer_dir` holds no tokenizer files to load."""
    if not any(all((tokenizer_dir / name).is_file() for name in names) for names in TOKENIZER_FILE_SETS):
        raise ConversionError(
            f"Pass --tokenizer with the Qwen2 tokenizer directory: {tokenizer_dir} holds no tokenizer (neither "
            "tokenizer.json nor vocab.json with merges.txt)."
        )


def load_tokenizer_with_video_token(tokenizer_dir: Path):
    """Loads the checkpoint's Qwen2 tokenizer and adds the `<video>` placeholder as a special token."""
    check_tokenizer_files(tokenizer_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as error:
        reason = " ".join(str(error).split())
        raise ConversionError(
            f"Pass --tokenizer with the Qwen2 tokenizer directory: the tokenizer in {tokenizer_dir} does not load "
            f"(transformers: {reason})."
        ) from error
    tokenizer.add_tokens([AddedToken(VIDEO_TOKEN, special=True, normalized=False)], special_tokens=True)
    # batched generation needs the prompts to end together
    tokenizer.padding_side = "left"
    return tokenizer


def check_converted(state_dict: dict[str, torch.Tensor], model: nn.Module, unmapped_keys: list[str]):
    """Collects every problem of the converted tensors against the model and raises once, naming the keys."""
    expected = model.state_dict()
    problems = []
    if unmapped_keys:
        problems.append(f"original keys no rule maps: {sorted(unmapped_keys)}")
    missing = sorted(set(expected) - set(state_dict))
    if missing:
        problems.append(f"model keys left uninitialised: {missing}")
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        problems.append(f"converted keys the model does not have: {unexpected}")
    mismatched = [
        f"{key} {tuple(tensor.shape)} vs {tuple(expected[key].shape)}"
        for key, tensor in state_dict.items()
        if key in expected and tensor.shape != expected[key].shape
    ]
    if mismatched:
        problems.append(f"shape mismatches (converted vs model): {mismatched}")
    non_finite = sorted(key for key, tensor in state_dict.items() if not torch.isfinite(tensor).all())
    if non_finite:
        problems.append(f"tensors with NaN or infinite values: {non_finite}")
    if problems:
        raise ConversionError(f"The converted checkpoint does not fit the model: {'; '.join(problems)}.")


def build_model(config: ViLaMPConfig, state_dict: dict[str, torch.Tensor], unmapped_keys: list[str]):
    """Builds the model on the meta device, checks the converted tensors against it, then takes them as its weights."""
    with torch.device("meta"):
        model = ViLaMPForConditionalGeneration(config)
    check_converted(state_dict, model, unmapped_keys)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model


def parse_max_shard_size(max_shard_size: str | int) -> int:
    """The largest shard in bytes, from a size such as `"5GB"`, `"500MB"` or `"2GiB"`."""
    try:
        size = convert_file_size_to_int(max_shard_size)
    except ValueError:
        size = 0
    if size <= 0:
        raise ConversionUsageError(
            f"`--max-shard-size` {max_shard_size!r} is not a size; pass a positive whole number with a unit, such as "
            "5GB, 500MB or 2GiB."
        )
    return size


def check_existing_path(path: Path | None, name: str, *, directory: bool):
    """Raises when an argument's path (if given) does not exist, or is not a directory where one is needed."""
    if path is None:
        return
    if not path.exists():
        raise ConversionUsageError(
            f"{name} {path} does not exist; pass an existing {'directory' if directory else 'path'}."
        )
    if directory and not path.is_dir():
        raise ConversionUsageError(f"{name} {path} is not a directory; pass a directory.")


def copy_remote_code(output_dir: Path):
    """Copies the model and processor code next to the weights and points `auto_map` at it, for `trust_remote_code`."""
    for package, names in ((MODELING_PACKAGE_DIR, MODEL_CODE_FILES), (PROCESSING_PACKAGE_DIR, PROCESSOR_CODE_FILES)):
        for name in names:
            shutil.copyfile(package / name, output_dir / name)
    for file_name, auto_map in (("config.json", AUTO_MAP), (PROCESSOR_CONFIG_NAME, PROCESSOR_AUTO_MAP)):
        path = output_dir / file_name
        content = json.loads(path.read_text(encoding="utf-8"))
        content["auto_map"] = auto_map
        path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def check_input_paths(
    input_dir: Path, tokenizer_dir: Path | None, vision_tower_config: Path | None, clip_config: Path | None
):
    """Raises when a path the arguments name does not exist, or is not a directory where one is needed."""
    check_existing_path(input_dir, "The input directory", directory=True)
    check_existing_path(tokenizer_dir, "`--tokenizer`", directory=True)
    check_existing_path(vision_tower_config, "`--vision-tower-config`", directory=False)
    check_existing_path(clip_config, "`--clip-config`", directory=False)


def convert_checkpoint(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None = None,
    vision_tower_config: str | os.PathLike | None = None,
    clip_config: str | os.PathLike | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
) -> Path:
    """
    Converts the original checkpoint in `input_dir` into a directory that `AutoModel` and `AutoProcessor` load.

    The arguments are checked before any file is read (`ConversionUsageError`), everything is read and checked before
    anything is written, and the output appears only once complete. `overwrite` replaces an existing `output_dir` only
    when an earlier conversion wrote it and it holds nothing else.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    tokenizer_dir, vision_tower_config, clip_config = (
        None if path is None else Path(path) for path in (tokenizer_dir, vision_tower_config, clip_config)
    )
    max_shard_bytes = parse_max_shard_size(max_shard_size)
    check_input_paths(input_dir, tokenizer_dir, vision_tower_config, clip_config)
    target_dir = output_dir.resolve()
    check_output_dir(target_dir, input_dir, overwrite)

    original_config = read_original_config(input_dir)
    tower_config = load_tower_config(
        original_config,
        "mm_vision_tower",
        input_dir,
        vision_tower_config,
        KNOWN_VISION_TOWERS,
        "--vision-tower-config",
    )
    selector_config = load_tower_config(
        original_config, "clip_model_path", input_dir, clip_config, KNOWN_CLIP_MODELS, "--clip-config"
    )
    tokenizer = load_tokenizer_with_video_token(tokenizer_dir or input_dir)
    state_dict = load_original_state_dict(find_weight_files(input_dir))
    check_clip_config(selector_config, state_dict)

    model_state_dict, unmapped_keys = convert_state_dict(state_dict)
    model_state_dict = fit_embeddings_to_vocabulary(model_state_dict, len(tokenizer))
    config = convert_config(
        original_config,
        converted_vision_config(tower_config, state_dict),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        vocab_size=len(tokenizer),
    )
    config.dtype = next(iter(model_state_dict.values())).dtype
    model = build_model(config, model_state_dict, unmapped_keys)
    model.generation_config = converted_generation_config(input_dir, config)
    selector_state_dict, selector_model_config = convert_clip_to_open_clip(state_dict, selector_config)
    processor = ViLaMPProcessor(
        tokenizer=tokenizer,
        **{new: original_config[old] for old, new in ORIGINAL_TO_PROCESSOR_SETTINGS.items() if old in original_config},
        keyframe_pooled_size=config.keyframe_pooled_size,
        keyframe_selector=KeyframeSelector.from_state_dict(selector_state_dict, selector_model_config),
    )
    with atomic_directory(target_dir, overwrite) as temporary_dir:
        model.save_pretrained(temporary_dir, max_shard_size=max_shard_bytes)
        pause_for_testing("writing")
        processor.save_pretrained(temporary_dir)
        copy_remote_code(temporary_dir)
    return output_dir


def converted_generation_config(input_dir: Path, config: ViLaMPConfig) -> GenerationConfig:
    """The original generation config, with the `<video>` placeholder suppressed: the original could not emit it."""
    if (input_dir / "generation_config.json").is_file():
        generation_config = GenerationConfig.from_pretrained(input_dir)
    else:
        generation_config = GenerationConfig.from_model_config(config.text_config)
    generation_config.suppress_tokens = [config.video_token_id]
    return generation_config


# The keyframe selector's CLIP, stored as a transformers `CLIPModel`, becomes an open_clip `CLIP` for the processor.
CLIP_PREFIX = "model.frame_selector.model."

# Ordered regex swaps, applied one after the other to every key (after `CLIP_PREFIX` is removed). The query, key
# and value projections are merged by `merge_attention_projections`, the two output projections transposed by
# `transpose_output_projections`.
CLIP_TO_OPEN_CLIP_KEYS = [
    (r"^vision_model\.embeddings\.class_embedding$", "visual.class_embedding"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual.conv1."),
    (r"^vision_model\.embeddings\.position_embedding\.weight$", "visual.positional_embedding"),
    (r"^vision_model\.pre_layrnorm\.", "visual.ln_pre."),
    (r"^vision_model\.post_layernorm\.", "visual.ln_post."),
    (r"^vision_model\.encoder\.layers\.", "visual.transformer.resblocks."),
    (r"^visual_projection\.weight$", "visual.proj"),
    (r"^text_model\.embeddings\.token_embedding\.", "token_embedding."),
    (r"^text_model\.embeddings\.position_embedding\.weight$", "positional_embedding"),
    (r"^text_model\.encoder\.layers\.", "transformer.resblocks."),
    (r"^text_model\.final_layer_norm\.", "ln_final."),
    (r"^text_projection\.weight$", "text_projection"),
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
]

# open_clip keeps the projections as `x @ proj`, transformers as `nn.Linear` weights `(out, in)`.
TRANSPOSED_OPEN_CLIP_KEYS = ("visual.proj", "text_projection")

ATTENTION_PROJECTION_PATTERN = re.compile(
    r"^(?P<layer>.+)\.self_attn\.(?P<projection>[qkv])_proj\.(?P<kind>weight|bias)$"
)

# open_clip builds its LayerNorms with the torch default epsilon.
OPEN_CLIP_LAYER_NORM_EPS = 1e-5


def rename_clip_key(key: str) -> str:
    """Applies `CLIP_TO_OPEN_CLIP_KEYS` in order to one transformers CLIP key."""
    for pattern, replacement in CLIP_TO_OPEN_CLIP_KEYS:
        key = re.sub(pattern, replacement, key)
    return key


def merge_attention_projections(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenates the `q_proj`, `k_proj`, `v_proj` weights and biases of each layer into `attn.in_proj_*`."""
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    merged = {}
    for key, tensor in state_dict.items():
        match = ATTENTION_PROJECTION_PATTERN.match(key)
        if match is None:
            merged[key] = tensor
            continue
        grouped.setdefault((match["layer"], match["kind"]), {})[match["projection"]] = tensor
    for (layer, kind), projections in grouped.items():
        if sorted(projections) != ["k", "q", "v"]:
            raise ValueError(
                f"`{layer}.self_attn` has the {kind} of projections {sorted(projections)}; a CLIP attention layer "
                "needs q_proj, k_proj and v_proj. Pass the complete CLIP state dict."
            )
        merged[f"{layer}.attn.in_proj_{kind}"] = torch.cat([projections["q"], projections["k"], projections["v"]])
    return merged


def transpose_output_projections(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Transposes the image and text projections from `nn.Linear` layout to open_clip's `x @ proj` layout."""
    return {
        key: tensor.t().contiguous() if key in TRANSPOSED_OPEN_CLIP_KEYS else tensor
        for key, tensor in state_dict.items()
    }


def count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    """Number of transformer blocks whose keys start with `prefix` (e.g. `"visual.transformer.resblocks."`)."""
    indices = {int(key[len(prefix) :].split(".")[0]) for key in state_dict if key.startswith(prefix)}
    return len(indices)


def open_clip_model_config(state_dict: dict[str, torch.Tensor], clip_config: CLIPConfig) -> dict:
    """Builds the open_clip model config: sizes from the converted weights, head counts and activation from `clip_config`."""
    vision_config, text_config = clip_config.vision_config, clip_config.text_config
    activations = {vision_config.hidden_act, text_config.hidden_act}
    if not activations <= {"quick_gelu", "gelu"} or len(activations) != 1:
        raise ValueError(
            f"open_clip needs one activation, `quick_gelu` or `gelu`, for both towers; the CLIP config has "
            f"vision `{vision_config.hidden_act}` and text `{text_config.hidden_act}`."
        )
    for name, sub_config in (("vision_config", vision_config), ("text_config", text_config)):
        if sub_config.layer_norm_eps != OPEN_CLIP_LAYER_NORM_EPS:
            raise ValueError(
                f"`{name}.layer_norm_eps` is {sub_config.layer_norm_eps}, but open_clip uses {OPEN_CLIP_LAYER_NORM_EPS}."
            )
    vision_width = state_dict["visual.conv1.weight"].shape[0]
    text_width = state_dict["token_embedding.weight"].shape[1]
    return {
        "embed_dim": state_dict["text_projection"].shape[1],
        "quick_gelu": vision_config.hidden_act == "quick_gelu",
        "vision_cfg": {
            "image_size": vision_config.image_size,
            "patch_size": state_dict["visual.conv1.weight"].shape[-1],
            "width": vision_width,
            "layers": count_layers(state_dict, "visual.transformer.resblocks."),
            "head_width": vision_width // vision_config.num_attention_heads,
            "mlp_ratio": state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vision_width,
        },
        "text_cfg": {
            "context_length": state_dict["positional_embedding"].shape[0],
            "vocab_size": state_dict["token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": text_config.num_attention_heads,
            "layers": count_layers(state_dict, "transformer.resblocks."),
            "mlp_ratio": state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width,
        },
    }


def convert_clip_to_open_clip(
    state_dict: dict[str, torch.Tensor], clip_config: dict | CLIPConfig
) -> tuple[dict[str, torch.Tensor], dict]:
    """
    Converts the keyframe selector's transformers CLIP weights into an open_clip `CLIP` state dict and model config.

    Args:
        state_dict (`dict[str, torch.Tensor]`):
            The original checkpoint's tensors; only the keys under `model.frame_selector.model.` are read.
        clip_config (`dict` or `CLIPConfig`):
            The CLIP config the original code built its `CLIPModel` from (`clip_model_path` in the original config).
            Head counts and the activation come from it; every size that the weights show comes from the weights.

    Returns:
        `tuple[dict[str, torch.Tensor], dict]`: the open_clip state dict (loadable with `strict=True`) and the open_clip
        model config (`embed_dim`, `quick_gelu`, `vision_cfg`, `text_cfg`), as `keyframe_selector_config.json` stores it.
    """
    if isinstance(clip_config, dict):
        clip_config = CLIPConfig.from_dict(clip_config)
    clip_state_dict = {
        key[len(CLIP_PREFIX) :]: tensor for key, tensor in state_dict.items() if key.startswith(CLIP_PREFIX)
    }
    if not clip_state_dict:
        raise ValueError(
            f"No key of the state dict starts with `{CLIP_PREFIX}`; pass the original ViLaMP checkpoint, whose keyframe "
            "selector CLIP is stored under that prefix."
        )
    clip_state_dict = merge_attention_projections(clip_state_dict)
    open_clip_state_dict = transpose_output_projections(
        {rename_clip_key(key): tensor for key, tensor in clip_state_dict.items()}
    )
    return open_clip_state_dict, open_clip_model_config(open_clip_state_dict, clip_config)


def build_parser(
    subparser: argparse.ArgumentParser | None = None,
    *,
    directory_type: Callable[[str], Path] = Path,
    parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
) -> argparse.ArgumentParser:
    """
    Builds the converter's one argument parser, which both command lines parse with.

    Args:
        subparser (`argparse.ArgumentParser`, *optional*):
            The `vilamp convert` subparser to fill: the two directories are the positionals `ORIGINAL_DIR OUTPUT_DIR`,
            as in the other `vilamp` subcommands. Without it, a new `vilamp-convert` parser names them `--input` and
            `--output`.
        directory_type (`Callable[[str], Path]`, *optional*, defaults to `Path`):
            The argparse type of the directories that must exist (the input, `--tokenizer`, `--verify-reference`). The
            `vilamp` command line passes its own, which checks them as it parses, as for its other subcommands; with
            `Path`, `convert_checkpoint` checks them and the error is one line.
        parser_class (`type[argparse.ArgumentParser]`, *optional*, defaults to `argparse.ArgumentParser`):
            The class of the new `vilamp-convert` parser (the console script passes the `vilamp` command line's, whose
            usage errors are one line).

    Returns:
        `argparse.ArgumentParser`: the parser, whose namespace `run_command` takes.
    """
    if subparser is None:
        parser = parser_class(
            prog="vilamp-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        input_name, output_name = "--input", "--output"
        parser.add_argument(input_name, dest="input", type=directory_type, required=True, help=INPUT_HELP)
        parser.add_argument(output_name, dest="output", type=Path, required=True, help=OUTPUT_HELP)
    else:
        parser = subparser
        input_name, output_name = "ORIGINAL_DIR", "OUTPUT_DIR"
        parser.add_argument("input", metavar=input_name, type=directory_type, help=INPUT_HELP)
        parser.add_argument("output", metavar=output_name, type=Path, help=OUTPUT_HELP)
    parser.add_argument(
        "--tokenizer", type=directory_type, help=f"the Qwen2 tokenizer directory (default: {input_name})"
    )
    parser.add_argument("--vision-tower-config", type=Path, help="SigLIP config.json (default: `mm_vision_tower`)")
    parser.add_argument(
        "--clip-config", type=Path, help="keyframe selector CLIP config.json (default: `clip_model_path`)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace an existing {output_name} written by an earlier conversion (never anything else)",
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB, 500MB (default 5GB)"
    )
    parser.add_argument(
        "--verify-reference",
        type=directory_type,
        metavar="DIR",
        help="after converting, compare every stage with this golden reference directory and print the report",
    )
    return parser


def run_conversion(args: argparse.Namespace) -> int:
    """Converts as the parsed arguments say, then verifies against the reference if asked; returns the exit status."""
    if args.verify_reference is not None:
        check_existing_path(args.verify_reference, "`--verify-reference`", directory=True)
        check_reference_dir(args.verify_reference)
    output_dir = convert_checkpoint(
        args.input,
        args.output,
        tokenizer_dir=args.tokenizer,
        vision_tower_config=args.vision_tower_config,
        clip_config=args.clip_config,
        overwrite=args.overwrite,
        max_shard_size=args.max_shard_size,
    )
    print(f"Converted {args.input} into {output_dir}")
    if args.verify_reference is None:
        return 0
    return report_verification(output_dir, args.verify_reference)


def run_command(args: argparse.Namespace, prog: str) -> int:
    """
    Runs the conversion that `build_parser`'s namespace asks for, SIGINT and SIGTERM turned into `Interrupted`, and
    returns the exit status that the module docstring lists; an error is one line on stderr, prefixed with `prog`.
    """
    try:
        with InterruptHandler():
            return run_conversion(args)
    except KeyboardInterrupt as interrupt:
        completed_output = getattr(interrupt, "completed_output", None)
        completed = "" if completed_output is None else f" after the conversion completed: {completed_output} holds it"
        print(f"{prog}: interrupted{completed}", file=sys.stderr)
        return 128 + getattr(interrupt, "signum", signal.SIGINT)
    except INPUT_ERRORS as error:
        if os.environ.get("VILAMP_TRACEBACK"):
            raise
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2 if isinstance(error, ConversionUsageError) else 1


def main(argv: list[str] | None = None) -> int:
    """The `vilamp-convert` command line; returns the exit status that the module docstring lists."""
    return run_command(build_parser().parse_args(argv), prog="vilamp-convert")


__all__ = [
    "CLIP_TO_OPEN_CLIP_KEYS",
    "ConversionError",
    "ConversionUsageError",
    "ORIGINAL_TO_HF_CONFIG",
    "ORIGINAL_TO_HF_KEYS",
    "check_converted",
    "convert_checkpoint",
    "convert_clip_to_open_clip",
    "convert_config",
    "convert_state_dict",
    "build_parser",
    "fit_embeddings_to_vocabulary",
    "main",
    "run_command",
]

if __name__ == "__main__":
    raise SystemExit(main())
