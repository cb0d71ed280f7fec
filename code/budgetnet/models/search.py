"""Budget search: enumerate a grid of ResNets, keep those under a parameter budget, rank them.

The grid crosses units per stage (B, each stage on its own), first-stage width (C; every later
stage doubles it), kernel size (F) and head pool (P). Counting is analytic, so the default grid of
25,000 candidates ranks in about a second (benchmarks/search_speed.py measures it).

Ranking rule: most FLOPs per image first, then fewer parameters. The budget caps parameters,
not compute, and at a given size more compute (depth, and width at high resolution) is the usual
route to accuracy. It is a proxy: `rank_by_training` re-ranks the best K by validation accuracy.

Pareto front (params vs FLOPs): a candidate is on it when no other has at most its parameters
and at least its FLOPs, one of them strictly: the most compute for its parameter count.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from budgetnet.errors import UserError, brief
from budgetnet.files import atomic_write, read_yaml
from budgetnet.models.complexity import count_flops, count_params
from budgetnet.models.spec import MAX_BLOCKS, ResNetSpec
from budgetnet.tables import markdown_table

RANKING_RULE = "most FLOPs per image first, then fewer parameters"
MAX_CANDIDATES = 10**6  # grid size: the default 25,000 rank in about a second
COLUMNS = ("rank", "blocks", "channels", "kernel", "pool", "params", "flops", "pareto")


@dataclasses.dataclass(frozen=True)
class Grid:
    """The candidates: every combination of the value lists, as ResNetSpecs."""

    stages: int = 3
    blocks: tuple[int, ...] = (1, 2, 3, 4, 5)  # choices for each stage's unit count
    widths: tuple[int, ...] = tuple(range(32, 81, 2))  # first-stage channels; stages double
    kernels: tuple[int, ...] = (3, 5)
    pools: tuple[int, ...] = (1, 2, 4, 8)  # head pool windows (0 = global)
    block: str = "basic"
    stem: str = "cifar"
    shortcut: str = "projection"
    num_classes: int = 10
    input_size: int = 32

    def __post_init__(self) -> None:
        stages = self.stages
        if isinstance(stages, bool) or not isinstance(stages, int) or not 1 <= stages <= MAX_BLOCKS:
            raise UserError(
                f"stages must be an integer from 1 to {MAX_BLOCKS}, got {brief(stages)}"
            )
        for name in ("blocks", "widths", "kernels", "pools"):
            values = getattr(self, name)
            if isinstance(values, str) or not hasattr(values, "__iter__") or not values:
                raise UserError(f"grid {name} must be a non-empty list, got {brief(values)}")
            object.__setattr__(self, name, tuple(values))
        if self.size > MAX_CANDIDATES:  # an exact integer: never formatted, never a float
            raise UserError(
                f"the grid holds more than {MAX_CANDIDATES:,} candidates: fewer stages or values"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown grid keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def __len__(self) -> int:
        return self.size

    @property
    def size(self) -> int:
        """The number of candidates (an exact integer, however large: len() caps at 2**63)."""
        return (
            len(self.blocks) ** self.stages * len(self.widths) * len(self.kernels) * len(self.pools)
        )

    def specs(self) -> Iterator[ResNetSpec]:
        """Each combination as a spec; a value the spec rejects (an even kernel) is an error."""
        for blocks, width, kernel, pool in itertools.product(
            itertools.product(self.blocks, repeat=self.stages),
            self.widths,
            self.kernels,
            self.pools,
        ):
            yield ResNetSpec(
                blocks,
                tuple(width * 2**i for i in range(self.stages)),
                kernel=kernel,
                pool=pool,
                block=self.block,
                stem=self.stem,
                shortcut=self.shortcut,
                num_classes=self.num_classes,
                input_size=self.input_size,
            )


def load_grid(path: str | Path) -> dict[str, Any]:
    """A YAML mapping of Grid fields (checked when the Grid is made)."""
    try:
        data = read_yaml(path, "grid file")
    except UserError as exc:
        # read_yaml's messages start with the path; keep this function's one prefix
        raise UserError(
            f"cannot read grid {path}: {str(exc).removeprefix(f'{Path(path)}: ')}"
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"grid {path} must be a YAML mapping of grid keys, got {type(data).__name__}"
        )
    return data


@dataclasses.dataclass(frozen=True)
class Candidate:
    spec: ResNetSpec
    params: int
    flops: int  # per image, as FlopCounterMode counts (2 per multiply-add)
    pareto: bool = False


def pareto_front(points: Sequence[tuple[int, int]]) -> set[int]:
    """Indices of the (params, flops) points that no other point dominates."""
    front, best = set(), None  # best: (flops, params) of the most FLOPs seen so far
    # Fewest parameters first (most FLOPs first among equals): a point is dominated exactly when
    # an earlier one has at least its FLOPs and is not the same point.
    for i in sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1])):
        params, flops = points[i]
        if best is None or flops > best[0] or (flops, params) == best:
            front.add(i)
            best = (flops, params)
    return front


def search(grid: Grid, max_params: int) -> list[Candidate]:
    """The grid's specs with at most `max_params` parameters, best first, Pareto front marked."""
    fits = []
    for spec in grid.specs():
        params = count_params(spec)
        if params <= max_params:
            fits.append((spec, params, count_flops(spec).flops))
    front = pareto_front([(params, flops) for _, params, flops in fits])
    order = sorted(range(len(fits)), key=lambda i: (-fits[i][2], fits[i][1]))
    return [Candidate(*fits[i], pareto=i in front) for i in order]


