"""Loading a frozen open_clip model together with its own preprocessing and tokenizer.

A VLM is named by a *spec*:

* ``open_clip:MODEL/PRETRAINED``: an open_clip architecture and one of its pretrained tags, e.g.
  ``open_clip:ViT-L-14-336/openai`` (downloaded once into the Hugging Face cache by open_clip);
* ``open_clip:hf-hub:ORG/NAME``: a model published on the Hugging Face Hub in open_clip's format;
* ``open_clip:local-dir:FOLDER``: such a repository downloaded to a folder (``open_clip_config.json``
  and a weights file): the offline form of ``hf-hub:``;
* ``open_clip:MODEL`` plus ``checkpoint=FILE``: offline weights (safetensors, or a torch file read
  with ``weights_only=True``), optionally with ``model_config=MODEL.json`` for an architecture
  open_clip does not ship (the micro CLIP of :mod:`spml.vlm.micro_clip` is one);
* ``open_clip:MODEL/none``: random weights (seeded, so always the same), for plumbing tests only;
  it never downloads anything.

Weights trained with QuickGELU (all of OpenAI's, and the other tags open_clip marks ``quick_gelu``)
always build the QuickGELU architecture, whatever name the spec gives: ``open_clip:ViT-L-14-336/openai``
builds ``ViT-L-14-336-quickgelu`` (:func:`model_name_for` says which, without loading anything).
open_clip itself only warns and builds the GELU model, whose features differ from the trained ones.

Preprocessing modes (``preprocessing=``, :data:`PREPROCESSING_MODES`), re-implemented on uint8 tensors
so that crops (CCD) and decoded files go through one path:

* ``native``: the model's own settings (size, mean, std, interpolation, resize mode) as recorded by
  ``open_clip.create_model_and_transforms``; for CLIPs that is a centre crop of the shorter side
  with OpenAI's statistics;
* ``squash``: the whole image resized to the model's square input, aspect ratio ignored, with
  ImageNet statistics unless ``mean``/``std`` are given. Both references fed CLIP this way (VLPL:
  448, then 336 inside CLIP's own transform; CCD: 640).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import open_clip
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from spml import readers
from spml.data.cache import hash_file, hash_material
from spml.errors import SpmlError
from spml.models.hub import MissingWeights, file_name, hub_file_cached, missing_message, online

SPEC_PREFIX = "open_clip:"
HF_HUB, LOCAL_DIR = "hf-hub:", "local-dir:"  # open_clip's schemas: the model brings config and weights
WEIGHTLESS_TAG = "none"
_INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
INTERPOLATIONS = tuple(_INTERPOLATIONS)  # what load_vlm's interpolation (method_params.vlm_interpolation) takes
PREPROCESSING_MODES = ("native", "squash")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_LIST_HINT = "list valid names with: python -c \"import open_clip; print(open_clip.list_models())\""


@dataclass(frozen=True)
class Preprocess:
    """A VLM's image preprocessing on uint8 ``3 x H x W`` tensors (open_clip semantics).

    Args:
        size: Output ``(height, width)``.
        mean, std: Normalisation statistics of the model (OpenAI's for most CLIPs).
        interpolation: ``bicubic`` or ``bilinear``.
        resize_mode: ``shortest`` (cover, then centre crop; open_clip's default), ``longest`` (fit,
            then pad with ``fill_color``) or ``squash`` (resize both sides, aspect ratio ignored).
        fill_color: Padding value (0-255) for ``longest``.
    """

    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_open_clip(cls, cfg: dict[str, Any]) -> Preprocess:
        """Build from an open_clip ``preprocess_cfg`` dict (``model.visual.preprocess_cfg``)."""
        size = cfg["size"]
        size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        interpolation = cfg.get("interpolation", "bicubic")
        if interpolation not in _INTERPOLATIONS:  # open_clip's 'random' is a training augmentation
            interpolation = "bicubic"
        return cls(
            size=size,
            mean=tuple(float(v) for v in cfg["mean"]),
            std=tuple(float(v) for v in cfg["std"]),
            interpolation=interpolation,
            resize_mode=cfg.get("resize_mode", "shortest"),
            fill_color=int(cfg.get("fill_color", 0)),
        )

    def with_size(self, size: int) -> Preprocess:
        """The same preprocessing at another input size."""
        return replace(self, size=(size, size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (part of every score cache key)."""
        return {
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": self.fill_color,
        }

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 ``3 x H x W`` -> normalised float32 ``3 x size``."""
        if image.ndim != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"expected a uint8 3 x H x W image, got {image.dtype} {tuple(image.shape)}")
        out_h, out_w = self.size
        h, w = image.shape[1:]
        interp = _INTERPOLATIONS[self.interpolation]
        if self.resize_mode == "squash":
            x = TF.resize(image, [out_h, out_w], interpolation=interp, antialias=True)
        elif self.resize_mode in ("shortest", "longest"):
            pick = max if self.resize_mode == "shortest" else min
            scale = pick(out_h / h, out_w / w)
            new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
            x = TF.resize(image, [new_h, new_w], interpolation=interp, antialias=True)
            if self.resize_mode == "shortest":
                x = TF.center_crop(x, [out_h, out_w])
            else:
                top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
                x = TF.pad(x, [left, top, out_w - new_w - left, out_h - new_h - top], fill=self.fill_color)
        else:
            raise ValueError(f"unknown resize_mode {self.resize_mode!r}")
        x = x.float().div_(255.0)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std


@dataclass(frozen=True)
class VlmSource:
    """Where a VLM comes from: enough to load it again (at another resolution)."""

    spec: str
    model_name: str
    pretrained: str | None
    checkpoint: Path | None = None
    model_config: Path | None = None
    quick_gelu: bool = False
    preprocessing: str = "native"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None


@dataclass
class VLM:
    """A frozen vision-language model with its preprocessing and tokenizer.

    Attributes:
        model: The open_clip model, in eval mode, gradients off.
        preprocess: Its image preprocessing (:class:`Preprocess`).
        tokenizer: open_clip tokenizer: ``list[str] -> LongTensor``.
        identity: What determines the weights (spec, tag, checkpoint/config hashes): cache keys use it.
        device: Where the model lives.
        source: How it was loaded (used by :meth:`at_size`).
    """

    model: torch.nn.Module
    preprocess: Preprocess
    tokenizer: Any
    identity: dict[str, Any]
    device: torch.device
    source: VlmSource
    _resized: dict[int, VLM] = field(default_factory=dict, repr=False)

    @property
    def image_size(self) -> int:
        """Native input side in pixels (the larger side for a non-square model)."""
        return max(self.preprocess.size)

    @property
    def preprocess_identity(self) -> dict[str, Any]:
        """What determines the pixels the model sees (mode name and every setting): a cache-key part."""
        return {"mode": self.source.preprocessing, **self.preprocess.to_dict()}

    def with_preprocessing(
        self, mode: str, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None
    ) -> VLM:
        """Return this model (shared, not reloaded) with another preprocessing mode (see the module docstring)."""
        source = replace(self.source, preprocessing=mode, mean=mean, std=std)
        native = Preprocess.from_open_clip(self.model.visual.preprocess_cfg)
        preprocess = preprocessing_for(native, mode, mean, std, self.source.interpolation)
        return replace(self, preprocess=preprocess, source=source, _resized={})

    @property
    def logit_scale(self) -> float:
        """CLIP's learned inverse temperature (exp of the stored log value)."""
        return float(self.model.logit_scale.detach().exp().item())

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of a preprocessed batch ``B x 3 x H x W``."""
        return self.model.encode_image(pixels.to(self.device), normalize=True).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Unit-norm text embeddings of raw strings (the projection's raw output if not ``normalize``)."""
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=normalize).float()

    def at_size(self, size: int) -> VLM:
        """This model taking ``size`` x ``size`` inputs.

        open_clip rebuilds the model with ``force_image_size`` and, for a ViT, interpolates the
        pretrained positional embedding while loading. Architectures it cannot resize (e.g. the
        attention pool of CLIP ResNets) raise :class:`SpmlError`: score them at the native size.
        """
        if size == self.image_size and self.preprocess.size[0] == self.preprocess.size[1]:
            return self
        if size < 8:
            raise SpmlError(f"image size must be at least 8 pixels, got {size}")
        if size not in self._resized:
            self._resized[size] = _load(self.source, self.device, image_size=size)
        return self._resized[size]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split a VLM spec into (model name, tag or None).

    Specs: ``open_clip:MODEL[/TAG]``, ``open_clip:hf-hub:ORG/NAME`` or ``open_clip:local-dir:FOLDER``.
    """
    if not spec.startswith(SPEC_PREFIX):
        raise SpmlError(f"VLM spec {spec!r} must start with {SPEC_PREFIX!r} (e.g. open_clip:ViT-L-14-336/openai)")
    rest = spec[len(SPEC_PREFIX) :].strip()
    if not rest:
        raise SpmlError(f"VLM spec {spec!r} names no model; {_LIST_HINT}")
    for schema in (HF_HUB, LOCAL_DIR):
        if rest.startswith(schema):
            if len(rest) == len(schema):
                raise SpmlError(f"VLM spec {spec!r} names no repository or folder after {schema!r}")
            return rest, None
    name, _, tag = rest.partition("/")
    if not name or (_ and not tag):
        raise SpmlError(f"VLM spec {spec!r} is malformed; expected open_clip:MODEL/PRETRAINED")
    return name, tag or None


def preprocessing_for(
    native: Preprocess,
    mode: str,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
) -> Preprocess:
    """Build the :class:`Preprocess` of ``mode`` from the model's ``native`` one (statistics and resampling overridable).

    Raises:
        SpmlError: Unknown mode or interpolation, or statistics that are not three numbers with
            positive std.
    """
    if mode not in PREPROCESSING_MODES:
        raise SpmlError(f"unknown VLM preprocessing {mode!r}; valid: {', '.join(PREPROCESSING_MODES)}")
    if interpolation is not None and interpolation not in _INTERPOLATIONS:
        raise SpmlError(f"unknown VLM interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    for what, values in (("mean", mean), ("std", std)):
        if values is not None and (len(values) != 3 or (what == "std" and min(values) <= 0)):
            raise SpmlError(f"VLM preprocessing {what} must be three numbers (std positive), got {list(values)}")
    if mode == "squash":
        native = replace(native, resize_mode="squash", mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return replace(
        native,
        mean=tuple(float(v) for v in mean) if mean is not None else native.mean,
        std=tuple(float(v) for v in std) if std is not None else native.std,
        interpolation=interpolation or native.interpolation,
    )


def _quick_gelu_tag(name: str, tag: str | None) -> bool:
    """Whether open_clip records the weights ``name``/``tag`` as trained with QuickGELU."""
    if tag is None or tag == WEIGHTLESS_TAG or name.startswith((HF_HUB, LOCAL_DIR)):
        return False
    return bool((open_clip.get_pretrained_cfg(name, tag) or {}).get("quick_gelu", False))


def model_name_for(spec: str) -> str:
    """Return the open_clip architecture :func:`load_vlm` builds for ``spec``, without loading anything.

    Weights trained with QuickGELU map to the ``-quickgelu`` architecture (``open_clip:ViT-L-14-336/openai``
    -> ``ViT-L-14-336-quickgelu``); where open_clip has no such name the model keeps its name and is
    built with ``force_quick_gelu``. Other specs (and ``hf-hub:``/``local-dir:`` models, whose config
    says which activation they use) return the spec's own model name.
    """
    name, tag = parse_spec(spec)
    if not _quick_gelu_tag(name, tag) or name.endswith("-quickgelu"):
        return name
    candidate = f"{name}-quickgelu"
    if candidate in open_clip.list_models() and tag in open_clip.list_pretrained_tags_by_model(candidate):
        return candidate
    return name


def load_vlm(
    spec: str,
    checkpoint: str | Path | None = None,
    model_config: str | Path | None = None,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    preprocessing: str = "native",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    interpolation: str | None = None,
) -> VLM:
    """Load a frozen open_clip model with its preprocessing and tokenizer (see the module docstring).

    Args:
        spec: ``open_clip:MODEL/PRETRAINED``, ``open_clip:hf-hub:ORG/NAME``, ``open_clip:MODEL`` (with
            ``checkpoint``) or ``open_clip:MODEL/none`` (random weights, no download).
        checkpoint: Local weights file for ``open_clip:MODEL``.
        model_config: open_clip model config JSON (``embed_dim``, ``vision_cfg``, ``text_cfg``) for an
            architecture open_clip does not ship; its file name must be ``MODEL.json``.
        device: Torch device.
        image_size: Input side other than the native one (see :meth:`VLM.at_size`).
        preprocessing: ``native`` or ``squash`` (see the module docstring).
        mean: Normalisation mean replacing the mode's.
        std: Normalisation std replacing the mode's.
        interpolation: ``bilinear`` or ``bicubic`` replacing the model's resampling (None: the
            model's own, bicubic for OpenAI's CLIPs).

    Raises:
        SpmlError: Unknown model, tag, preprocessing mode or interpolation, missing files, weights
            that cannot be downloaded.
    """
    name, tag = parse_spec(spec)
    preprocessing_for(Preprocess((1, 1), (0.0,) * 3, (1.0,) * 3), preprocessing, mean, std, interpolation)  # fail before loading
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if tag is not None:
            raise SpmlError(f"give either a pretrained tag ({spec}) or a checkpoint, not both", checkpoint)
        if name.startswith((HF_HUB, LOCAL_DIR)):
            raise SpmlError(f"{spec} brings its own weights; give no checkpoint", checkpoint)
        if not checkpoint.is_file():
            raise SpmlError("VLM checkpoint file not found", checkpoint)
    if model_config is not None:
        model_config = Path(model_config)
        _register_config(name, model_config)
    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR) :])
        if not (folder / "open_clip_config.json").is_file():
            raise SpmlError("not an open_clip model folder (no open_clip_config.json)", folder)
    elif not name.startswith(HF_HUB):
        if name not in open_clip.list_models():
            raise SpmlError(f"unknown open_clip model {name!r}; {_LIST_HINT}")
        if tag is None and checkpoint is None:
            raise SpmlError(
                f"{spec!r} has no weights: use open_clip:{name}/TAG (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(name)) or 'none shipped'}), "
                f"{VLM_PARAM}=open_clip:{name} {CHECKPOINT_PARAM}=FILE (local weights), or "
                f"{VLM_PARAM}=open_clip:{name}/{WEIGHTLESS_TAG} for random weights"
            )
        if tag not in (None, WEIGHTLESS_TAG) and tag not in open_clip.list_pretrained_tags_by_model(name):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise SpmlError(
                f"unknown pretrained tag {tag!r} for {name}; valid: {', '.join(tags) or 'none'} "
                "(all pairs: open_clip.list_pretrained())"
            )
    missing = missing_vlm_weights(spec, checkpoint)
    if missing is not None:  # offline and not cached: say so now, before open_clip retries for a minute
        raise SpmlError(missing_message([missing]))
    source = VlmSource(
        spec=spec, model_name=model_name_for(spec), pretrained=tag, checkpoint=checkpoint,
        model_config=model_config, quick_gelu=_quick_gelu_tag(name, tag), preprocessing=preprocessing,
        mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std),
        interpolation=interpolation,
    )
    return _load(source, torch.device(device), image_size=image_size)


def _register_config(name: str, path: Path) -> None:
    """Register a model config with open_clip, which names configs after their file stem."""
    try:
        cfg = readers.read_json(path, "VLM model config")
    except readers.NotJson as err:
        raise SpmlError(f"VLM model config is not JSON ({err.message})", path) from None
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise SpmlError(f"not an open_clip model config (missing {', '.join(missing)})", path)
    if path.stem != name:
        raise SpmlError(f"open_clip registers this config as {path.stem!r}, but the spec names {name!r}", path)
    open_clip.add_model_config(path)


def _identity(source: VlmSource) -> dict[str, Any]:
    identity: dict[str, Any] = {"model": source.model_name, "pretrained": source.pretrained}
    if source.checkpoint is not None:
        identity["checkpoint_sha256"] = hash_file(source.checkpoint)
    if source.model_config is not None:
        identity["model_config"] = hash_material(readers.read_json(source.model_config, "VLM model config"))
    if source.model_name.startswith(LOCAL_DIR):  # the folder's contents, not its path, name the weights
        folder = Path(source.model_name[len(LOCAL_DIR) :])
        identity["model"] = LOCAL_DIR + folder.resolve().name
        identity["files_sha256"] = {
            f.name: hash_file(f) for f in sorted(folder.iterdir()) if f.suffix in (".json", ".safetensors", ".bin", ".pth")
        }
    return identity


# The method parameters that name a CLIP: the one spelling of the offline advice (the CLI writes
# them as --set KEY=VALUE for spml train, as --vlm / --vlm-checkpoint for spml score).
VLM_PARAM, CHECKPOINT_PARAM = "method_params.vlm", "method_params.vlm_checkpoint"
_QUICK_GELU_NOTE = "the -quickgelu name keeps the activation these weights were trained with"
# Where open_clip keeps weights it downloads from a URL (its download_pretrained_from_url default).
_URL_CACHE = Path("~/.cache/clip").expanduser()


def _hub_source(model_name: str, tag: str) -> tuple[str, str, list[str]] | None:
    """``(repo, file to name, files open_clip may load)`` of a pretrained tag on the hub, or None."""
    hub = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    return repo.rstrip("/"), filename, [filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def missing_vlm_weights(spec: str, checkpoint: str | Path | None = None) -> MissingWeights | None:
    """The weights ``spec`` needs when they are neither in the local cache nor downloadable, else None.

    Asks nothing of the network when the weights are cached, a checkpoint file is given, or the
    tag is ``none``; otherwise :func:`spml.models.hub.online` (asked once per process).
    """
    if checkpoint is not None:
        return None
    name, tag = parse_spec(spec)
    if name.startswith(LOCAL_DIR) or tag == WEIGHTLESS_TAG:
        return None
    if name.startswith(HF_HUB):
        repo = name[len(HF_HUB) :]
        if hub_file_cached(repo, ["open_clip_config.json"]) or online():
            return None
        return MissingWeights(
            what=f"CLIP {spec}", file=f"open_clip_config.json and the weights of huggingface.co/{repo}",
            settings={VLM_PARAM: f"open_clip:{LOCAL_DIR}FOLDER"},
        )
    if tag is None or name not in open_clip.list_models():
        return None  # no weights named (or an unknown name): load_vlm says so
    model_name = model_name_for(spec)
    hub = _hub_source(model_name, tag)
    url = (open_clip.get_pretrained_cfg(model_name, tag) or {}).get("url", "")
    if hub is not None and hub_file_cached(hub[0], hub[2]):
        return None
    if url and (_URL_CACHE / file_name(url)).is_file():
        return None
    if online():
        return None
    where = f"{hub[1]} from huggingface.co/{hub[0]}" if hub is not None else (url or "the weights file")
    return MissingWeights(
        what=f"CLIP {spec}",
        file=where,
        settings={VLM_PARAM: f"open_clip:{model_name}", CHECKPOINT_PARAM: "FILE"},
        note=_QUICK_GELU_NOTE if _quick_gelu_tag(name, tag) else "",
    )


def _missing_weights_message(source: VlmSource) -> str:
    """open_clip failed to download: the same advice as :func:`missing_vlm_weights`."""
    if source.model_name.startswith(HF_HUB):
        repo = source.model_name[len(HF_HUB) :]
        missing = MissingWeights(
            what=f"CLIP {source.spec}", file=f"open_clip_config.json and the weights of huggingface.co/{repo}",
            settings={VLM_PARAM: f"open_clip:{LOCAL_DIR}FOLDER"},
        )
    else:
        hub = _hub_source(source.model_name, source.pretrained or "")
        url = (open_clip.get_pretrained_cfg(source.model_name, source.pretrained or "") or {}).get("url", "")
        missing = MissingWeights(
            what=f"CLIP {source.spec}", file=f"{hub[1]} from huggingface.co/{hub[0]}" if hub else (url or "the weights file"),
            settings={VLM_PARAM: f"open_clip:{source.model_name}", CHECKPOINT_PARAM: "FILE"},
            note=_QUICK_GELU_NOTE if source.quick_gelu else "",
        )
    return f"the weights are not available (download failed): {missing.describe()}"


def _load(source: VlmSource, device: torch.device, image_size: int | None) -> VLM:
    weightless = source.pretrained == WEIGHTLESS_TAG
    pretrained = str(source.checkpoint) if source.checkpoint is not None else source.pretrained
    kwargs: dict[str, Any] = {"force_image_size": image_size} if image_size is not None else {}
    if source.quick_gelu:  # needed only where open_clip has no -quickgelu name; harmless otherwise
        kwargs["force_quick_gelu"] = True
    # open_clip logs every missing-weights / random-init decision as a warning; spml reports its own.
    factory_log = logging.getLogger()
    level = factory_log.level
    factory_log.setLevel(logging.ERROR if weightless else level)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random weights of a weightless model are always the same
            model, _, _ = open_clip.create_model_and_transforms(
                source.model_name,
                pretrained=None if weightless else pretrained,
                load_weights=not weightless,
                device=device,
                weights_only=True,
                **kwargs,
            )
    except RuntimeError as err:
        text = str(err)
        if "Failed to download" in text or "cannot find the requested files" in text:
            raise SpmlError(_missing_weights_message(source)) from None
        where = source.checkpoint or source.model_config
        raise SpmlError(f"open_clip could not build {source.spec}: {text.splitlines()[0][:300]}", where) from None
    except Exception as err:  # noqa: BLE001 - unreadable user files fail in many libraries' own ways
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise SpmlError(f"open_clip could not load {source.spec}: {first}", source.checkpoint) from None
    finally:
        factory_log.setLevel(level)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(source.model_name)
    return VLM(
        model=model,
        preprocess=preprocessing_for(
            Preprocess.from_open_clip(model.visual.preprocess_cfg), source.preprocessing, source.mean, source.std,
            source.interpolation,
        ),
        tokenizer=tokenizer,
        identity=_identity(source),
        device=device,
        source=source,
    )
