"""Run folders and bundles: the one place that knows their layout.

A run folder (one per trained stage) holds the exported weights: ``model.safetensors`` + ``config.json``
(the VAE's also ``template.safetensors``). Loading never unpickles, checks every key and shape, and names
what is missing or unexpected.

A bundle is a folder::

    bundle.json                 format, versions, preprocessing, sampling defaults, output geometry
    pamae/  vae/  flow/         each model.safetensors + config.json
    template.safetensors        the anatomical template (C, 50, 12, 12), scaled latent units

Loading never unpickles; every weight key is checked; a partial or mismatched bundle fails with one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ecgflowcmr.atomic import atomic_dir, atomic_file, write_text_atomic
from ecgflowcmr.canonical import SPACING_MM
from ecgflowcmr.config import from_dict
from ecgflowcmr.errors import InputError
from ecgflowcmr.flow.objective import FlowConfig, FlowMatching
from ecgflowcmr.models.pa_mae import PAMAE, PAMAEConfig
from ecgflowcmr.models.vae3d import VAEConfig, VideoVAE
from ecgflowcmr.version import __version__

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TEMPLATE_FILE = "template.safetensors"
BUNDLE_FORMAT = "ecgflowcmr-bundle"
BUNDLE_VERSION = 1
STAGE_FOLDERS = ("pamae", "vae", "flow")
MAX_BUNDLE_JSON_BYTES = 1 << 20
"""bundle.json holds a few hundred bytes of metadata; a larger file is not one."""
MAX_JSON_DEPTH = 16


# --------------------------------------------------------------------------------------------------
# Run folders: exported weights
# --------------------------------------------------------------------------------------------------


def save_weights(module: nn.Module, folder: str | Path, config: dict[str, Any]) -> Path:
    """Write ``folder/model.safetensors`` (the module's state dict, fp32 as trained) and ``folder/config.json``.

    Tensors are copied to CPU, made contiguous and un-shared (safetensors refuses tied storage; a tied
    weight is stored under each of its names). Returns the weights path.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in module.state_dict().items()}
    write_text_atomic(folder / CONFIG_FILE, json.dumps(config, indent=2, default=str) + "\n")
    with atomic_file(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    return folder / WEIGHTS_FILE


def load_weights(module: nn.Module, folder: str | Path) -> nn.Module:
    """Load ``folder/model.safetensors`` into ``module`` (in place; returned).

    Every key and shape is checked first: missing keys, unexpected keys and shape mismatches raise
    :class:`InputError` naming the file and the offending keys, and nothing is loaded.
    """
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(path, "weights file not found (is this a finished run folder?)")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"not a readable safetensors file ({err})") from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = [f"{k} (file {tuple(tensors[k].shape)}, model {tuple(expected[k].shape)})"
                  for k in sorted(set(expected) & set(tensors)) if tensors[k].shape != expected[k].shape]
    problems = [f"{label}: {_some(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", mismatched))
                if keys]
    if problems:
        raise InputError(path, "does not fit the model; " + "; ".join(problems))
    module.load_state_dict(tensors, strict=True)
    return module


def build_to_fit(factory: Callable[[], nn.Module], folder: str | Path) -> nn.Module:
    """``factory()`` (a model built from ``folder/config.json``), only when the model it describes holds as
    many values as ``folder/model.safetensors``: the model is first built on the meta device (no memory),
    so a config asking for an absurd size is refused before anything is allocated."""
    from safetensors import safe_open

    folder = Path(folder)
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(path, "weights file not found (is this a finished run folder?)")
    try:
        with safe_open(str(path), framework="pt") as fh:
            stored = sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())  # noqa: SIM118 (no __iter__)
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"not a readable safetensors file ({err})") from None
    with torch.device("meta"):
        expected = sum(t.numel() for t in factory().state_dict().values())
    if expected != stored:
        raise InputError(folder / CONFIG_FILE, f"describes a model of {expected:,} values but {WEIGHTS_FILE} "
                         f"holds {stored:,}: the config and the weights do not belong together")
    return factory()


