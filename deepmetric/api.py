"""Put a trained model to work in a few lines.

>>> import deepmetric
>>> model = deepmetric.load("runs/cub")                 # the run's selected checkpoint + its preprocessing
>>> vectors = model.embed("photos/")                    # paths, a folder, PIL images or arrays
>>> index = model.build_index("gallery/", backend="faiss_hnsw")
>>> for result in index.search(["query.jpg"], k=5):
...     print(result.query, [(hit.path, hit.label, hit.distance) for hit in result.hits])
>>> index.save("gallery_index"); index = deepmetric.load_index("gallery_index")

``deepmetric.load`` also takes a model exported to ONNX (:mod:`deepmetric.export`; embedding then runs in
ONNX Runtime). Images go through the model's own evaluation preprocessing: channel conversion, resize of
the shorter side, centre crop, 0..1 tensor; the normalisation (mean/std, BGR, 0..255 scaling) belongs to
the network, exactly as in the exported graph. Distances reported here are "smaller is closer":
``1 - cosine similarity`` for cosine models, ``-dot`` for dot products, plain Euclidean distances.

``deepmetric.load_index`` also opens an index folder built by ``deepmetric build-index`` from embedding
shards (IVF-PQ, IVF-Flat, Hamming; :mod:`deepmetric.retrieval.sharded_index`): queries are embedded with
the model that embedded the shards and searched the same way; such an index is read-only here.

Galleries: a folder with one sub-folder per class (labels are the folder names) or a flat folder of images
(no labels), a list of paths, or a labelled dataset. File items are identified by their absolute path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from tqdm.auto import tqdm

from deepmetric.data.base import load_image
from deepmetric.data.folder import IMAGE_EXTENSIONS, class_folders, image_files
from deepmetric.data.transforms import ConvertChannels
from deepmetric.evaluation.calibration import (
    Threshold,
    as_distance,
    choose_threshold,
    pair_distances,
    roc_points,
)
from deepmetric.models.backbones import InputSpec
from deepmetric.models.features import model_fingerprint
from deepmetric.models.features import spec_to_json as spec_to_json  # for deepmetric.export
from deepmetric.retrieval import Index
from deepmetric.retrieval.sharded_index import INDEX_FILE as SHARDED_INDEX_FILE
from deepmetric.retrieval.sharded_index import ShardedIndex

SIDECAR_FORMAT = "deepmetric-export-1"
ROC_POINTS = 200  # ROC points kept with a calibration (for report.html)


class InputNormalization(nn.Module):
    """The network side of preprocessing: 0..1 images -> 0..255 (``scale_255``), RGB -> BGR, mean/std."""

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.scale = 255.0 if spec.scale_255 else 1.0
        self.bgr = spec.bgr
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images * self.scale
        if self.bgr:
            images = images.flip(1)
        return (images - self.mean) / self.std


def geometry_transform(spec: InputSpec) -> Callable[[Image.Image], torch.Tensor]:
    """The image side of preprocessing: PIL image -> ``channels x size x size`` float tensor in 0..1
    (the evaluation pipeline of :func:`deepmetric.data.transforms.build_transform` minus normalisation)."""
    return T.Compose(
        [
            ConvertChannels(spec.channels),
            T.Resize(spec.resize_size),
            T.CenterCrop(spec.image_size),
            T.ToTensor(),
        ]
    )


# ---------------------------------------------------------------------------------------------- items


@dataclass
class Item:
    """One image to embed: how to get it, and its path when it is a file."""

    load: Callable[[], Image.Image]
    path: str | None = None


def _array_image(array: np.ndarray) -> Image.Image:
    """uint8 arrays as they are; float arrays must be in 0..1 and are quantised to 8 bits like image files."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"an image array must be H x W or H x W x 3/4, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError("float image arrays must hold values in 0..1")
        array = np.round(array * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0..255) or float (0..1), got {array.dtype}")
    return Image.fromarray(array)


def _file_item(path: Path) -> Item:
    resolved = path.resolve()
    return Item(lambda: load_image(resolved), str(resolved))


