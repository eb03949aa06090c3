"""An on-disk cache of loaded videos: a second process, or a re-run of an evaluation, takes a video file's resized frames
from disk instead of decoding the file again.

One safetensors file per key holds `siglip_frames`, `clip_frames` (when made) and `timestamps_seconds`; its header holds
the `VideoMetadata`, the key (for debugging) and a CRC-32 of each tensor, so a damaged entry is found and decoded again.
The key is the file's identity (resolved path, size, modification time, inode, device and a hash of its first and last
MiB) with every setting that changes the frames, so a changed file or setting never returns an old frame. At 384x384
and 224x224 an entry takes 3*384*384 + 3*224*224 bytes = 579 KiB per frame (600 frames: 339 MiB).
"""

import dataclasses
import hashlib
import json
import os
import re
import secrets
import time
import warnings
import zlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import PIL
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers.video_utils import VideoMetadata

from .video_processing_vilamp import FRAME_SETTINGS, LoadedVideo, ProgressCallback, ViLaMPVideoProcessor

# Bump when decoding, sampling or resizing rules change the frames of a file: every entry written before then misses.
CACHE_FORMAT_VERSION = 1
# Bytes hashed at each end of a video file, so a file rewritten in place with its old size and time still misses.
HASHED_BYTES = 2**20
# Only files named like these are ever removed, so a directory shared with other files (weights) keeps them.
ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.safetensors")
# `.<entry's key hash>.<writer's process number>.<random>.tmp`
TEMPORARY_NAME = re.compile(r"\.[0-9a-f]{64}\.(?P<pid>[0-9]+)\.[0-9a-f]+\.tmp")
# A temporary file this old is a dead writer's leftover even when its process number is in use again on this machine
# or belongs to another machine sharing the directory: writing an entry takes seconds.
TEMPORARY_MAX_AGE_SECONDS = 24 * 3600
# The header holds the key, the `VideoMetadata` and each tensor's CRC-32, as JSON, and a CRC-32 of that JSON.
HEADER_KEY = "vilamp_video_cache"
HEADER_CRC32_KEY = "vilamp_video_cache_crc32"


class VideoCacheWarning(UserWarning):
    """A cache entry that could not be read (it is decoded again) or stored (the decoded video is still returned)."""


def _plain(value) -> Any:
    """A setting as JSON for the key: mappings sorted without unset entries, enums and numbers as floats."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {name: _plain(item) for name, item in sorted(value.items()) if item is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # 1 and 1.0 are the same `fps`; an enum such as `PILImageResampling.BICUBIC` is its number
        return float(value)
    return value


def _library_version(name: str) -> str | None:
    """The installed version of a library whose updates may change decoded or resized pixels."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def file_identity(path: str) -> dict[str, Any]:
    """The identity of a file in a cache key: resolved path, size, `mtime_ns`, inode, device and the SHA-256 of its
    first and last MiB."""
    path = os.path.realpath(path)
    stat = os.stat(path)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        digest.update(file.read(HASHED_BYTES))
        file.seek(max(HASHED_BYTES, stat.st_size - HASHED_BYTES))
        digest.update(file.read(HASHED_BYTES))
    return {
        "path": path,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
        "head_and_tail_sha256": digest.hexdigest(),
    }


