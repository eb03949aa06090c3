import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

from vilamp.cli.main import build_parser as build_vilamp_parser
from vilamp.conversion.convert_original_to_hf import (
    ConversionError,
    build_parser,
    convert_checkpoint,
    fit_embeddings_to_vocabulary,
    main,
)
from vilamp.conversion.verify_reference import EXACT_STAGES, FLOAT_TOLERANCE, format_report, verify_converted
from vilamp.modeling_vilamp import ViLaMPForConditionalGeneration
from vilamp.processing import ViLaMPProcessor

REPO_ROOT = Path(__file__).resolve().parents[2]


def assert_nothing_written(output_dir: Path):
    assert not output_dir.exists()
    assert not [path for path in output_dir.parent.iterdir() if path.name.startswith(f".{output_dir.name}.")]


def test_converted_checkpoint_reproduces_every_golden_stage(converted_dir, reference_dir):
    differences = verify_converted(converted_dir, reference_dir)
    assert {"keyframe_mask", "logits", "generated_ids", "video_tokens", "clip_image_embeds"} <= set(differences)
    for name, difference in differences.items():
        tolerance = 0.0 if name in EXACT_STAGES else FLOAT_TOLERANCE
        assert difference <= tolerance, format_report(differences)


def test_converted_checkpoint_loads_with_the_auto_classes(converted_dir):
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        assert isinstance(auto_class.from_pretrained(converted_dir), ViLaMPForConditionalGeneration)
    processor = AutoProcessor.from_pretrained(converted_dir)
    assert isinstance(processor, ViLaMPProcessor)
    assert processor.video_processor.num_keyframes == 4
    assert processor.video_token_id == 508