def image_items(items: Any) -> list[Item]:
    """Paths (files or folders of images, searched recursively), PIL images, arrays, datasets or lists."""
    if isinstance(items, (str, Path)):
        path = Path(items)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise FileNotFoundError(f"no images in folder {path}")
            return [_file_item(p) for p in files]
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        return [_file_item(path)]
    if isinstance(items, Image.Image):
        return [Item(lambda: items)]
    if isinstance(items, np.ndarray):
        # one H x W or H x W x C image, or a stack of them
        single = items.ndim == 2 or (items.ndim == 3 and items.shape[-1] in (1, 3, 4))
        return [Item(lambda a=items: _array_image(a))] if single else [*image_items(list(items))]
    if isinstance(items, torch.utils.data.Dataset) and hasattr(items, "labels"):
        return dataset_items(items)[0]
    if isinstance(items, Iterable):
        result = []
        for item in items:
            if isinstance(item, (str, Path)) and Path(item).is_dir():
                raise ValueError(f"give a folder on its own, not inside a list: {item}")
            if isinstance(item, np.ndarray):
                result.append(Item(lambda a=item: _array_image(a)))
            else:
                result += image_items(item)
        return result
    raise ValueError(f"cannot embed a {type(items).__name__}: give paths, a folder, PIL images or arrays")


def dataset_items(dataset: torch.utils.data.Dataset) -> tuple[list[Item], list[str]]:
    """The raw images of a labelled dataset (a ``Subset`` too) and their class names."""
    base, indices = dataset, list(range(len(dataset)))
    while isinstance(base, torch.utils.data.Subset):
        indices = [base.indices[i] for i in indices]
        base = base.dataset
    if not hasattr(base, "load"):
        raise ValueError(f"{type(base).__name__} has no raw images to embed")
    paths = getattr(base, "paths", None)
    items = [
        Item(lambda i=i: base.load(i), str(Path(paths[i]).resolve()) if paths is not None else None)
        for i in indices
    ]
    names = getattr(dataset, "class_names", None)
    labels = [names[int(label)] if names else str(int(label)) for label in np.asarray(dataset.labels)]
    return items, labels


def gallery_items(gallery: Any) -> tuple[list[Item], list[str] | None]:
    """Items and labels of a gallery: a class-per-sub-folder folder (labelled), a flat folder or list
    (unlabelled), or a labelled dataset."""
    if isinstance(gallery, torch.utils.data.Dataset) and hasattr(gallery, "labels"):
        return dataset_items(gallery)
    if isinstance(gallery, (str, Path)) and Path(gallery).is_dir():
        root = Path(gallery)
        classes = [(folder.name, image_files(folder)) for folder in class_folders(root)]
        classes = [(name, files) for name, files in classes if files]
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        if classes and loose:
            raise ValueError(
                f"{root} has both images and class sub-folders; use one sub-folder per class or a flat folder"
            )
        if classes:
            items = [_file_item(p) for _, files in classes for p in files]
            return items, [name for name, files in classes for _ in files]
    return image_items(gallery), None


# --------------------------------------------------------------------------------------------- models


class _TorchRunner:
    def __init__(self, module: nn.Module, device: str) -> None:
        self.module, self.device = module.eval(), device

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.module(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()


class _OnnxRunner:
    def __init__(self, path: Path, threads: int | None) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ValueError(
                "embedding with an ONNX model needs onnxruntime (pip install onnxruntime)"
            ) from None
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: batch})[0].astype(np.float32)