def _checksums(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """The CRC-32 of each tensor's bytes."""
    return {name: zlib.crc32(tensor.numpy()) for name, tensor in tensors.items()}


def _process_is_running(pid: int) -> bool:
    """Whether a process of this number runs on this machine; assumed so off POSIX, where `os.kill(pid, 0)` would end
    the process instead of probing it."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # another user's process
        return True
    return True


class VideoCache:
    r"""
    A cache of loaded videos on disk, shared by processes and runs: `ViLaMPProcessor.load_video(video, cache=cache)`
    takes a video file's frames from it when they were stored with the same file and frame settings, and otherwise
    decodes the file and stores them. Only files are cached; videos given as frames are always processed.

    Entries are keyed by the file's identity (resolved path, size, `mtime_ns`, inode, device, a hash of its first and
    last MiB) and every setting that changes the frames (`FRAME_SETTINGS`, the keyframe selector's image size, the
    installed PyAV and Pillow versions and `CACHE_FORMAT_VERSION`): a changed file or setting misses, never a stale
    frame. Settings that give the same frames (`decode_device`, `num_decoders`, the keyframe thresholds) share an entry.
    Each entry is written to a temporary sibling and renamed into place, so processes may share the directory and a
    crash leaves no half entry. After each write the least recently used entries (a hit counts as a use) are removed
    until the directory holds at most `max_bytes`. An entry takes 3*384*384 + 3*224*224 bytes = 579 KiB per frame with
    the default sizes (600 frames: 339 MiB).

    Args:
        directory (`str` or `os.PathLike`): where the entries live; created if missing. Deleting it (or calling
            `clear`) empties the cache.
        max_bytes (`int`): the most bytes the entries may take together; an entry larger than this is not stored.

    Example:

    ```python
    >>> from vilamp import VideoCache
    >>> cache = VideoCache("~/.cache/vilamp/videos", max_bytes=20 * 2**30)
    >>> loaded_video = processor.load_video("video.mp4", cache=cache)  # decodes and stores
    >>> loaded_video = processor.load_video("video.mp4", cache=cache)  # reads the stored frames
    ```
    """

    def __init__(self, directory: str | os.PathLike, *, max_bytes: int):
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"`directory` must be a path (str or os.PathLike), got {type(directory).__name__}.")
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ValueError(
                f"`max_bytes` must be a positive integer (the cache's size cap in bytes, e.g. 20 * 2**30), got "
                f"{max_bytes!r}."
            )
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(
                f"`directory` {str(self.directory)!r} cannot be created or is not a directory ({error}); pass a "
                "writable directory path."
            ) from error
        self.max_bytes = max_bytes
        self._warned_too_large = False

    def __repr__(self) -> str:
        return f"VideoCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    def load_video(
        self,
        video_processor: ViLaMPVideoProcessor,
        video,
        *,
        keyframe_image_size: int | None = None,
        progress: ProgressCallback | None = None,
        **kwargs,
    ) -> LoadedVideo:
        """
        `video_processor.load_video(video, keyframe_image_size=..., progress=..., **kwargs)`, read from the cache when
        a video file was stored with the same identity and frame settings, else decoded and stored.

        Args:
            video_processor ([`ViLaMPVideoProcessor`]): decodes on a miss; its settings, overridden by `kwargs`, are
                part of the key.
            video: a file path, or frames (never cached); see `ViLaMPVideoProcessor.load_video`.
            keyframe_image_size (`int`, *optional*): the keyframe selector's CLIP image size, or `None` for no CLIP
                frames.
            progress (`Callable[[int], None]`, *optional*): as for `ViLaMPVideoProcessor.load_video`; a hit reports
                all its frames at once.
            kwargs ([`ViLaMPVideoProcessorInitKwargs`]): the video settings of this call.

        Returns:
            [`LoadedVideo`], equal to what `video_processor.load_video` returns.
        """
        settings = video_processor.call_settings(**kwargs)

        def decode() -> LoadedVideo:
            return video_processor.load_video(
                video, keyframe_image_size=keyframe_image_size, progress=progress, **kwargs
            )

        if not isinstance(video, (str, os.PathLike)):
            return decode()
        try:
            key = self._key(os.fspath(video), settings, keyframe_image_size)
        except OSError:
            # no readable file: the decoder reports it as it does without a cache
            return decode()
        entry = self.directory / f"{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()}.safetensors"
        loaded_video = self._read(entry, key)
        if loaded_video is not None:
            if progress is not None:
                progress(len(loaded_video.siglip_frames))
            return loaded_video
        loaded_video = decode()
        try:
            unchanged = self._key(os.fspath(video), settings, keyframe_image_size) == key
        except OSError:
            unchanged = False
        # a file changed while it was decoded may have given frames of either content: not stored under either key
        if unchanged:
            self._write(entry, key, loaded_video)
        return loaded_video

    def clear(self):
        """Removes every entry and temporary file of this cache (the directory stays)."""
        for path in self.directory.iterdir():
            if ENTRY_NAME.fullmatch(path.name) or TEMPORARY_NAME.fullmatch(path.name):
                path.unlink(missing_ok=True)

    @staticmethod
    def _key(path: str, settings: dict[str, Any], keyframe_image_size: int | None) -> dict[str, Any]:
        """Everything the frames of `path` depend on."""
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "file": file_identity(path),
            "settings": {name: _plain(settings[name]) for name in FRAME_SETTINGS},
            "keyframe_image_size": keyframe_image_size,
            "libraries": {"av": _library_version("av"), "pillow": PIL.__version__},
        }

    def _read(self, entry: Path, key: dict[str, Any]) -> LoadedVideo | None:
        """The stored video of `entry`, or `None` on a miss; a damaged entry is removed with a warning."""
        if not entry.is_file():
            return None
        try:
            with safe_open(entry, framework="pt") as handle:
                encoded_header = handle.metadata()[HEADER_KEY]
                header_crc32 = handle.metadata()[HEADER_CRC32_KEY]
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            if str(zlib.crc32(encoded_header.encode())) != header_crc32:
                raise ValueError("its header does not match its checksum")
            header = json.loads(encoded_header)
            if header["key"] != key or _checksums(tensors) != header["crc32"]:
                raise ValueError("its key or checksums do not match its contents")
            loaded_video = LoadedVideo(
                siglip_frames=tensors["siglip_frames"],
                clip_frames=tensors.get("clip_frames"),
                timestamps_seconds=tensors["timestamps_seconds"].tolist(),
                metadata=VideoMetadata(**header["metadata"]),
            )
        except (OSError, SafetensorError, ValueError, KeyError, TypeError) as error:
            warnings.warn(
                f"The video cache entry {entry} is damaged or unreadable ({type(error).__name__}: {error}); it is "
                "removed and the video decoded again.",
                VideoCacheWarning,
                stacklevel=4,
            )
            entry.unlink(missing_ok=True)
            return None
        try:
            now = time.time_ns()
            os.utime(entry, ns=(now, now))
        except OSError:
            # a read-only cache still serves hits; only its order of use stays as it was
            pass
        return loaded_video

    def _write(self, entry: Path, key: dict[str, Any], loaded_video: LoadedVideo):
        """Stores `loaded_video` under `entry` through a temporary sibling, then keeps the cache under `max_bytes`."""
        tensors = {"siglip_frames": loaded_video.siglip_frames.contiguous()}
        if loaded_video.clip_frames is not None:
            tensors["clip_frames"] = loaded_video.clip_frames.contiguous()
        tensors["timestamps_seconds"] = torch.tensor(loaded_video.timestamps_seconds, dtype=torch.float64)
        num_bytes = sum(tensor.nbytes for tensor in tensors.values())
        if num_bytes > self.max_bytes:
            if not self._warned_too_large:
                warnings.warn(
                    f"A loaded video of {num_bytes} bytes ({len(loaded_video.siglip_frames)} frames) is larger than "
                    f"the video cache's `max_bytes={self.max_bytes}`, so it is not stored; raise `max_bytes` to cache "
                    "videos this long. (Said once per cache.)",
                    VideoCacheWarning,
                    stacklevel=4,
                )
                self._warned_too_large = True
            return
        self._remove_dead_temporaries()
        header = {
            "key": key,
            "metadata": {
                field.name: getattr(loaded_video.metadata, field.name) for field in dataclasses.fields(VideoMetadata)
            },
            "crc32": _checksums(tensors),
        }
        temporary = entry.with_name(f".{entry.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            encoded_header = json.dumps(header)
            metadata = {HEADER_KEY: encoded_header, HEADER_CRC32_KEY: str(zlib.crc32(encoded_header.encode()))}
            save_file(tensors, temporary, metadata=metadata)
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())
            now = time.time_ns()
            os.utime(temporary, ns=(now, now))
            os.replace(temporary, entry)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            warnings.warn(
                f"The loaded video could not be stored in the video cache at {self.directory} ({error}); it is "
                "returned all the same. Free disk space or pass a writable `directory`.",
                VideoCacheWarning,
                stacklevel=4,
            )
            return
        self._evict()

    def _remove_dead_temporaries(self):
        """Removes temporary files that no running writer will rename: its process has ended, or it is a day old."""
        for path in self.directory.iterdir():
            match = TEMPORARY_NAME.fullmatch(path.name)
            if match is None:
                continue
            try:
                age_seconds = time.time() - path.stat().st_mtime
            except OSError:
                # renamed into place meanwhile
                continue
            if age_seconds > TEMPORARY_MAX_AGE_SECONDS or not _process_is_running(int(match["pid"])):
                path.unlink(missing_ok=True)

    def _evict(self):
        """Removes the least recently used entries until they take at most `max_bytes` together."""
        entries = []
        for path in self.directory.iterdir():
            if not ENTRY_NAME.fullmatch(path.name):
                continue
            try:
                stat = path.stat()
            except OSError:
                # removed meanwhile by another process
                continue
            entries.append((stat.st_mtime_ns, path.name, stat.st_size, path))
        total_bytes = sum(size for _, _, size, _ in entries)
        for _, _, size, path in sorted(entries):
            if total_bytes <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total_bytes -= size


__all__ = ["CACHE_FORMAT_VERSION", "VideoCache", "VideoCacheWarning", "file_identity"]