def read_config(folder: str | Path) -> dict[str, Any]:
    """The model configuration saved beside the weights (``folder/config.json``) as a dict."""
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "config file not found (is this a finished run folder?)") from None
    except json.JSONDecodeError as err:
        raise InputError(path, f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object")
    return data


def _some(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown}, … ({len(keys)} in all)"


def read_template(vae: Path) -> Tensor:
    """The VAE stage's anatomical template (C, 50, H', W') in scaled latent units."""
    path = Path(vae) / TEMPLATE_FILE
    if not path.exists():
        raise InputError(path, "template not found (the VAE stage's finalize writes it)")
    tensors = load_file(str(path))
    if "template" not in tensors:
        raise InputError(path, f"has no 'template' tensor (has: {', '.join(tensors)})")
    return tensors["template"].float()


NETWORKS: dict[str, tuple[type[nn.Module], type]] = {
    "pamae": (PAMAE, PAMAEConfig),
    "vae": (VideoVAE, VAEConfig),  # its weights hold the latent scale
    "flow": (FlowMatching, FlowConfig),  # its weights hold the template; its config α and sampling defaults
}
"""The network class and config dataclass of each stage's exported weights."""


def load_model(folder: str | Path, stage: str, device: str | torch.device = "cpu") -> nn.Module:
    """The trained network of ``stage`` (pamae, vae, flow) from a run folder or a bundle part
    (``config.json`` + ``model.safetensors``), in eval mode."""
    model_class, config_class = NETWORKS[stage]
    raw = read_config(folder)
    if isinstance(raw.get("model"), dict):  # a full run config rather than the model's
        raw = raw["model"]
    config = from_dict(config_class, raw, prefix="model.")
    model = build_to_fit(lambda: model_class(config), folder)
    load_weights(model, folder)
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Bundles
# --------------------------------------------------------------------------------------------------


def write_bundle(out: str | Path, *, pamae_run: Path, vae_run: Path, flow_run: Path, sampling: dict[str, Any],
                 geometry: dict[str, Any] | None = None) -> Path:
    """Assemble a bundle from three trained run folders (each holding model.safetensors + config.json)."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        for name, run in (("pamae", pamae_run), ("vae", vae_run), ("flow", flow_run)):
            run = Path(run)
            (tmp / name).mkdir()
            for fname in (WEIGHTS_FILE, CONFIG_FILE):
                if not (run / fname).exists():
                    raise InputError(run, f"is not a trained {name} run: {fname} missing")
                shutil.copy2(run / fname, tmp / name / fname)
        if not (Path(vae_run) / TEMPLATE_FILE).exists():
            raise InputError(vae_run, f"has no {TEMPLATE_FILE} (the VAE stage writes it after training)")
        shutil.copy2(Path(vae_run) / TEMPLATE_FILE, tmp / TEMPLATE_FILE)
        meta = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "ecgflowcmr": __version__,
            "torch": torch.__version__,
            "stages": {name: name for name in STAGE_FOLDERS},
            "preprocessing": {
                "ecg": "read_ecg: 12 leads I II III aVR aVL aVF V1-V6, mV, resampled to 500 Hz, "
                       "cropped/padded to 10 s",
                "cine": "read_cine: 50 frames over one R-R interval from the R-peak, heart crop, "
                        "96×96, per-sample percentile normalisation to [-1, 1]",
            },
            "sampling": sampling,
            "geometry": geometry or {"spacing_mm": [SPACING_MM, SPACING_MM]},
        }
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2))
    return out


def swap_decoder(model: str | Path, vae_run: str | Path, out: str | Path) -> Path:
    """A copy of bundle ``model`` (or a flow run folder's bundle) at ``out`` whose VAE is ``vae_run``: a ``train
    vae`` run with ``stage.train=decoder`` from the bundle's VAE (e.g. with ``model.gan_weight``). The flow was
    trained on the bundle VAE's latents, so everything but the decoder — the encoder, the latent scale and the
    template — must be the bundle's bit for bit; otherwise it is refused and nothing is written."""
    bundle, vae_run, out = find_bundle(model), Path(vae_run), Path(out)
    if out.exists():
        raise InputError(out, "already exists: give a new folder for the new bundle")
    meta = read_bundle_meta(bundle)
    kept = load_model(bundle / "vae", "vae").state_dict()
    new = load_model(vae_run, "vae").state_dict()
    differ = [k for k in kept if not k.startswith("decoder.")
              and (k not in new or new[k].shape != kept[k].shape or not torch.equal(new[k], kept[k]))]
    if differ:
        raise InputError(vae_run, f"its encoder is not the bundle's ({_some(differ, 3)} differ): fine-tune the "
                                  f"decoder alone from the bundle's VAE (stage.init=…, stage.train=decoder)")
    template, bundled = read_template(vae_run), read_template(bundle)
    if template.shape != bundled.shape or not torch.equal(template, bundled):
        raise InputError(vae_run / TEMPLATE_FILE, "is not the bundle's template: the flow starts from the "
                                                  "bundle's, so the decoder run must keep it")
    with atomic_dir(out) as tmp:
        for name in STAGE_FOLDERS:
            (tmp / name).mkdir()
            source = vae_run if name == "vae" else bundle / name
            for fname in (WEIGHTS_FILE, CONFIG_FILE):
                shutil.copy2(source / fname, tmp / name / fname)
        shutil.copy2(bundle / TEMPLATE_FILE, tmp / TEMPLATE_FILE)
        meta["decoder"] = {"from_run": str(vae_run.resolve()), "replaces_bundle": str(bundle.resolve())}
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=2))
    return out


