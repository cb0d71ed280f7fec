"""Budget search: the grid, the budget filter, the ranking, the Pareto front, files and CLI."""

from __future__ import annotations

import csv

import pytest

import search as search_cli
from budgetnet.errors import UserError, run_cli
from budgetnet.models.complexity import count_flops, count_params
from budgetnet.models.search import (
    COLUMNS,
    Grid,
    format_markdown,
    load_grid,
    pareto_front,
    rank_by_training,
    row,
    search,
    write_csv,
)
from budgetnet.models.spec import BLOCK_TYPES, SHORTCUTS, STEMS

SMALL = Grid(stages=3, blocks=(1, 2), widths=(16, 32, 48), kernels=(3, 5), pools=(2, 8))


def test_default_grid_has_at_least_10000_candidates_and_keeps_only_what_fits():
    grid = Grid()
    assert len(grid) >= 10_000
    kept = search(grid, 5_000_000)
    assert 0 < len(kept) < len(grid)
    assert all(c.params <= 5_000_000 for c in kept)
    assert len(SMALL) == 2**3 * 3 * 2 * 2 == sum(1 for _ in SMALL.specs())


def test_search_keeps_exactly_what_fits_and_ranks_by_flops():
    budget = 1_000_000
    kept = search(SMALL, budget)
    fits = {spec for spec in SMALL.specs() if count_params(spec) <= budget}
    assert {c.spec for c in kept} == fits and 0 < len(fits) < len(SMALL)
    for c in kept:
        assert c.params == count_params(c.spec) <= budget
        assert c.flops == count_flops(c.spec).flops
    keys = [(-c.flops, c.params) for c in kept]
    assert keys == sorted(keys)


def test_pareto_front_keeps_the_undominated_points_worked_out_by_hand():
    #         0       1       2       3       4       5
    points = [(1, 5), (2, 4), (2, 6), (3, 6), (3, 7), (1, 5)]
    # (2,4) has more params and fewer FLOPs than (1,5); (3,6) more params than (2,6), same FLOPs;
    # the two (1,5) do not dominate each other.
    assert pareto_front(points) == {0, 2, 4, 5}
    assert pareto_front([]) == set()


def test_search_marks_the_pareto_front_by_definition():
    kept = search(SMALL, 2_000_000)

    def dominated(c):
        return any(
            o.params <= c.params
            and o.flops >= c.flops
            and (o.params, o.flops) != (c.params, c.flops)
            for o in kept
        )

    assert [c.pareto for c in kept] == [not dominated(c) for c in kept]
    assert kept[0].pareto  # the top of the ranking is never dominated


def test_unknown_or_empty_grid_keys_and_even_kernels_are_refused():
    with pytest.raises(UserError, match=r"unknown grid keys \['width'\]"):
        Grid.from_dict({"width": [32]})
    with pytest.raises(UserError, match="non-empty list"):
        Grid(kernels=())
    with pytest.raises(UserError, match="kernel must be odd"):
        search(Grid(kernels=(4,)), 5_000_000)


def test_rank_by_training_reorders_the_top_k_by_accuracy():
    kept = search(SMALL, 2_000_000)
    accuracy = {c.spec: 0.5 + 0.01 * i for i, c in enumerate(kept[:4])}  # later is better
    trained = []

    def train_fn(spec):
        trained.append(spec)
        return accuracy[spec]

    ranked = rank_by_training(kept, train_fn, top_k=4)
    assert trained == [c.spec for c in kept[:4]]
    assert [c for c, _ in ranked] == kept[:4][::-1]
    assert [acc for _, acc in ranked] == sorted(accuracy.values(), reverse=True)
    ties = rank_by_training(kept, lambda spec: 0.9, top_k=3)
    assert [c for c, _ in ties] == kept[:3]  # equal accuracy keeps the analytic order
    with pytest.raises(UserError):
        rank_by_training(kept, train_fn, top_k=0)


