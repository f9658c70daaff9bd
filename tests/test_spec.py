"""The dataset spec: one list of datasets, the same one the bundled manifests name, read by every
stage and the CLI."""

from __future__ import annotations

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data import load_encoded
from amc_data.errors import ConfigError
from amc_data.fetching.manifest import bundled_manifests
from amc_data.spec import DATASETS, dataset_spec


def test_the_datasets_are_those_the_bundled_manifests_name():
    manifests = bundled_manifests()
    assert sorted(DATASETS) == sorted(manifests)
    for name, spec in DATASETS.items():
        files = {entry.name for entry in manifests[name].files}
        wanted = {f"{stem}.zip" for stem in spec.archives} | set(spec.lists)
        assert wanted <= files, (name, wanted - files)


def test_each_split_has_an_archive_and_the_fitting_splits_are_splits():
    for spec in DATASETS.values():
        assert len(spec.split_archive) == len(spec.split_list) == len(spec.splits)
        assert set(spec.fit_splits) <= set(spec.splits)
        for original in spec.originals:
            assert set(original.splits) <= set(spec.splits)
    clickture = dataset_spec("clickture")
    assert clickture.archive_of("lite") == "keywords_lite"
    assert clickture.member_folder("lite") == "keywords_lite"
    assert dataset_spec("coco").member_folder("val") == "keyword_val"
    assert [o.pairs_name(6) for o in dataset_spec("coco").originals] == [
        "img_keyword_rec_coco_sk_6.npy"
    ]
    assert clickture.originals[0].index_name(6) == "img_keyword_ind_clickture_dev_sk_6_sparse.npy"


def test_unknown_names_are_config_errors_from_the_library():
    with pytest.raises(ConfigError, match="clickture, coco"):
        dataset_spec("flickr")
    with pytest.raises(ConfigError, match="dev, lite"):
        load_encoded("clickture", "train")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["flickr"], "Unknown dataset 'flickr'"),
        (["coco", "--formats", "original,xml"], "xml is not a format"),
        # Ranges and choices reach Click from the config's declaration: Click refuses them.
        (["coco", "--on-error", "ignore"], "'--on-error': 'ignore' is not one of 'fail', 'skip'"),
        (["coco", "--min-df", "0"], "'--min-df': 0 is not in the range x>=1"),
    ],
)
def test_bad_encode_options_are_refused_naming_the_option(tmp_path, args, expected):
    result = CliRunner().invoke(cli, ["encode", *args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "Error: " in result.stderr and expected in result.stderr