def bundle_geometry(store: Path) -> dict[str, Any]:
    """Output geometry for generated cines: the median canonical pixel spacing of the training cines."""
    from ecgflowcmr.store.prepared import StoreDataset

    rows = StoreDataset(store, "train", fields=()).rows
    spacings = [[float(v) for v in r["cine_spacing_mm"].split()] for r in rows if r.get("cine_spacing_mm")]
    spacing = np.median(np.array(spacings), axis=0).tolist() if spacings else [SPACING_MM, SPACING_MM]
    return {"spacing_mm": spacing,
            "frame_interval": "R-R interval of the input ECG / 50 (median R-R over the record)",
            "definition": "median canonical (row, column) spacing of the training cines, mm"}


def read_bundle_meta(bundle: Path) -> dict[str, Any]:
    """``bundle.json`` parsed and checked: a JSON object of this format and version, its ``sampling`` and
    ``geometry`` of the right types. Raises InputError naming the file and the field."""
    from ecgflowcmr.limits import check_regular_file

    path = bundle / "bundle.json"
    size = check_regular_file(path, "bundle.json").st_size
    if size > MAX_BUNDLE_JSON_BYTES:
        raise InputError(path, f"{size:,} bytes: not a bundle description")
    try:
        meta = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise InputError(path, f"not valid JSON ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise InputError(path, "expected a JSON object")
    if _depth(meta) > MAX_JSON_DEPTH:
        raise InputError(path, f"nested deeper than {MAX_JSON_DEPTH} levels: not a bundle description")
    if meta.get("format") != BUNDLE_FORMAT or meta.get("version") != BUNDLE_VERSION:
        raise InputError(path, f"not a version-{BUNDLE_VERSION} {BUNDLE_FORMAT}")
    sampling, geometry = meta.get("sampling", {}), meta.get("geometry", {})
    if not isinstance(sampling, dict):
        raise InputError(path, f"sampling: expected an object, got {type(sampling).__name__}")
    if not isinstance(geometry, dict):
        raise InputError(path, f"geometry: expected an object, got {type(geometry).__name__}")
    spacing = geometry.get("spacing_mm", [2.0, 2.0])
    if (not isinstance(spacing, list) or len(spacing) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 100 for v in spacing)):
        raise InputError(path, f"geometry.spacing_mm: expected two positive numbers (mm), got {spacing!r}")
    return meta


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def bundle_digest(bundle: Path) -> str:
    """SHA-256 over the bundle's files (bundle.json, each stage's weights and config, the template): the
    identity of the model a generate job used."""
    digest = hashlib.sha256()
    names = ["bundle.json", "template.safetensors"] + [f"{s}/{f}" for s in STAGE_FOLDERS
                                                       for f in ("config.json", "model.safetensors")]
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(bundle / name, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def find_bundle(path: str | Path) -> Path:
    """``path`` itself when it is a bundle, else ``path/bundle`` (a flow run folder)."""
    path = Path(path)
    for candidate in (path, path / "bundle"):
        if (candidate / "bundle.json").exists():
            return candidate
    raise InputError(path, "not a bundle: no bundle.json (train the flow stage, which writes RUN/bundle/)")


def read_bundle(path: str | Path, device: str | torch.device = "cpu") -> tuple[Path, dict[str, Any], dict[str, nn.Module]]:
    """(bundle folder, bundle.json, {"pamae", "vae", "flow": network in eval mode}) of a bundle or of a flow run
    folder holding ``bundle/``; checks that every part is there and that the parts fit each other."""
    bundle = find_bundle(path)
    meta = read_bundle_meta(bundle)
    for name in STAGE_FOLDERS:
        for fname in (WEIGHTS_FILE, CONFIG_FILE):
            if not (bundle / name / fname).exists():
                raise InputError(bundle, f"partial bundle: {name}/{fname} missing")
    if not (bundle / TEMPLATE_FILE).exists():
        raise InputError(bundle, f"partial bundle: {TEMPLATE_FILE} missing")
    nets = {name: load_model(bundle / name, name, device) for name in STAGE_FOLDERS}
    check_compatible(bundle, nets["pamae"], nets["vae"], nets["flow"])
    return bundle, meta, nets


def check_compatible(bundle: Path, pamae: torch.nn.Module, vae: torch.nn.Module, flow: torch.nn.Module) -> None:
    """The three networks must agree on the ECG token width and the latent shape."""
    path = bundle / TEMPLATE_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InputError(path, f"not a readable safetensors file ({err})") from None
    if "template" not in tensors:
        raise InputError(path, f"has no 'template' tensor (has: {', '.join(tensors) or 'nothing'})")
    template = tensors["template"]
    flow_template = getattr(flow, "template", None)
    if flow_template is not None and tuple(flow_template.shape) != tuple(template.shape):
        raise InputError(bundle, f"mismatched bundle: template {tuple(template.shape)} vs flow's "
                                 f"{tuple(flow_template.shape)}")
    for name, module in (("pamae", pamae), ("vae", vae), ("flow", flow)):
        bad = [k for k, t in module.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if bad:
            raise InputError(bundle / name / "model.safetensors", f"non-finite weights in {', '.join(bad[:4])}")
