"""An audit of a run's maps: per class, SpRAy clusters, where their evidence lies, and flags.

:func:`audit_maps` groups the maps by the class they explain, clusters each class with
:func:`cnnviz.audit.spray.spectral_clusters`, measures every map's placement
(:mod:`cnnviz.audit.placement`) and flags the clusters whose evidence sits away from the object
or in a corner or at the border. With the images' true labels each cluster also says how many of
its members the model got right — a flagged cluster of correct predictions is the "right for the
wrong reason" of Lapuschkin et al. (2019). The result is a frozen value that
:mod:`cnnviz.render.audit_page` draws and :mod:`cnnviz.runs.audit` writes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

from cnnviz.audit.placement import Placement, PlacementSummary, placement
from cnnviz.audit.spray import (
    GRID,
    MAX_CLUSTERS,
    NEIGHBOURS,
    SpectralClusters,
    min_images,
    spectral_clusters,
)
from cnnviz.errors import AuditError, positive_int

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditSettings:
    """How the maps are clustered (:func:`~cnnviz.audit.spray.spectral_clusters`) and which
    classes are audited: those with at least ``min_images`` maps (default: twice the
    neighbours, the fewest SpRAy can cluster)."""

    neighbours: int = NEIGHBOURS
    max_clusters: int = MAX_CLUSTERS
    grid: int = GRID
    min_images: int | None = None
    seed: int = 0

    def fewest(self) -> int:
        """The fewest maps a class needs to be audited."""
        least = min_images(self.neighbours)
        return least if self.min_images is None else max(self.min_images, least)


@dataclass(frozen=True)
class ClusterAudit:
    """One cluster of one class: its members (indices into the run's images) and statistics."""

    index: int
    members: np.ndarray
    prototype: np.ndarray  # (g, g') mean mass distribution
    where: PlacementSummary
    flags: tuple[str, ...]
    correct: int | None  # members whose true label is the class (None: no labels)
    labelled: int  # members with a true label

    @property
    def size(self) -> int:
        return int(self.members.size)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


@dataclass(frozen=True)
class ClassAudit:
    """The audit of one class: its clustering, clusters and where its evidence lies overall."""

    index: int
    label: str
    members: np.ndarray  # indices into the run's images
    spectrum: SpectralClusters
    clusters: tuple[ClusterAudit, ...]
    where: PlacementSummary
    placements: Placement

    @property
    def flagged(self) -> tuple[ClusterAudit, ...]:
        return tuple(c for c in self.clusters if c.flagged)


@dataclass(frozen=True)
class Audit:
    """Every audited class, the classes skipped for too few maps, and per image its class,
    cluster and flags (``cluster = -1`` for an image of a skipped class)."""

    classes: tuple[ClassAudit, ...]
    skipped: dict[str, int]  # class label → its number of maps
    settings: AuditSettings
    image_cluster: np.ndarray  # (n,) cluster within the image's class, -1 if not audited

    def class_named(self, label: str) -> ClassAudit:
        for audited in self.classes:
            if audited.label == label:
                return audited
        raise KeyError(
            f"class {label!r} was not audited; audited: {[c.label for c in self.classes]}"
        )

    @property
    def flagged_count(self) -> int:
        return sum(len(c.flagged) for c in self.classes)

    def lines(self) -> list[str]:
        """One line per audited class: its clusters and the flagged ones with their flags."""
        lines = []
        for audited in self.classes:
            flagged = "; ".join(
                f"cluster {c.index} ({c.size} maps): {', '.join(c.flags)}" for c in audited.flagged
            )
            lines.append(
                f"{audited.label}: {audited.members.size} maps, {len(audited.clusters)} cluster(s)"
                + (f", flagged {flagged}" if flagged else ", none flagged")
            )
        return lines

    def __repr__(self) -> str:
        head = (
            f"Audit of {len(self.classes)} class(es), {self.flagged_count} flagged cluster(s)"
            + (f"; not audited (too few maps): {len(self.skipped)}" if self.skipped else "")
        )
        return "\n".join([head, *("  " + line for line in self.lines())])

    def _repr_html_(self) -> str:
        """A table, one row per class, for Jupyter."""
        rows = "".join(
            f"<tr><td>{escape(c.label)}</td><td>{c.members.size}</td><td>{len(c.clusters)}</td>"
            f"<td>{escape('; '.join(f'{k.index}: ' + ', '.join(k.flags) for k in c.flagged))}"
            "</td></tr>"
            for c in self.classes
        )
        return (
            f"<p>Audit of {len(self.classes)} class(es): <b>{self.flagged_count}</b> flagged "
            "cluster(s)</p><table><tr><th>class</th><th>maps</th><th>clusters</th>"
            f"<th>flagged</th></tr>{rows}</table>"
        )


def audit_maps(
    maps: np.ndarray,
    classes: np.ndarray,
    class_names: Sequence[str],
    *,
    labels: np.ndarray | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    settings: AuditSettings | None = None,
) -> Audit:
    """Audit ``(n, h, w)`` maps, each explaining class ``classes[i]`` (an index of
    ``class_names``).

    Args:
        labels: ``(n,)`` the images' true class indices, ``-1`` where unknown (a class the maps
            never explain may have any other negative index).
        masks: per image the object's ``(H, W)`` bool mask at the model input, or ``None``.

    Raises:
        AuditError: no class has enough maps (the message says how many are needed).
    """
    settings = settings or AuditSettings()
    positive_int(settings.neighbours, "neighbours")
    if maps.ndim != 3 or maps.shape[0] != classes.shape[0]:
        raise ValueError(
            f"expected (n, h, w) maps and (n,) classes, got {maps.shape}, {classes.shape}"
        )
    fewest = settings.fewest()
    counts = {int(c): int((classes == c).sum()) for c in np.unique(classes)}
    audited = [c for c, count in sorted(counts.items()) if count >= fewest]
    if not audited:
        most = max(counts.items(), key=lambda item: item[1], default=(0, 0))
        name = class_names[most[0]] if counts else "none"
        raise AuditError(
            f"an audit needs at least {fewest} maps of a class, but the most any class has is "
            f"{most[1]} ({name!r}); explain more images (or lower --min-images, at least "
            f"{min_images(settings.neighbours)} with {settings.neighbours} neighbours)."
        )
    skipped = {class_names[c]: count for c, count in counts.items() if count < fewest}
    if skipped:
        logger.warning(
            "%d class(es) have fewer than %d maps and are not audited: %s",
            len(skipped),
            fewest,
            ", ".join(f"{k} ({v})" for k, v in sorted(skipped.items())),
        )
    image_cluster = np.full(classes.shape[0], -1, dtype=np.int64)
    results = []
    for c in audited:
        result = _audit_class(c, class_names[c], maps, classes, labels, masks, settings)
        for cluster in result.clusters:
            image_cluster[cluster.members] = cluster.index
        results.append(result)
    return Audit(tuple(results), skipped, settings, image_cluster)


def _audit_class(
    index: int,
    label: str,
    maps: np.ndarray,
    classes: np.ndarray,
    labels: np.ndarray | None,
    masks: Sequence[np.ndarray | None] | None,
    settings: AuditSettings,
) -> ClassAudit:
    members = np.flatnonzero(classes == index)
    spectrum = spectral_clusters(
        maps[members],
        neighbours=settings.neighbours,
        max_clusters=settings.max_clusters,
        grid=settings.grid,
        seed=settings.seed,
    )
    where = placement(
        spectrum.grids, None if masks is None else [masks[i] for i in members.tolist()]
    )
    clusters = []
    for k in range(spectrum.count):
        local = spectrum.members(k)
        summary = where.mean(local)
        correct, labelled = None, 0
        if labels is not None:
            truth = labels[members[local]]
            labelled = int((truth != -1).sum())
            correct = int((truth == index).sum())
        clusters.append(
            ClusterAudit(
                k,
                members[local],
                spectrum.prototypes[k],
                summary,
                tuple(summary.flags()),
                correct,
                labelled,
            )
        )
    overall = where.mean(np.arange(members.size))
    return ClassAudit(index, label, members, spectrum, tuple(clusters), overall, where)