def test_csv_holds_every_candidate_and_markdown_the_top_rows(tmp_path):
    kept = search(SMALL, 1_000_000)
    write_csv(tmp_path / "out" / "candidates.csv", kept)
    with open(tmp_path / "out" / "candidates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COLUMNS) and len(rows) == len(kept)
    first = kept[0]
    assert rows[0]["blocks"] == " ".join(map(str, first.spec.blocks))
    assert int(rows[0]["params"]) == first.params and int(rows[0]["flops"]) == first.flops
    assert [r["pareto"] == "True" for r in rows] == [c.pareto for c in kept]
    assert not list((tmp_path / "out").glob("*.tmp"))

    text = format_markdown(kept, SMALL, 1_000_000, top=3)
    assert f"{len(kept):,} of {len(SMALL):,} grid candidates fit" in text
    assert "most FLOPs per image first" in text
    assert len([line for line in text.splitlines() if line.startswith("|")]) == 2 + 3


def run_search(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(search_cli.main, list(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_search_cli_flags_override_the_grid_file(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("stages: 2\nblocks: [1, 2]\nwidths: [8, 16]\nkernels: [3]\npools: [4, 16]\n")
    out = tmp_path / "res"
    code, stdout, err = run_search(
        capsys, "--grid", str(grid), "--pools", "16", "--max-params", "1e5", "--out", str(out)
    )
    assert code == 0 and err == ""
    assert "of 8 grid candidates fit" in stdout  # 2^2 blocks x 2 widths x 1 kernel x 1 pool
    assert (out / "candidates.csv").exists() and (out / "candidates.md").exists()

    grid.write_text("stages: 2\nkernel: [3]\n")
    for argv, fragment in [
        (["--grid", str(grid)], "unknown grid keys ['kernel']"),
        (["--kernels", "4"], "kernel must be odd"),
        (["--max-params", "0"], "--max-params must be a whole number"),
        (["--grid", str(tmp_path / "none.yaml")], "cannot read grid"),
    ]:
        code, stdout, err = run_search(capsys, *argv, "--out", str(out))
        assert code == 2 and stdout == ""
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err


def test_search_takes_the_grid_file_under_its_old_flag_with_a_note(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("stages: 2\nblocks: [1]\nwidths: [8]\nkernels: [3]\npools: [0]\n")
    code, stdout, err = run_search(capsys, "--config", str(grid), "--out", str(tmp_path / "res"))
    assert code == 0 and "of 1 grid candidates fit" in stdout
    assert err.splitlines() == ["note: --config is now spelled --grid"]
    shown = search_cli_help(capsys)
    assert "--grid FILE" in shown and "--config" not in shown  # the old spelling is not offered


def search_cli_help(capsys) -> str:
    with pytest.raises(SystemExit):
        search_cli.main(["--help"])
    return capsys.readouterr().out


def test_search_prints_the_ranking_and_writes_csv_and_markdown(tmp_path, run_main):
    out = tmp_path / "res"
    result = run_main("code/search.py", "--widths", "32", "64", "--out", str(out), "--top", "5")
    assert result.returncode == 0, result.stderr
    assert "under 5,000,000 parameters" in result.stdout and "| rank |" in result.stdout
    assert (out / "candidates.csv").exists() and (out / "candidates.md").exists()


def test_search_refuses_an_unknown_block_in_one_line(run_main):
    bad = run_main("code/search.py", "--block", "dense")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "error: block must be one of ['basic', 'bottleneck', 'preact', 'res9', 'fast'], got 'dense'"
    ]


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"blocks: [\xff]\n", b"- 1\n"])
def test_a_grid_file_that_is_not_a_yaml_mapping_is_refused(tmp_path, raw):
    # b"\xff\xfe" is a UTF-16 byte-order mark and nothing else; \xff alone is no UTF-8
    path = tmp_path / "grid.yaml"
    path.write_bytes(raw)
    with pytest.raises(UserError, match=r"grid .*grid\.yaml") as caught:
        load_grid(path)
    assert "\n" not in str(caught.value)


def test_an_oversized_grid_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"#" * (2 << 20))
    with pytest.raises(UserError, match=f"cannot read grid {path}: .*bytes, more than"):
        load_grid(path)


def test_trained_csv_shares_the_candidate_columns_but_the_last(monkeypatch, tmp_path):
    kept = search(SMALL, 1_000_000)[:2]
    monkeypatch.setattr(search_cli, "load_splits", lambda *a, **k: _Splits())
    monkeypatch.setattr(
        search_cli, "rank_by_training", lambda c, fn, k: [(c[1], 0.75), (c[0], 0.5)]
    )
    args = _Args()
    search_cli.train_ranking(kept, args, tmp_path)
    lines = (tmp_path / "trained.csv").read_text().splitlines()
    assert lines[0] == "rank,blocks,channels,kernel,pool,params,flops,val_acc"
    first = kept[1]
    cells = [1, " ".join(map(str, first.spec.blocks)), " ".join(map(str, first.spec.channels)),
             first.spec.kernel, first.spec.pool, first.params, first.flops, "0.7500"]  # fmt: skip
    assert lines[1] == ",".join(map(str, cells))
    assert lines[2].startswith("2,") and lines[2].endswith(",0.5000")
    assert row(1, first)[:-1] == tuple(cells[:-1])


class _Splits:
    val = [0] * 40


class _Args:
    train_config = None
    epochs = 1
    data = None
    max_per_class = None
    device = "cpu"
    train_top = 2


def test_search_help_names_every_block_stem_and_shortcut(capsys):
    with pytest.raises(SystemExit):
        search_cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for names in (BLOCK_TYPES, STEMS, SHORTCUTS):
        assert f"{', '.join(names[:-1])} or {names[-1]}" in text


@pytest.mark.parametrize("stages", [1000, 9])
def test_a_grid_too_large_to_rank_is_refused_before_any_candidate(stages):
    # 1000 stages: over the spec's limit; 9 stages of 5 unit counts: 48 billion candidates
    with pytest.raises(
        UserError, match="stages must be an integer from 1 to 256|more than 1,000,000"
    ):
        Grid(stages=stages)