@dataclass
class LoadedModel:
    """A model ready to embed images: its preprocessing, its runner (PyTorch or ONNX Runtime), its
    distance and a fingerprint that ties indexes to it."""

    spec: InputSpec
    runner: Callable[[np.ndarray], np.ndarray]
    fingerprint: str
    distance: str
    embedding_size: int
    source: dict[str, Any]  # how to load it again: {"run": dir, "checkpoint": name} or {"onnx": file}
    config: Any = None  # the run's ExperimentConfig (None for exported models)
    module: nn.Module | None = None  # normalisation + network, for PyTorch models
    transform: Callable[[Image.Image], torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.transform = geometry_transform(self.spec)

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> ``N x C x H x W`` float32 batch in 0..1 at the model's input size."""
        return torch.stack([self.transform(image) for image in images]).numpy()

    def embed(self, items: Any, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """``N x embedding_size`` float32 embeddings of image paths, a folder, PIL images or arrays."""
        return self.embed_items(image_items(items), batch_size, progress)

    def embed_items(self, items: Sequence[Item], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not items:
            raise ValueError("nothing to embed: no images given")
        chunks = []
        with tqdm(total=len(items), desc="embed", unit="img", disable=not progress, leave=False) as bar:
            for start in range(0, len(items), batch_size):
                batch = items[start : start + batch_size]
                chunks.append(self.runner(self.preprocess([item.load() for item in batch])))
                bar.update(len(batch))
        return np.concatenate(chunks)

    def build_index(
        self,
        gallery: Any,
        backend: str = "torch",
        labels: Sequence[Any] | None = None,
        batch_size: int = 64,
        progress: bool = True,
        **backend_params: Any,
    ) -> ImageIndex:
        """An :class:`ImageIndex` over a gallery folder, paths, images or a labelled dataset."""
        index = ImageIndex(self, Index(self.embedding_size, self.distance, backend, **backend_params))
        index.add(gallery, labels=labels, batch_size=batch_size, progress=progress)
        return index

    def run_dataset(self, split: str) -> torch.utils.data.Dataset:
        """A split of the run's dataset (``train``, ``test``, ``validation`` = the held-out training
        classes of ``data.validation_classes``), images untransformed."""
        if self.config is None:
            raise ValueError("this model was not loaded from a run folder; give a labelled folder instead")
        from deepmetric.data import get_dataset, subset
        from deepmetric.training.data import split_validation_classes

        data = self.config.data
        if split != "validation":
            return get_dataset(data.name, root=data.root, split=split, **data.options)
        if data.validation_classes <= 0:
            raise ValueError("the run has no validation split (data.validation_classes is 0)")
        train = get_dataset(data.name, root=data.root, split=data.train_split, **data.options)
        held_out = split_validation_classes(
            np.asarray(train.labels), data.validation_classes, self.config.seed
        )
        return subset(train, held_out)


def load(
    source: str | Path, checkpoint: str = "auto", device: str = "cpu", threads: int | None = None
) -> LoadedModel:
    """A run folder's model (``checkpoint``: auto, best or last) or an exported ONNX file (``threads``:
    ONNX Runtime's intra-op threads, default all cores)."""
    source = Path(source)
    if source.is_file() and source.suffix == ".onnx":
        sidecar = Path(f"{source}.json")
        if not sidecar.is_file():
            raise FileNotFoundError(f"{source} has no sidecar {sidecar.name} (written by deepmetric export)")
        meta = json.loads(sidecar.read_text())
        if meta.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"{sidecar} is not a deepmetric export sidecar")
        spec = InputSpec(**{key: tuple(v) if isinstance(v, list) else v for key, v in meta["input"].items()})
        return LoadedModel(
            spec,
            _OnnxRunner(source, threads),
            meta["fingerprint"],
            meta["distance"],
            meta["embedding_size"],
            {"onnx": str(source.resolve())},
        )
    from deepmetric.training.embed import load_model, selected_checkpoint
    from deepmetric.training.run_folder import RunFolder

    run = RunFolder(source)
    if not run.config_file.is_file():
        raise FileNotFoundError(
            f"{source} is neither a run folder (no {run.CONFIG}) nor an exported .onnx file"
        )

    if checkpoint not in ("auto", "best", "last"):
        raise ValueError(f"checkpoint must be auto, best or last, got {checkpoint!r}")
    chosen = selected_checkpoint(run) if checkpoint == "auto" else checkpoint
    if not run.checkpoint_file(chosen).is_file():
        raise FileNotFoundError(f"{source} has no checkpoint {chosen}.pt")
    config = run.load_config()
    return from_model(
        load_model(run, chosen, device),
        config.eval.distance,
        device,
        {"run": str(source.resolve()), "checkpoint": chosen},
        config,
    )


def from_model(
    network: nn.Module,
    distance: str = "cosine",
    device: str = "cpu",
    source: dict[str, Any] | None = None,
    config: Any = None,
) -> LoadedModel:
    """Wrap an :class:`~deepmetric.models.EmbeddingModel` (anything with ``input_spec`` and
    ``embedding_size``) built in Python; indexes it builds cannot be reloaded without ``model=``."""
    spec = network.input_spec
    module = nn.Sequential(InputNormalization(spec), network).to(device).eval()
    return LoadedModel(
        spec,
        _TorchRunner(module, device),
        model_fingerprint(network, spec),
        distance,
        network.embedding_size,
        source or {},
        config=config,
        module=module,
    )


# -------------------------------------------------------------------------------------------- indexes


@dataclass
class Hit:
    id: str
    path: str | None
    label: Any
    distance: float


@dataclass
class QueryResult:
    query: str | None
    hits: list[Hit]

    def as_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "results": [{"path": h.path, "label": h.label, "distance": h.distance} for h in self.hits],
        }


class ImageIndex:
    """An index of images tied to the model that embedded them: an in-memory
    :class:`~deepmetric.retrieval.Index`, or a read-only :class:`~deepmetric.retrieval.sharded_index.ShardedIndex`
    (both give ``search_results``, ``distance_name`` and ``info``)."""

    def __init__(self, model: LoadedModel, index: Index | ShardedIndex) -> None:
        self.model, self.index = model, index
        if isinstance(index, Index):
            index.model_fingerprint = model.fingerprint
            self.own_distance = index.backend.own_distance
        else:
            self.own_distance = index.own_distance

    def _editable(self, action: str) -> Index:
        if not isinstance(self.index, Index):
            raise ValueError(
                f"cannot {action} a sharded index ({self.index.folder}); embed-shards and build-index make it"
            )
        return self.index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def threshold(self) -> float | None:
        calibration = self.index.info.get("calibration")
        return None if calibration is None else calibration["threshold"]

    def add(
        self,
        gallery: Any,
        labels: Sequence[Any] | None = None,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> int:
        """Embed and add images (see :func:`gallery_items`); file items are identified by their absolute
        path, other items by ``ids`` (default: their positions). Returns how many were added."""
        self._editable("add to")
        items, found_labels = gallery_items(gallery)
        labels = found_labels if labels is None else [str(label) for label in labels]
        if labels is not None and len(labels) != len(items):
            raise ValueError(f"{len(labels)} labels for {len(items)} images")
        if len(self.index) and (labels is None) != (self.index.labels is None):
            raise ValueError(
                "this index is " + ("labelled" if labels is None else "unlabelled") + "; add alike"
            )
        if ids is None:
            ids = [item.path or str(len(self.index) + i) for i, item in enumerate(items)]
        ids = [str(i) for i in ids]
        if len(ids) != len(items):
            raise ValueError(f"{len(ids)} ids for {len(items)} images")
        duplicates = set(self.index.ids).intersection(ids) or {i for i in ids if ids.count(i) > 1}
        if duplicates:
            raise ValueError(f"already in the index: {sorted(duplicates)[:3]}")
        vectors = self.model.embed_items(items, batch_size, progress)
        self.index.add(vectors, None if labels is None else np.asarray(labels, dtype=str), ids)
        return len(items)

    def remove(self, ids: Any) -> int:
        """Remove items by id (a path, or a list of them; paths are resolved like :meth:`add` does)."""
        self._editable("remove from")
        ids = [ids] if isinstance(ids, (str, Path)) else list(ids)
        known = set(self.index.ids)
        return self.index.remove([i if str(i) in known else str(Path(i).resolve()) for i in ids])

    def search(
        self, queries: Any, k: int = 10, batch_size: int = 64, progress: bool = False
    ) -> list[QueryResult]:
        """The ``k`` nearest gallery items of each query image, nearest first."""
        items = image_items(queries)
        vectors = self.model.embed_items(items, batch_size, progress)
        return self.search_vectors(vectors, k, [item.path for item in items])

    def search_vectors(self, vectors: np.ndarray, k: int, names: Sequence[str | None]) -> list[QueryResult]:
        result = self.index.search_results(vectors, k)
        distances = result.distances
        if self.own_distance is None:  # a Hamming backend already reports distances
            distances = as_distance(distances, self.index.distance_name)
        labels = result.labels
        output = []
        for q, name in enumerate(names):
            hits = [
                Hit(
                    item_id,
                    item_id if Path(item_id).is_absolute() else None,
                    None if labels is None else labels[q][j],
                    float(distances[q, j]),
                )
                for j, item_id in enumerate(result.ids[q])
                if item_id is not None
            ]
            output.append(QueryResult(name, hits))
        return output

    def calibrate(
        self,
        data: Any = None,
        target_precision: float | None = None,
        target_false_match_rate: float | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> Threshold:
        """Choose the match threshold on labelled calibration data and keep it with the index.

        ``data``: a labelled folder (one sub-folder per class) or dataset; by default the run's validation
        split (never its test classes). The data used is recorded in the index's metadata."""
        self._editable("calibrate")
        if self.own_distance is not None:
            raise ValueError(
                f"this index ranks by {self.own_distance} distance; "
                "calibrate a threshold on an index with a float backend (exact, faiss-*)"
            )
        if data is None:
            data = self.model.run_dataset("validation")
            described = f"validation split of {self.model.source.get('run')}"
        else:
            described = str(Path(data).resolve()) if isinstance(data, (str, Path)) else type(data).__name__
        items, labels = gallery_items(data)
        if labels is None:
            raise ValueError(f"calibration data must be labelled (one sub-folder per class): {described}")
        vectors = self.model.embed_items(items, batch_size, progress)
        pairs = pair_distances(vectors, np.asarray(labels), self.index.distance_name)
        chosen = choose_threshold(
            pairs.distances,
            pairs.is_same,
            target_precision,
            target_false_match_rate,
            pairs.positive_weight,
            pairs.negative_weight,
        )
        false_rate, true_rate, thresholds = roc_points(pairs.distances, pairs.is_same)
        keep = np.unique(np.linspace(0, len(thresholds) - 1, ROC_POINTS).round().astype(int))
        roc = {
            "false_match_rate": false_rate[keep].tolist(),
            "true_match_rate": true_rate[keep].tolist(),
            "thresholds": thresholds[keep].tolist(),
        }
        self.index.info["calibration"] = {
            **chosen.as_dict(),
            "data": described,
            "num_items": len(items),
            "roc": roc,
        }
        return chosen

    def match(self, queries: Any, batch_size: int = 64) -> list[Hit | None]:
        """Per query its nearest gallery item when within the calibrated threshold, else None."""
        if self.threshold is None:
            raise ValueError("the index has no match threshold; calibrate it first")
        return [self.decide(result) for result in self.search(queries, 1, batch_size)]

    def decide(self, result: QueryResult) -> Hit | None:
        if self.threshold is None or not result.hits:
            return None
        return result.hits[0] if result.hits[0].distance <= self.threshold else None

    def save(self, directory: str | Path) -> Path:
        """Write the index atomically, with how to load its model again."""
        index = self._editable("save")
        index.info["model"] = self.model.source
        return index.save(directory)


def load_index(directory: str | Path, model: LoadedModel | None = None) -> ImageIndex:
    """An index saved by :meth:`ImageIndex.save`, with its model (loaded from where the index says unless
    ``model`` is given; a model other than the one that built the index is refused)."""
    directory = Path(directory)
    if (directory / SHARDED_INDEX_FILE).is_file():
        return _load_sharded_index(directory, model)
    if not (directory / "metadata.json").is_file():
        raise FileNotFoundError(f"{directory} holds no index (metadata.json is missing)")
    if model is None:
        source = json.loads((directory / "metadata.json").read_text()).get("info", {}).get("model")
        if not source:
            raise ValueError(
                f"{directory} does not say which model built it; pass model=deepmetric.load(...)"
            )
        location = source.get("run") or source.get("onnx")
        if not Path(location).exists():
            raise FileNotFoundError(f"the model that built {directory} is gone: {location}")
        model = load(location, source.get("checkpoint", "auto"))
    return ImageIndex(model, Index.load(directory, model_fingerprint=model.fingerprint))


def _load_sharded_index(directory: Path, model: LoadedModel | None) -> ImageIndex:
    """A ``build-index`` folder with the model recorded in its shards' manifest (or ``model``)."""
    index = ShardedIndex(directory)
    source = index.shards.plan.source
    if model is None:
        run = source.get("run")
        if not run:
            raise ValueError(
                f"the shards of {directory} ({index.shards.directory}) do not say which run embedded them; "
                "pass model=deepmetric.load(...)"
            )
        if not Path(run).exists():
            raise FileNotFoundError(f"the run that embedded the shards of {directory} is gone: {run}")
        model = load(run, source.get("checkpoint", "auto"))
    stored = index.model_fingerprint
    if stored is not None and stored != model.fingerprint:
        raise ValueError(
            f"the shards of {directory} were embedded by another model (fingerprint {stored}, this model's "
            f"is {model.fingerprint}); embed them again with this model"
        )
    if model.embedding_size != index.dim:
        raise ValueError(
            f"{directory} holds {index.dim}-d vectors but the model makes {model.embedding_size}-d"
        )
    return ImageIndex(model, index)