def test_command_line_converts_and_prints_the_verification_report(reference_dir, tokenizer_dir, tmp_path):
    output_dir = tmp_path / "vilamp-tiny"
    command = [
        sys.executable, "-m", "vilamp.conversion.convert_original_to_hf",
        "--input", str(reference_dir / "original_tiny"),
        "--output", str(output_dir),
        "--tokenizer", str(tokenizer_dir),
        "--verify-reference", str(reference_dir),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"into {output_dir}" in result.stdout
    assert "| logits |" in result.stdout and "| NO |" not in result.stdout
    assert (output_dir / "model.safetensors").is_file()


def test_vilamp_convert_and_vilamp_convert_script_parse_to_the_same_arguments(tmp_path):
    """`vilamp convert ORIGINAL_DIR OUTPUT_DIR` and `vilamp-convert --input --output` share one parser's flags."""
    flags = [
        "--tokenizer", str(tmp_path), "--vision-tower-config", "siglip.json", "--clip-config", "clip.json",
        "--overwrite", "--max-shard-size", "500MB", "--verify-reference", str(tmp_path),
    ]  # fmt: skip
    standalone = vars(build_parser().parse_args(["--input", str(tmp_path), "--output", str(tmp_path / "out"), *flags]))
    subcommand = vars(build_vilamp_parser().parse_args(["convert", str(tmp_path), str(tmp_path / "out"), *flags]))
    assert {name: subcommand[name] for name in standalone} == standalone


@pytest.mark.slow
# converted_before_0_2_dir: the JSON files that the converter wrote before the package moved under `vilamp`
@pytest.mark.parametrize("directory", ["converted_dir", "converted_before_0_2_dir"])
def test_converted_directory_loads_with_remote_code_without_the_package(directory, reference_dir, tmp_path, request):
    """A fresh virtual environment that sees the dependencies but not this package, nor PyAV or flash-attn."""
    converted_dir = request.getfixturevalue(directory)
    environment = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(environment)], check=True)
    site_packages = next(environment.glob("lib/python*/site-packages"))
    dependency_dirs = [path for path in sys.path if path.endswith("site-packages")]
    (site_packages / "dependencies.pth").write_text("\n".join(dependency_dirs) + "\n")
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        import numpy as np, torch
        from PIL import Image
        from safetensors.torch import load_file
        assert importlib.util.find_spec("vilamp") is None, "vilamp is importable"
        sys.modules["av"] = None  # no video decoder
        sys.modules["flash_attn"] = None
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained({str(converted_dir)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(converted_dir)!r}, trust_remote_code=True)
        reference = {str(reference_dir)!r}
        golden = load_file(reference + "/golden/golden.safetensors")
        frames = [Image.fromarray(frame) for frame in np.load(reference + "/inputs/frames.npy")]
        question = json.load(open(reference + "/inputs/clip_text.json"))["question"]
        inputs = processor(text="<video>\\n" + question, videos=frames, query=question)
        assert torch.equal(inputs["keyframe_mask"].long(), golden["keyframe_mask"]), "keyframe mask"
        ids = json.load(open(reference + "/inputs/input_ids.json"))["input_ids"]
        position = ids.index(-200)
        num_video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
        input_ids = torch.tensor([ids[:position] + [model.config.video_token_id] * num_video_tokens + ids[position + 1:]])
        video_inputs = {{name: inputs[name] for name in ("pixel_values_videos", "keyframe_mask", "query_embeds")}}
        with torch.no_grad():
            logits = model(input_ids=input_ids, **video_inputs).logits
        print("max logits difference", (logits - golden["logits"]).abs().max().item())
        assert (logits - golden["logits"]).abs().max() <= 1e-4
        generated = model.generate(input_ids=input_ids, **video_inputs, do_sample=False, max_new_tokens=5)
        assert generated[:, input_ids.shape[1]:].tolist() == golden["generated_ids"].tolist(), "generated ids"
        print("remote code OK", type(model).__module__, type(processor).__module__)
        """
    )
    environment_variables = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(environment / "bin" / "python"), "-c", script],
        cwd=tmp_path,
        env=environment_variables,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "remote code OK transformers_modules" in result.stdout


def test_missing_shard_is_refused_and_nothing_is_written(checkpoint_copy, tokenizer_dir, tmp_path):
    state_dict = load_file(checkpoint_copy / "model.safetensors")
    (checkpoint_copy / "model.safetensors").unlink()
    keys = sorted(state_dict)
    shards = {
        "model-00001-of-00002.safetensors": keys[: len(keys) // 2],
        "model-00002-of-00002.safetensors": keys[len(keys) // 2 :],
    }
    save_file(
        {key: state_dict[key] for key in shards["model-00001-of-00002.safetensors"]},
        checkpoint_copy / "model-00001-of-00002.safetensors",
    )
    weight_map = {key: shard for shard, shard_keys in shards.items() for key in shard_keys}
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    output_dir = tmp_path / "out"
    with pytest.raises(ConversionError, match="missing.*model-00002-of-00002.safetensors"):
        convert_checkpoint(checkpoint_copy, output_dir, tokenizer_dir=tokenizer_dir)
    assert_nothing_written(output_dir)


def test_sharded_checkpoint_converts(checkpoint_copy, tokenizer_dir, tmp_path):
    state_dict = load_file(checkpoint_copy / "model.safetensors")
    (checkpoint_copy / "model.safetensors").unlink()
    keys = sorted(state_dict)
    weight_map = {}
    for index, shard_keys in enumerate((keys[::2], keys[1::2])):
        shard = f"model-0000{index + 1}-of-00002.safetensors"
        save_file({key: state_dict[key] for key in shard_keys}, checkpoint_copy / shard)
        weight_map.update(dict.fromkeys(shard_keys, shard))
    (checkpoint_copy / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert convert_checkpoint(checkpoint_copy, tmp_path / "out", tokenizer_dir=tokenizer_dir).is_dir()


def rewrite_weights(checkpoint_dir: Path, change):
    state_dict = load_file(checkpoint_dir / "model.safetensors")
    change(state_dict)
    save_file(state_dict, checkpoint_dir / "model.safetensors")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda weights: weights.update({"model.extra_head.weight": torch.zeros(2)}),
            r"no rule maps: \['model.extra_head.weight'\]",
        ),
        (lambda weights: weights.pop("model.image_newline"), r"uninitialised: \['model.image_newline'\]"),
        (
            lambda weights: weights.update({"model.mm_projector.2.bias": torch.zeros(63)}),
            r"shape mismatches.*model.multi_modal_projector.linear_2.bias \(63,\) vs \(64,\)",
        ),
        (
            lambda weights: weights.update({"model.composer_projector.tau": torch.tensor(float("nan"))}),
            r"NaN or infinite values: \['model.feature_merger.tau'\]",
        ),
    ],
    ids=["unexpected-key", "missing-key", "wrong-shape", "non-finite"],
)
def test_bad_weights_are_refused_naming_the_keys(checkpoint_copy, tokenizer_dir, tmp_path, change, message):
    rewrite_weights(checkpoint_copy, change)
    output_dir = tmp_path / "out"
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(checkpoint_copy, output_dir, tokenizer_dir=tokenizer_dir)
    assert_nothing_written(output_dir)


def test_config_of_another_model_type_is_refused(checkpoint_copy, tokenizer_dir, tmp_path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    (checkpoint_copy / "config.json").write_text(json.dumps({**config, "model_type": "llava_llama"}))
    with pytest.raises(ConversionError, match="`model_type` 'llava_llama'.*'llava_qwen'"):
        convert_checkpoint(checkpoint_copy, tmp_path / "out", tokenizer_dir=tokenizer_dir)
    assert_nothing_written(tmp_path / "out")


def test_unimplemented_original_setting_is_refused(checkpoint_copy, tokenizer_dir, tmp_path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    (checkpoint_copy / "config.json").write_text(json.dumps({**config, "composer_type": "average_pooling"}))
    with pytest.raises(ConversionError, match="'composer_type': 'average_pooling'"):
        convert_checkpoint(checkpoint_copy, tmp_path / "out", tokenizer_dir=tokenizer_dir)


def test_earlier_conversion_is_replaced_only_with_overwrite(
    converted_dir, reference_dir, tokenizer_dir, tmp_path, capsys
):
    output_dir = tmp_path / "out"
    shutil.copytree(converted_dir, output_dir)
    config = json.loads((output_dir / "config.json").read_text())
    (output_dir / "config.json").write_text(json.dumps({**config, "written_by": "the earlier conversion"}))
    arguments = [
        "--input",
        str(reference_dir / "original_tiny"),
        "--output",
        str(output_dir),
        "--tokenizer",
        str(tokenizer_dir),
    ]
    assert main(arguments) == 2
    assert "holds an earlier conversion; pass --overwrite to replace it" in capsys.readouterr().err
    assert json.loads((output_dir / "config.json").read_text())["written_by"] == "the earlier conversion"

    assert main([*arguments, "--overwrite"]) == 0
    assert "written_by" not in json.loads((output_dir / "config.json").read_text())
    assert (output_dir / "model.safetensors").is_file()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".out.")]


def test_tower_configs_are_found_beside_the_checkpoint_or_given_explicitly(reference_dir, tokenizer_dir, tmp_path):
    checkpoint_dir = tmp_path / "alone" / "original_tiny"
    shutil.copytree(reference_dir / "original_tiny", checkpoint_dir)
    with pytest.raises(
        ConversionError,
        match="Cannot find the config of `mm_vision_tower` 'siglip-tiny-patch14-384'.*--vision-tower-config",
    ):
        convert_checkpoint(checkpoint_dir, tmp_path / "out", tokenizer_dir=tokenizer_dir)
    converted = convert_checkpoint(
        checkpoint_dir,
        tmp_path / "out",
        tokenizer_dir=tokenizer_dir,
        vision_tower_config=reference_dir / "siglip-tiny-patch14-384",
        clip_config=reference_dir / "clip-tiny-patch32" / "config.json",
    )
    assert json.loads((converted / "config.json").read_text())["vision_config"]["num_hidden_layers"] == 2


def test_known_tower_configuration_is_checked_against_the_weights(checkpoint_copy, tokenizer_dir, tmp_path):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["mm_vision_tower"] = "google/siglip-so400m-patch14-384"
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConversionError, match="`hidden_size` is 1152 in the config but 32 in the weights"):
        convert_checkpoint(checkpoint_copy, tmp_path / "out", tokenizer_dir=tokenizer_dir)


def test_embeddings_shrink_to_the_tokenizer_and_grow_with_the_mean_row():
    rows = torch.arange(12, dtype=torch.float32).view(4, 3)
    state_dict = {"model.language_model.embed_tokens.weight": rows, "lm_head.weight": rows * 2}
    shrunk = fit_embeddings_to_vocabulary(state_dict, 3)
    torch.testing.assert_close(shrunk["lm_head.weight"], rows[:3] * 2)
    grown = fit_embeddings_to_vocabulary(state_dict, 6)
    torch.testing.assert_close(grown["model.language_model.embed_tokens.weight"][4:], rows.mean(0).expand(2, 3))
