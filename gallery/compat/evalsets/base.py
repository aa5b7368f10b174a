"""What the checker needs from an evaluation set, whatever its on-disk format.

Items are what an encoder embeds (images, or faces for IJB-C); units are what
the protocols compare (items themselves, or IJB-C templates aggregated from
them). A set gives either identity labels per unit (the checker then builds the
seeded 1:1 and 1:N protocols) or fixed pairs / a fixed 1:N split, or both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from gallery.compat.protocols import (
    PairProtocol,
    ProtocolConfig,
    SearchProtocol,
    search_protocol,
    verification_protocol,
)
from gallery.encoder import Encoder, embed_images
from gallery.errors import BadInput

Progress = Callable[[int], None] | None


@dataclass
class Embedded:
    """Every role's item embeddings over the same items: all of the set's, or only `kept`
    (positions) when some could not be embedded (`errors`: {"item", "error"} each)."""
    items: dict[str, np.ndarray]
    kept: np.ndarray | None = None
    errors: list[dict] = field(default_factory=list)


class EvalSet:
    kind: str = ""

    def __init__(self, path: str, fingerprint: str, num_items: int) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self.num_items = num_items

    # -- embedding -----------------------------------------------------------
    def image_batches(self, encoder: Encoder, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 NHWC batches in the encoder's size and colour order, in item order."""
        raise NotImplementedError

    def embed(self, encoder: Encoder, batch_size: int = 64, progress: Progress = None) -> np.ndarray:
        parts = []
        for batch in self.image_batches(encoder, batch_size):
            parts.append(embed_images(encoder, batch))
            if progress is not None:
                progress(len(batch))
        return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)

    def embed_roles(self, encoders: Mapping[str, Encoder], batch_size: int = 64, progress: Progress = None,
                    detect: bool | None = None, detector: str | Path | None = None,
                    on_error: str = "skip") -> Embedded:
        """Each encoder's embeddings of every item. Face detection applies to photo folders
        only (FolderSet): a .bin holds aligned crops, IJB-C aligns from its landmarks file."""
        if detect:
            raise BadInput(f"--detect applies to image folders; {self.path} is a {self.kind} set "
                           "(its faces are aligned already or by its landmarks)")
        return Embedded({role: self.embed(enc, batch_size, progress) for role, enc in encoders.items()})

    def subset(self, kept: np.ndarray) -> "EvalSet":
        """The set restricted to items `kept` (positions), for sets whose units are items."""
        raise BadInput(f"a {self.kind} set cannot leave items out")

    def to_units(self, item_features: np.ndarray) -> np.ndarray:
        """Item embeddings -> unit embeddings (L2-normalised by the checker)."""
        return item_features

    # -- protocols -------------------------------------------------------------
    def unit_labels(self) -> np.ndarray | None:
        return None

    def pair_protocol(self, config: ProtocolConfig) -> PairProtocol | None:
        labels = self.unit_labels()
        return None if labels is None else verification_protocol(labels, config)

    def search_protocol(self, config: ProtocolConfig) -> SearchProtocol | None:
        labels = self.unit_labels()
        return None if labels is None else search_protocol(labels, config)

    def describe(self) -> dict:
        labels = self.unit_labels()
        return {
            "kind": self.kind,
            "path": self.path,
            "fingerprint": self.fingerprint,
            "num_items": int(self.num_items),
            "num_identities": None if labels is None else int(np.unique(labels).size),
        }