def rank_by_training(
    candidates: Sequence[Candidate], train_fn: Callable[[ResNetSpec], float], top_k: int
) -> list[tuple[Candidate, float]]:
    """Train the first `top_k` candidates; `train_fn(spec)` returns validation accuracy.

    Returns (candidate, accuracy), best accuracy first; the analytic order breaks ties.
    """
    if top_k < 1:
        raise UserError(f"top_k must be >= 1, got {top_k}")
    scored = [(candidate, float(train_fn(candidate.spec))) for candidate in candidates[:top_k]]
    return sorted(scored, key=lambda pair: -pair[1])


def row(rank: int, c: Candidate) -> tuple:
    """A candidate's cells under COLUMNS (code/search.py reuses them for trained.csv)."""
    spec = c.spec
    blocks, channels = " ".join(map(str, spec.blocks)), " ".join(map(str, spec.channels))
    return (rank, blocks, channels, spec.kernel, spec.pool, c.params, c.flops, c.pareto)


def write_rows(path: str | Path, header: Sequence[str], rows) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_csv(path: str | Path, candidates: Sequence[Candidate]) -> None:
    write_rows(path, COLUMNS, (row(rank, c) for rank, c in enumerate(candidates, 1)))


def format_markdown(candidates: Sequence[Candidate], grid: Grid, max_params: int, top: int) -> str:
    """A heading that states the grid, budget and rule, and the first `top` rows."""
    on_front = sum(c.pareto for c in candidates)
    table = markdown_table(COLUMNS, [row(rank, c) for rank, c in enumerate(candidates[:top], 1)])
    return "\n".join(
        [
            f"# Candidates under {max_params:,} parameters",
            "",
            f"{len(candidates):,} of {len(grid):,} grid candidates fit; {on_front} are on the "
            "Pareto front of parameters vs FLOPs (pareto = yes).",
            f"Ranked by {RANKING_RULE}. FLOPs per {grid.input_size}x{grid.input_size} image, "
            "2 per multiply-add (FlopCounterMode). "
            f"Showing {min(top, len(candidates)):,}.",
            "",
            table,
        ]
    )


def write_markdown(path: str | Path, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text + "\n")
