"""Can a trained AMC's region attention find every visual concept when it is told where the
concept's cells are? A probe of issue 26 (benchmarks/FIDELITY.md, session 14).

On a several-concept COCO-shaped world (`tests/support/planted_multi.py`) some visual concepts
keep almost none of the region attention after training. This script takes such a trained run,
reports each visual concept's median mass on its own cells over the test captions that name it,
then trains the region attention alone on the training captions with the truth: the
cross-entropy of the attention on the concept's cells (`-log` of their summed weight), whose
gradient does not shrink with the weight a cell already has, as the ranking loss's does. Only
the key and guide projections and the attention's scale learn (with `--words`, the query word
embeddings too); the report after each epoch says whether the architecture can hold every
concept.

    python benchmarks/ablate_fidelity.py --only pkg --world multi --seed 1 --train-seeds 102 \
        --runs "pkg amc" --work WORK
    python benchmarks/attention_oracle.py --seed 1 \
        --run WORK/run-multi1x1-seed-1-pkg_amc-train-seed-102
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support import planted_multi  # noqa: E402

import amc_data  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.model import _attend  # noqa: E402


def concept_pairs(truth, prepared, split: str):
    """(query ids, image rows, the concept's cells (P, R) bool, concepts) for every caption of
    `split` and every visual concept it names."""
    queries, rows, cells, concepts = [], [], [], []
    for query in prepared.split_queries(split)["query_id"].tolist():
        row, named = truth.captions[int(query)]
        for concept in named:
            if truth.is_visual(concept):
                queries.append(query)
                rows.append(row)
                cells.append(truth.cell_concept[row] == concept)
                concepts.append(concept)
    return np.array(queries), np.array(rows), np.stack(cells), np.array(concepts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True, help="the world's seed")
    parser.add_argument("--run", type=Path, required=True, help="a run trained on that world")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--words", action="store_true", help="the word embeddings learn too")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = planted_multi.MultiConfig(seed=args.seed)
    with tempfile.TemporaryDirectory() as work:
        truth, out = planted_multi.prepare_world(Path(work), config)
        prepared = amc_data.load_prepared(out)
        model = amc_data.load_model(args.run, prepared).model.eval()  # no dropout
        learned = [*model.region_key.parameters(), *model.query_visual.parameters()]
        learned.append(getattr(model, "region_log_scale", model.attention_log_scale))
        if args.words:
            learned.append(model.words.weight)
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        for parameter in learned:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(learned, lr=args.lr)

        def mass(queries, rows, cells):
            query = model._encode_query(query_batch(prepared, queries))
            visual = model._encode_images(image_batch(prepared, rows)).visual
            _, weights = _attend(
                query.visual_guide,
                visual.key.unsqueeze(1),
                visual.value.unsqueeze(1),
                None,
                visual.mask.unsqueeze(1),
                False,
                model.attention_scale(region=True),
            )
            return (weights[:, 0] * torch.as_tensor(cells)).sum(1)

        test = concept_pairs(truth, prepared, "test")

        def report(when: str) -> None:
            queries, rows, cells, concepts = test
            with torch.no_grad():
                got = torch.cat(
                    [
                        mass(queries[s : s + 1024], rows[s : s + 1024], cells[s : s + 1024])
                        for s in range(0, len(queries), 1024)
                    ]
                ).numpy()
            medians = np.array([np.median(got[concepts == c]) for c in np.unique(concepts)])
            print(
                f"{when}: visual concepts below 0.3 {int((medians < 0.3).sum())} of "
                f"{len(medians)}, lowest {medians.min():.3f}, median {np.median(medians):.3f}",
                flush=True,
            )

        report("trained")
        queries, rows, cells, _ = concept_pairs(truth, prepared, "train")
        for epoch in range(args.epochs):
            order = np.random.default_rng(epoch).permutation(len(queries))
            for start in range(0, len(order), 256):
                batch = order[start : start + 256]
                loss = -torch.log(mass(queries[batch], rows[batch], cells[batch]) + 1e-9).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            report(f"told, epoch {epoch + 1}")


if __name__ == "__main__":
    main()
