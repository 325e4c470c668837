"""Case discovery on real layouts: MSD dataset.json, nnU-Net v1/v2 naming, glob pairing, DICOM study folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import DataConfig
from medseg.data.cases import classes_from_labels, discover_cases
from medseg.data.normalization import NormalizationParams
from medseg.data.prepare import prepare_cases
from medseg.errors import BadCaseError, ConfigError
from medseg.io import load_volume, save_mask
from medseg.io.orientation import to_canonical


def _sample_ids(sample_hippo: Path, n: int) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]


def test_msd_hippocampus_finds_all_91_cases(hippo_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=hippo_dir))
    listed = json.loads((hippo_dir / "dataset.json").read_text())["training"]
    assert len(spec.cases) == 91 == len(listed)
    assert spec.classes == ["background", "Anterior", "Posterior"]
    assert spec.skipped == []
    assert [c.id for c in spec.cases] == sorted(Path(e["image"]).name[: -len(".nii.gz")] for e in listed)
    for case in spec.cases:
        assert case.image == hippo_dir / "imagesTr" / f"{case.id}.nii.gz"
        assert case.label == hippo_dir / "labelsTr" / f"{case.id}.nii.gz"


def test_msd_max_cases_takes_first_ids(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=3))
    assert [c.id for c in spec.cases] == _sample_ids(sample_hippo, 3)


def test_nnunet_v2_layout_with_channel_suffix(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _sample_ids(sample_hippo, 4)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for cid in ids:
        (tmp_path / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (tmp_path / "labelsTr" / f"{cid}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    (tmp_path / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
                "numTraining": len(ids),
                "file_ending": ".nii.gz",
            }
        )
    )
    spec = discover_cases(DataConfig(root=tmp_path))
    assert [c.id for c in spec.cases] == ids
    assert spec.classes == ["background", "Anterior", "Posterior"]
    assert all(c.image.name == f"{c.id}_0000.nii.gz" and c.label.name == f"{c.id}.nii.gz" for c in spec.cases)


def test_nnunet_v1_training_list_resolves_channel_suffix(sample_hippo: Path, tmp_path: Path) -> None:
    # nnU-Net v1 keeps MSD's training list (no suffix) while the files carry _0000.
    ids = _sample_ids(sample_hippo, 2)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for cid in ids:
        (tmp_path / "imagesTr" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (tmp_path / "labelsTr" / f"{cid}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    training = [{"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"} for cid in ids]
    (tmp_path / "dataset.json").write_text(
        json.dumps({"labels": {"0": "bg", "1": "a", "2": "p"}, "training": training})
    )
    spec = discover_cases(DataConfig(root=tmp_path, layout="msd"))
    assert [c.id for c in spec.cases] == ids
    assert all(c.image.name.endswith("_0000.nii.gz") for c in spec.cases)


def test_label_dict_styles_and_gaps(tmp_path: Path) -> None:
    src = tmp_path / "dataset.json"
    assert classes_from_labels({"1": "a", "0": "bg"}, src) == (["bg", "a"], None)
    assert classes_from_labels({"bg": 0, "b": 2, "a": 1}, src) == (["bg", "a", "b"], None)
    # Values with gaps are read as declared: BraTS's 0, 1, 2, 4 and a 0/255 mask, in both styles.
    assert classes_from_labels({"0": "bg", "4": "et", "1": "ncr", "2": "ed"}, src) == (
        ["bg", "ncr", "ed", "et"],
        [0, 1, 2, 4],
    )
    assert classes_from_labels({"background": 0, "lesion": 255}, src) == (["background", "lesion"], [0, 255])
    with pytest.raises(ConfigError, match="background as value 0"):
        classes_from_labels({"1": "a", "2": "b"}, src)
    with pytest.raises(ConfigError, match="share the value 1"):
        classes_from_labels({"background": 0, "a": 1, "b": 1}, src)
    with pytest.raises(ConfigError, match=r"0\.\.65535"):
        classes_from_labels({"0": "bg", "70000": "a"}, src)
    # Region labels (lists of values) are read by medseg.data.regions before (tests/test_regions.py).
    with pytest.raises(ConfigError, match=r"label 'whole' maps to \[1, 2\]; labels must be integers"):
        classes_from_labels({"background": 0, "whole": [1, 2]}, src)
    with pytest.raises(ConfigError, match=r"label 'a' maps to the string '1'; write the value as a JSON number \(1\)"):
        classes_from_labels({"background": 0, "a": "1"}, src)
    # nnU-Net v2's ignore label marks unannotated voxels, not a structure (tests/test_unannotated.py).
    assert classes_from_labels({"background": 0, "liver": 1, "ignore": 2}, src) == (["background", "liver"], None)


def _visits(sample_hippo: Path, root: Path, image_dir: str, label_dir: str, channel: str = "") -> list[str]:
    """Copies of 3 sample cases named like follow-up scans (``visit_2019`` ...): four-digit endings that are
    part of the id, not nnU-Net channel suffixes."""
    ids = _sample_ids(sample_hippo, 3)
    visits = [f"visit_{2019 + i}" for i in range(len(ids))]
    (root / image_dir).mkdir(parents=True)
    (root / label_dir).mkdir(parents=True)
    for cid, visit in zip(ids, visits, strict=True):
        (root / image_dir / f"{visit}{channel}.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (root / label_dir / f"{visit}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    return visits


def test_four_digit_endings_are_ids_not_channels(sample_hippo: Path, tmp_path: Path) -> None:
    # glob layout, default case id (no data.case_pattern): visit_2019 and visit_2020 are two cases.
    glob_root = tmp_path / "glob"
    visits = _visits(sample_hippo, glob_root, "images", "labels")
    spec = discover_cases(DataConfig(root=glob_root, layout="glob", classes=["bg", "a", "p"]))
    assert [c.id for c in spec.cases] == visits
    # MSD layout with a training list: the same ids.
    msd_root = tmp_path / "msd"
    _visits(sample_hippo, msd_root, "imagesTr", "labelsTr")
    meta = json.loads((sample_hippo / "dataset.json").read_text())
    meta["training"] = [{"image": f"./imagesTr/{v}.nii.gz", "label": f"./labelsTr/{v}.nii.gz"} for v in visits]
    (msd_root / "dataset.json").write_text(json.dumps(meta))
    assert [c.id for c in discover_cases(DataConfig(root=msd_root)).cases] == visits
    # nnU-Net v2 naming: only the channel suffix _0000 goes, the visit year stays.
    v2_root = tmp_path / "v2"
    _visits(sample_hippo, v2_root, "imagesTr", "labelsTr", channel="_0000")
    (v2_root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "a": 1, "p": 2}, "channel_names": {"0": "MRI"}})
    )
    spec = discover_cases(DataConfig(root=v2_root))
    assert [c.id for c in spec.cases] == visits
    assert [c.image.name for c in spec.cases] == [f"{v}_0000.nii.gz" for v in visits]


def test_case_ids_agree_between_discovery_and_io(sample_hippo: Path, tmp_path: Path) -> None:
    """Discovery names each case exactly as ``medseg.io.case_id_from_path`` names its image (one function)."""
    from medseg.io import case_id_from_path

    root = tmp_path / "glob"
    _visits(sample_hippo, root, "images", "labels", channel="_0000")
    spec = discover_cases(DataConfig(root=root, layout="glob", classes=["bg", "a", "p"]))
    assert [c.id for c in spec.cases] == [case_id_from_path(c.image) for c in spec.cases]
    assert [c.id for c in spec.cases] == ["visit_2019", "visit_2020", "visit_2021"]


def test_glob_layout_pairs_by_case_pattern(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _sample_ids(sample_hippo, 3)
    (tmp_path / "scans").mkdir()
    (tmp_path / "masks").mkdir()
    for cid in ids:
        (tmp_path / "scans" / f"{cid}_0000.nii.gz").symlink_to(sample_hippo / "imagesTr" / f"{cid}.nii.gz")
        (tmp_path / "masks" / f"{cid}.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
    (tmp_path / "masks" / "orphan.nii.gz").symlink_to(sample_hippo / "labelsTr" / f"{ids[0]}.nii.gz")
    cfg = DataConfig(
        root=tmp_path, layout="glob", image_glob="scans/*.nii.gz", label_glob="masks/*.nii.gz", classes=["bg", "a", "p"]
    )
    spec = discover_cases(cfg)
    assert [c.id for c in spec.cases] == ids
    for case in spec.cases:
        assert case.label == tmp_path / "masks" / f"{case.id}.nii.gz"
    # Without classes the glob layout cannot know the label names.
    with pytest.raises(ConfigError, match=r"data\.classes"):
        discover_cases(cfg.model_copy(update={"classes": None}))
    with pytest.raises(ConfigError, match="image_glob"):
        discover_cases(cfg.model_copy(update={"image_glob": "nothing/*.nii.gz"}))


def test_missing_root_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"data\.root"):
        discover_cases(DataConfig())
    with pytest.raises(ConfigError, match="not a folder"):
        discover_cases(DataConfig(root=tmp_path / "absent"))


def test_dicom_layout_pgbm_studies(pgbm_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=pgbm_dir, layout="dicom", classes=["background", "tumour"]))
    assert len(spec.cases) == 5
    for case in spec.cases:
        assert "T1post" in case.image.name and "MaskTumor" in case.label.name
        assert case.image.parent == case.label.parent
        assert case.id.startswith(case.image.parent.parent.name)
        assert " " not in case.id
    explicit = discover_cases(
        DataConfig(root=pgbm_dir, layout="dicom", classes=["bg", "t"], dicom_image_pattern="*t1POST*")
    )
    assert explicit.cases == spec.cases


def test_dicom_series_with_nifti_mask(tmp_path: Path) -> None:
    series = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "HippoCrop_Study1"
    if not series.is_dir():
        pytest.skip("sample_data/dicom/HippoCrop_Study1 is absent")
    case_dir = tmp_path / "study_a"
    case_dir.mkdir()
    (case_dir / "t1_series").symlink_to(series, target_is_directory=True)
    image = load_volume(series)
    mask = (image.array > np.percentile(image.array, 90)).astype(np.uint8)
    save_mask(mask, like=image, path=case_dir / "seg_mask.nii.gz")

    spec = discover_cases(DataConfig(root=tmp_path, layout="dicom", classes=["bg", "fg"]))
    assert len(spec.cases) == 1
    case = spec.cases[0]
    assert case.id == "study_a" and case.image.name == "t1_series" and case.label.name == "seg_mask.nii.gz"
    # The NIfTI mask lies on the DICOM series' grid: the pair passes the checks and the labels survive slicing.
    prepared = prepare_cases(spec.cases, NormalizationParams("zscore"), axis=2, n_classes=2)
    assert int(prepared[0].label.sum()) == int(mask.sum())
    # Training data is kept in closest-RAS voxel order (the DICOM is LPS-stored: i and j flip).
    reorientation = to_canonical(image)[1]
    assert reorientation.flip[:2] == (True, True)
    np.testing.assert_array_equal(prepared[0].label_volume, reorientation.apply(mask))
    assert nib.load(case.label).shape == image.shape


def _hippo_pairs(sample_hippo: Path, root: Path, n: int, image: str, label: str) -> list[str]:
    """Symlinks ``n`` sample cases as ``root/<image.format(id)>`` and ``root/<label.format(id)>``."""
    ids = _sample_ids(sample_hippo, n)
    for cid in ids:
        for pattern, sub in ((image, "imagesTr"), (label, "labelsTr")):
            dst = root / pattern.format(cid)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(sample_hippo / sub / f"{cid}.nii.gz")
    return ids


def test_macos_appledouble_files_are_not_cases(sample_hippo: Path, tmp_path: Path) -> None:
    # Archives packed on a Mac carry '._<name>' resource forks beside every file: not scans, never cases.
    v2 = tmp_path / "v2"
    ids = _hippo_pairs(sample_hippo, v2, 3, "imagesTr/{}_0000.nii.gz", "labelsTr/{}.nii.gz")
    (v2 / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1}}))
    flat = tmp_path / "flat"
    _hippo_pairs(sample_hippo, flat, 3, "images/{}.nii.gz", "labels/{}.nii.gz")
    for folder in (v2 / "imagesTr", v2 / "labelsTr", flat / "images", flat / "labels"):
        for f in list(folder.iterdir()):
            (folder / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [c.id for c in discover_cases(DataConfig(root=v2)).cases] == ids
    glob = DataConfig(root=flat, layout="glob", image_glob="images/*", label_glob="labels/*", classes=["bg", "a"])
    assert [c.id for c in discover_cases(glob).cases] == ids


def test_image_and_label_names_differing_by_a_tag_get_the_case_pattern(sample_hippo: Path, tmp_path: Path) -> None:
    # As MSD_Spleen_crop ships its case: spleen_2_img.nii.gz beside spleen_2_label.nii.gz.
    ids = _hippo_pairs(sample_hippo, tmp_path, 2, "{}_img.nii.gz", "{}_label.nii.gz")
    cfg = {"root": tmp_path, "layout": "glob", "classes": ["bg", "a", "b"]}
    globs = {"image_glob": "*_img.nii.gz", "label_glob": "*_label.nii.gz"}
    with pytest.raises(
        ConfigError, match=r"differ by a tag: set data\.case_pattern: '\(\?P<case>\.\+\)\[_\.-\]\(img\|label\)"
    ):
        discover_cases(DataConfig(**cfg, **globs))  # type: ignore[arg-type]
    suggested = r"(?P<case>.+)[_.-](img|label)\."
    spec = discover_cases(DataConfig(**cfg, **globs, case_pattern=suggested))  # type: ignore[arg-type]
    assert [(c.id, c.image.name, c.label.name if c.label else None) for c in spec.cases] == [
        (i, f"{i}_img.nii.gz", f"{i}_label.nii.gz") for i in ids
    ]


def _acdc_like(sample_hippo: Path, root: Path) -> list[str]:
    """ACDC's layout from the sample cases: a folder per patient holding two frames, each beside its '_gt' label,
    and an Info.cfg. Returns the case ids (patient + frame)."""
    images = sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[:4]
    ids = []
    for n, image in enumerate(images):
        patient, frame = f"patient{n // 2 + 1:03d}", f"frame{1 + 11 * (n % 2):02d}"
        folder = root / patient
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{patient}_{frame}.nii.gz").write_bytes(image.read_bytes())
        label = sample_hippo / "labelsTr" / image.name
        (folder / f"{patient}_{frame}_gt.nii.gz").write_bytes(label.read_bytes())
        (folder / "Info.cfg").write_text("ED: 1\nES: 12\n")
        ids.append(f"{patient}_{frame}")
    return ids


def test_labels_named_as_their_image_plus_a_suffix_get_the_case_pattern(sample_hippo: Path, tmp_path: Path) -> None:
    """ACDC as a new user tries it: image_glob '*/*.nii.gz' also matches the '_gt' labels. A file is never both
    an image and a label (each label was once paired with itself), and the message gives the case_pattern."""
    ids = _acdc_like(sample_hippo, tmp_path)
    cfg = {"root": tmp_path, "layout": "glob", "classes": ["bg", "a", "b"], "label_glob": "*/*_gt.nii.gz"}
    with pytest.raises(ConfigError, match=r"plus '_gt': set data\.case_pattern: '\(\?P<case>\.\+\?\)\(_gt\)\?\\\.'"):
        discover_cases(DataConfig(**cfg, image_glob="*/*.nii.gz"))  # type: ignore[arg-type]
    suggested = r"(?P<case>.+?)(_gt)?\."
    spec = discover_cases(DataConfig(**cfg, image_glob="*/*.nii.gz", case_pattern=suggested))  # type: ignore[arg-type]
    assert [(c.id, c.image.name, c.label.name if c.label else None) for c in spec.cases] == [
        (i, f"{i}.nii.gz", f"{i}_gt.nii.gz") for i in ids
    ]
    with pytest.raises(ConfigError, match=r"matches only files that data\.label_glob"):
        discover_cases(DataConfig(**cfg, image_glob="*/*_gt.nii.gz"))  # type: ignore[arg-type]


def test_an_image_folder_beside_a_label_folder_is_read_as_the_glob_layout(sample_hippo: Path, tmp_path: Path) -> None:
    _hippo_pairs(sample_hippo, tmp_path, 2, "images/{}.nii.gz", "labels/{}.nii.gz")
    # A copy of configs/hippocampus.yaml (layout msd) pointed at it says which keys read it, and they do.
    with pytest.raises(ConfigError, match=r"set data\.layout: glob with data\.image_glob: 'images/\*\.nii\.gz' and "):
        discover_cases(DataConfig(root=tmp_path, layout="msd"))
    cfg = DataConfig(
        root=tmp_path, layout="glob", image_glob="images/*.nii.gz", label_glob="labels/*.nii.gz", classes=["b", "a"]
    )
    assert len(discover_cases(cfg).cases) == 2


def test_every_bad_case_is_named_at_once(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _hippo_pairs(sample_hippo, tmp_path, 4, "images/{}.nii.gz", "labels/{}.nii.gz")
    for cid in (ids[1], ids[3]):  # two labels half a voxel off their images
        path = tmp_path / "labels" / f"{cid}.nii.gz"
        img = nib.load(path.resolve())
        affine = img.affine.copy()
        affine[0, 3] += 0.5
        path.unlink()
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine), path)
    cfg = DataConfig(
        root=tmp_path, layout="glob", image_glob="images/*", label_glob="labels/*", classes=["b", "a", "c"]
    )
    spec = discover_cases(cfg)
    params = NormalizationParams(scheme="zscore")
    with pytest.raises(BadCaseError, match=r"2 of 4 cases fail their checks; set data\.skip_bad_cases: true") as err:
        prepare_cases(spec.cases, params, axis=2, n_classes=3)
    assert all(f"Case '{cid}'" in str(err.value) for cid in (ids[1], ids[3]))
    assert str(err.value).count("grid corners are up to 0.5 mm apart") == 2
    skipped: list = []
    kept = prepare_cases(spec.cases, params, axis=2, n_classes=3, skip_bad_cases=True, skipped=skipped)
    assert [p.id for p in kept] == [ids[0], ids[2]] and [s.id for s in skipped] == [ids[1], ids[3]]


def test_an_acdc_like_run_keeps_each_patient_on_one_side(sample_hippo: Path, tmp_path: Path) -> None:
    """data.group_pattern reaches the run's split: both frames of a patient train or both validate."""
    from tests.conftest import run_tiny

    _acdc_like(sample_hippo, tmp_path / "acdc")
    result = run_tiny(
        tmp_path / "run",
        root=str(tmp_path / "acdc"),
        layout="glob",
        image_glob="*/*_frame??.nii.gz",
        label_glob="*/*_gt.nii.gz",
        case_pattern=r"(?P<case>.+?)(_gt)?\.",
        group_pattern=r"(?P<group>patient\d+)",
        val_fraction=0.5,
        classes=["background", "anterior", "posterior"],
    )
    fingerprint = json.loads((tmp_path / "run" / "plan.json").read_text())["fingerprint"]  # the training cases
    train = {c["id"].split("_")[0] for c in fingerprint["cases"]}
    val = {c.id.split("_")[0] for c in result.train.val_cases}
    assert train and val and not train & val
    assert len(result.train.val_cases) == 2 and result.evaluate["n_evaluated"] == 2
