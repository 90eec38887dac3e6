"""Where `keras_ptuning.datasets` looks for data: never relative to the
working directory."""

import os

import pytest

from keras_ptuning import datasets


def _fake_tree(root, name, marker):
    folder = root / "shared" / "data" / name
    os.makedirs(folder / os.path.dirname(marker), exist_ok=True)
    (folder / marker).write_text("")
    return folder


@pytest.mark.parametrize(
    "find,name,marker",
    [
        (datasets.find_sst2_dir, "sst2", "dev.tsv"),
        (datasets.find_lama_dir, "lama", "dev.jsonl"),
        (datasets.find_superglue_dir, "superglue", "RTE/val.jsonl"),
    ],
)
def test_data_is_found_beside_the_checkout_not_the_working_directory(
    find, name, marker, tmp_path, monkeypatch
):
    # A `../shared/data` beside the working directory is another folder's.
    _fake_tree(tmp_path, name, marker)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA_DIR", str(tmp_path / "none"))

    def no_download(*args, **kwargs):  # SST-2 downloads when not found.
        raise FileNotFoundError("sst2: would download")

    monkeypatch.setattr(datasets.keras.utils, "get_file", no_download)
    with pytest.raises(FileNotFoundError, match=name):
        find()
    # The environment variable, then the checkout's sibling folder.
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "shared" / "data"))
    assert find() == str(tmp_path / "shared" / "data" / name)
    monkeypatch.delenv(datasets.DATA_DIR_ENV)
    monkeypatch.setattr(
        datasets, "SHARED_DATA_DIR", str(tmp_path / "shared" / "data")
    )
    assert find() == os.path.join(str(tmp_path / "shared" / "data"), name)


def test_the_default_is_this_checkouts_sibling():
    package = os.path.dirname(datasets.__file__)
    assert datasets.SHARED_DATA_DIR == os.path.normpath(
        os.path.join(package, "..", "..", "shared", "data")
    )
