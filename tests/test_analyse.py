import itertools
import json
import sys
import types

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats
from skimage import draw
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import nn

from infogan_cells.analysis import analyse as analyse_mod
from infogan_cells.analysis.analyse import analyse
from infogan_cells.analysis.metrics import contingency_table, label_scores, name_codes, spearman_table
from infogan_cells.config import AnalyseConfig, LatentSpec
from infogan_cells.data.store import REQUIRED_OBS, write_crop_store
from infogan_cells.errors import InputError
from infogan_cells.model.checkpoint import save_network
from infogan_cells.model.networks import Discriminator, Generator, GeneratorEnsemble, QOutput, init_weights

SPEC = LatentSpec(z_dim=4, categorical=[3], n_continuous=2, continuous_range=1.0)
LEVELS = (60, 130, 200)  # disk intensity of each category, grey levels on a black background
FAST = dict(
    encoder_epochs=1, nearest=4, k_nn=2, classifier_steps=20, classifier_seeds=2
)  # seconds, not minutes
TINY = AnalyseConfig(traversal_steps=3, traversal_samples=6, n_synthetic=30, holdout_fraction=0.3, **FAST)


def _crops(levels, labels, size, seed=0):
    rng = np.random.default_rng(seed)
    images = np.zeros((len(levels), size, size, 3), np.uint8)
    for i, level in enumerate(levels):
        r = rng.uniform(size / 8, size / 4)
        rr, cc = draw.disk(
            (size / 2 + rng.uniform(-1, 1), size / 2 + rng.uniform(-1, 1)), r, shape=(size, size)
        )
        images[i, rr, cc] = level
    obs = pd.DataFrame({c: [0] * len(levels) for c in REQUIRED_OBS})
    obs["source_image"] = "smear.png"
    obs["label"] = list(labels)
    obs["qc_pass"] = True
    obs["qc_reason"] = ""
    return images, obs


def _write_crops(path, levels, labels, size, channels=3, qc_fail=()):
    images, obs = _crops(levels, labels, size)
    obs.loc[list(qc_fail), "qc_pass"] = False
    images = images[..., :channels] if channels <= 3 else np.repeat(images[..., :1], channels, axis=3)
    write_crop_store(path, images, obs, [f"ch{i}" for i in range(channels)])
    return path


def _write_run(run_dir, *, img_size=16, meta=None):
    torch.manual_seed(0)
    G = Generator(SPEC, img_size=img_size, channels=3, width=8)
    D = Discriminator(SPEC, img_size=img_size, channels=3, width=8)
    init_weights(G)
    init_weights(D)
    meta = {
        "channel_names": ["ch0", "ch1", "ch2"],
        "img_size": img_size,
        "category_prior": [0.5, 0.25, 0.25],
        **(meta or {}),
    }
    save_network(run_dir / "network-final.pt", G=G, D=D, G_ema=None, meta=meta)
    return run_dir


class WiredGenerator(nn.Module):
    """Draws a disk: category k -> intensity LEVELS[k], c0 -> radius, c1 -> shift to the right."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def forward(self, x):
        z, onehot, cont = x[:, : SPEC.z_dim], x[:, SPEC.z_dim : SPEC.z_dim + 3], x[:, -2:]
        level = onehot @ torch.tensor(LEVELS, dtype=x.dtype)
        radius = 5 + 2.5 * (cont[:, 0] + 1) + 0.2 * z[:, 0].clamp(-1, 1)
        col0 = (self.size - 1) / 2 + 2 * (cont[:, 1] + 1)
        rows = torch.arange(self.size, dtype=x.dtype)[None, :, None]
        cols = torch.arange(self.size, dtype=x.dtype)[None, None, :]
        inside = ((rows - (self.size - 1) / 2) ** 2 + (cols - col0[:, None, None]) ** 2) <= radius[
            :, None, None
        ] ** 2
        img = inside * (level[:, None, None] / 127.5) - 1
        return img[:, None].expand(-1, 3, -1, -1)


class WiredDiscriminator(nn.Module):
    """Q assigns a crop to the category whose LEVELS value is nearest its brightest pixel."""

    def __init__(self, size):
        super().__init__()
        self.kwargs = {"img_size": size, "channels": 3}
        self.dummy = nn.Parameter(torch.zeros(1))
        self.trunk = nn.Identity()
        self.q_net = nn.Sequential(nn.Flatten(), nn.Identity())  # hidden layer: the pixels

    def q_head(self, h):
        peak = h.amax(dim=(1, 2, 3))
        centres = torch.tensor(LEVELS, dtype=h.dtype) / 127.5 - 1
        logits = -20 * (peak[:, None] - centres[None]) ** 2
        return QOutput([logits], torch.stack([peak, h.mean(dim=(1, 2, 3))], dim=1), torch.zeros(len(h), 2))


@pytest.fixture
def report_calls(monkeypatch):
    """A stand-in for infogan_cells.report.pages that records its calls (the real one is someone else's)."""
    calls = []
    fake = types.ModuleType("infogan_cells.report.pages")
    fake.write_report = lambda out_dir, **kwargs: calls.append((out_dir, kwargs))
    monkeypatch.setitem(sys.modules, "infogan_cells.report.pages", fake)
    return calls


def test_label_scores_on_a_hand_made_contingency_table():
    table = np.array([[5, 1], [2, 8], [0, 3], [0, 0]])  # 4 categories (one empty), 2 labels
    cats = np.repeat(np.repeat(np.arange(4), 2), table.ravel())
    labels = np.repeat(np.tile(["a", "b"], 4), table.ravel())
    cats, labels = np.append(cats, [3, 0]), np.append(labels, ["", ""])  # unlabelled crops take no part
    assert contingency_table(cats, labels, 4).to_numpy().tolist() == table.tolist()
    scores = label_scores(cats, labels)
    assert scores["accuracy"] == pytest.approx(13 / 19)  # 0 -> a, 1 -> b; category 2's 3 b are wrong
    assert scores["purity"] == pytest.approx(16 / 19)
    assert label_scores(cats, np.full(len(cats), "")) == dict.fromkeys(("accuracy", "nmi", "ari", "purity"))


def test_spearman_table_handles_constant_features_without_warning():
    codes = np.linspace(-1, 1, 20)[:, None]
    feats = pd.DataFrame({"area": codes[:, 0] ** 3, "flat": np.ones(20), "noise": np.sin(np.arange(20.0))})
    table = spearman_table(codes, feats)
    assert table.loc[table.feature == "area", "rho"].item() == pytest.approx(1)
    assert np.isnan(table.loc[table.feature == "flat", "rho"].item())
    expected = stats.spearmanr(codes[:, 0], feats["noise"]).statistic
    assert table.loc[table.feature == "noise", "rho"].item() == pytest.approx(expected)
    named = name_codes(table)
    assert named["c0"]["feature"] == "area" and named["c0"]["all"]["flat"] is None
    assert "pinned" not in named["c0"]
    assert name_codes(table, {"c0": "total:DNA"})["c0"]["pinned"] == "total:DNA"


def test_analyse_known_result(tmp_path, monkeypatch, report_calls):
    # categories by intensity level: cat0 holds 8 a + 3 c, cat1 2 a + 10 b, cat2 7 c; 6 unlabelled
    levels = [60] * 8 + [130] * 2 + [130] * 10 + [200] * 7 + [60] * 3 + [60, 130, 200] * 2
    labels = ["a"] * 10 + ["b"] * 10 + ["c"] * 10 + [""] * 6
    crops = _write_crops(tmp_path / "crops.h5", levels, labels, 32)
    meta = {"category_prior": [1 / 3] * 3}
    monkeypatch.setattr(
        analyse_mod, "load_discriminator", lambda run, device: (WiredDiscriminator(32), SPEC, meta)
    )
    monkeypatch.setattr(
        analyse_mod,
        "load_generator",
        lambda run, ema, device, snapshots=False: (WiredGenerator(32), SPEC, meta),
    )
    out = tmp_path / "analysis"
    metrics = analyse(tmp_path / "run", crops, out, TINY, device="cpu")

    assert [c[0] for c in report_calls] == [out] and report_calls[0][1]["run_dir"] == tmp_path / "run"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert json.loads((out / "quality.json").read_text()) == metrics["quality"]

    assign = pd.read_csv(out / "assignments.csv", keep_default_na=False)
    assert list(assign.columns) == ["crop_index", "category", "confidence", "cont_0", "cont_1", "label"]
    np.testing.assert_array_equal(assign["category"], [LEVELS.index(v) for v in levels])
    known = assign[assign.label != ""]
    assert metrics["nmi"] == pytest.approx(normalized_mutual_info_score(known.label, known.category))
    assert metrics["ari"] == pytest.approx(adjusted_rand_score(known.label, known.category))
    assert metrics["accuracy"] == pytest.approx(25 / 30) and metrics["purity"] == pytest.approx(25 / 30)

    table = pd.read_csv(out / "contingency.csv", index_col="category")
    assert table.to_numpy().tolist() == [[8, 0, 3], [2, 10, 0], [0, 0, 7]]
    best = max(sum(table.to_numpy()[k, p[k]] for k in range(3)) for p in itertools.permutations(range(3)))
    assert metrics["accuracy"] == pytest.approx(best / table.to_numpy().sum())
    cat0 = metrics["categories"]["0"]
    assert cat0 == {
        "size": 13,
        "purity": pytest.approx(8 / 11),
        "majority_label": "a",
        "label_counts": {"a": 8, "c": 3},
    }
    cmap = pd.read_csv(out / "category_map.csv")
    assert list(cmap.columns) == ["category", "label", "purity", "size"]
    assert cmap.label.tolist() == ["a", "b", "c"] and cmap["size"].tolist() == [13, 14, 9]

    assert set(metrics["baselines"]) == {"kmeans_pixels", "kmeans_morphology", "best_feature"}
    for key in ("kmeans_pixels", "kmeans_morphology"):
        scores = metrics["baselines"][key]
        assert set(scores) == {"accuracy", "nmi", "ari", "purity"} and 0 <= scores["accuracy"] <= 1
    best = metrics["baselines"]["best_feature"]
    assert best["chosen_by"] == "nmi" and best["nmi"] == max(best["candidates"].values())
    assert {"area", "intensity", "total_ch0", "dark_ch2", "log bright_ch1"} <= set(best["candidates"])

    # the wired codes are found: c0 is the radius, c1 the shift off centre
    codes = pd.read_csv(out / "codes.csv")
    assert list(codes.columns) == ["code", "feature", "rho", "p"]
    rho = codes.set_index(["code", "feature"])["rho"]
    assert rho["c0", "area"] > 0.9 and rho["c0", "total_ch0"] > 0.9
    # within a category every size measure ranks the disks alike (the Laplacian's variance grows
    # with the edge's length): the code is named by one of them
    named = metrics["codes"]["c0"]
    assert named["feature"] in {"area", "focus", "total_ch0", "total_ch1", "total_ch2", "stroke_width"}
    assert named["rho"] == pytest.approx(rho["c0"].max()) and abs(rho["c0", "slant"]) < 0.5
    assert metrics["codes"]["c1"]["feature"] == "centroid_offset" and metrics["codes"]["c1"]["rho"] > 0.9

    quality = metrics["quality"]
    assert quality["n_synthetic"] == 30 and quality["n_holdout"] == 11
    assert quality["holdout_seen_in_training"] is True  # the run recorded no hold-out
    assert quality["memorisation"]["encoder"]["ratio"] > 0
    clf = quality["classifier"]
    assert clf["n_test"] + clf["n_real_train"] == 30
    assert 0 <= clf["tstr_accuracy"] <= 1 and 0 <= clf["trtr_accuracy"] <= 1
    assert quality["tstr_accuracy"] == clf["tstr_accuracy"] == clf["cnn"]["tstr_accuracy"]
    assert clf["trtr_accuracy"] == clf["cnn"]["trtr_accuracy"] and clf["model"].startswith("small CNN")
    assert 0 <= clf["logistic"]["tstr_accuracy"] <= 1 and 0 <= clf["logistic"]["trtr_accuracy"] <= 1
    assert quality["fd_encoder"] == quality["encoder"]["frechet"] >= 0
    assert quality["memorisation_ratio"] == quality["memorisation"]["encoder"]["ratio"]

    for k in range(3):
        for folder in ("samples", "nearest", "morphology", "composition"):
            with Image.open(out / folder / f"cat{k:02d}.png") as im:
                assert im.format == "PNG"
        for j in range(2):
            with Image.open(out / "traversals" / f"cat{k:02d}_code{j}.png") as strip:
                assert strip.size == (2 * (3 * 33 + 1), 2 * (5 * 33 + 1))  # 3 steps across, 5 z down, x2
            with Image.open(out / "traversals" / f"cat{k:02d}_code{j}.gif") as gif:
                assert gif.n_frames == 4  # 3 steps and back
    with Image.open(out / "nearest" / "cat02.png") as im:
        nearest = np.asarray(im)
    assert set(np.unique(nearest)) == {0, 200, 255}  # category 2's crops, on white padding
    assert not list(out.rglob(".*.tmp"))

    anndata = pytest.importorskip("anndata", reason="anndata is the 'anndata' extra (in 'dev')")
    cells = anndata.read_h5ad(out / "cells.h5ad")
    assert cells.n_obs == len(levels) == len(assign)  # one row per crop
    assert list(cells.obs_names) == [str(i) for i in assign.crop_index]
    assert {*REQUIRED_OBS, "category", "category_label", "confidence"} <= set(cells.obs.columns)
    np.testing.assert_array_equal(cells.obs["category"], assign["category"])
    np.testing.assert_allclose(cells.obs["confidence"], assign["confidence"], rtol=1e-6)
    assert list(cells.obs["label"]) == labels and list(cells.obs["category_label"][:3]) == ["a", "a", "a"]
    assert {"area", "eccentricity", "intensity", "focus"} <= set(cells.var_names)
    assert cells.X.shape == (len(levels), cells.n_vars) and np.isfinite(cells.X).all()
    np.testing.assert_allclose(cells.obsm["q_continuous"], assign[["cont_0", "cont_1"]], rtol=1e-6)
    assert cells.obsm["q_probabilities"].shape == (len(levels), 3)
    np.testing.assert_allclose(cells.obsm["q_probabilities"].sum(axis=1), 1, rtol=1e-5)
    assert cells.obsm["q_features"].shape == (len(levels), 32 * 32 * 3)
    assert cells.uns["crops"] == str(crops)


def test_analyse_holds_out_the_crops_training_held_out(tmp_path, monkeypatch, report_calls):
    levels = [60, 130, 200] * 8
    labels = ["a", "b", "c"] * 8
    crops = _write_crops(tmp_path / "crops.h5", levels, labels, 32)
    meta = {"category_prior": [1 / 3] * 3, "holdout": [0, 4, 8, 13, 20]}
    monkeypatch.setattr(
        analyse_mod, "load_discriminator", lambda run, device: (WiredDiscriminator(32), SPEC, meta)
    )
    monkeypatch.setattr(
        analyse_mod,
        "load_generator",
        lambda run, ema, device, snapshots=False: (WiredGenerator(32), SPEC, meta),
    )
    quality = analyse(tmp_path / "run", crops, tmp_path / "analysis", TINY, device="cpu")["quality"]
    assert quality["holdout_seen_in_training"] is False
    assert quality["n_holdout"] == 5 and quality["n_train"] == 19  # not TINY's 30%: the run's own split
    assert quality["classifier"]["n_test"] == 5
    meta["holdout"] = [100, 101, 102]  # rows of another store
    with pytest.raises(InputError, match="held out of training"):
        analyse(tmp_path / "run", crops, tmp_path / "analysis2", TINY, device="cpu")


def test_classifiers_learn_from_equal_shares_whatever_the_runs_prior(tmp_path, monkeypatch, report_calls):
    # a learned prior that puts nine in ten samples in category 0: the distances compare that mix
    # with the real crops, but train-on-synthetic learns from every category alike, as the
    # synthetic data set (synthesis.proportions: uniform) holds them
    levels, labels = [60, 130, 200] * 8, ["a", "b", "c"] * 8
    crops = _write_crops(tmp_path / "crops.h5", levels, labels, 32)
    meta = {"category_prior": [0.9, 0.05, 0.05]}
    monkeypatch.setattr(
        analyse_mod, "load_discriminator", lambda run, device: (WiredDiscriminator(32), SPEC, meta)
    )
    monkeypatch.setattr(
        analyse_mod,
        "load_generator",
        lambda run, ema, device, snapshots=False: (WiredGenerator(32), SPEC, meta),
    )
    quality = analyse(tmp_path / "run", crops, tmp_path / "analysis", TINY, device="cpu")["quality"]
    shares = quality["classifier"]["synthetic_train_labels"]
    assert set(shares) == {"a", "b", "c"} and sum(shares.values()) == 30
    assert min(shares.values()) >= 5, shares  # the prior's draw would give b and c 1-2 each
    assert quality["n_synthetic"] == 30 and quality["tstr_balanced_accuracy"] is not None


def test_analyse_without_labels_gives_nulls_not_a_crash(tmp_path, report_calls):
    run = _write_run(tmp_path / "run", meta={"category_labels": ["healthy", None, ""]})
    crops = _write_crops(tmp_path / "crops.h5", [60, 130, 200] * 5, [""] * 15, 16, qc_fail=[0, 4, 14])
    out = tmp_path / "analysis"
    metrics = analyse(run, crops, out, TINY, device="cpu")
    assign = pd.read_csv(out / "assignments.csv")
    assert assign.crop_index.tolist() == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13]  # QC failures left out
    with h5py.File(out / "cells.h5ad", "r") as f:  # the same rows, with the real Q's hidden layer
        assert f["obs/_index"].asstr()[:].tolist() == [str(i) for i in assign.crop_index]
        assert f["obsm/q_features"].shape[0] == 12 and f["X"].shape[0] == 12
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "nmi", "ari"):
        assert saved[key] is None
        assert all(v[key] is None for v in saved["baselines"].values())
    assert all(c["purity"] is None and c["majority_label"] is None for c in saved["categories"].values())
    assert saved["quality"]["classifier"]["tstr_accuracy"] is None
    assert saved["n_labelled"] == 0 and metrics["n_crops"] == 12
    cmap = pd.read_csv(out / "category_map.csv")
    assert cmap.label.tolist() == ["healthy", "category_01", "category_02"]
    assert cmap.purity.isna().all()
    assert not (out / "composition").exists()
    assert (out / "samples" / "cat02.png").exists()
    assert set(saved["codes"]) == {"c0", "c1"}


def test_run_directory_without_a_model(tmp_path):
    crops = _write_crops(tmp_path / "crops.h5", [60] * 4, [""] * 4, 16)
    (tmp_path / "run").mkdir()
    with pytest.raises(InputError, match=r"run.*holds no network-final.pt"):
        analyse(tmp_path / "run", crops, tmp_path / "out", TINY, device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("size", "channels"), [(32, 3), (16, 1)])
def test_crops_that_do_not_fit_the_model(tmp_path, size, channels):
    run = _write_run(tmp_path / "run")
    crops = _write_crops(tmp_path / "crops.h5", [60] * 4, [""] * 4, size, channels)
    with pytest.raises(
        InputError,
        match=rf"crops.h5: crops are {size}x{size} with {channels} channel.*takes 16x16 "
        r"with 3 channel",
    ):
        analyse(run, crops, tmp_path / "out", TINY, device="cpu")


def test_too_few_crops(tmp_path):
    run = _write_run(tmp_path / "run")
    crops = _write_crops(tmp_path / "crops.h5", [60] * 5, [""] * 5, 16, qc_fail=[1, 2])
    with pytest.raises(InputError, match="crops.h5: holds 3 crops that passed QC"):
        analyse(run, crops, tmp_path / "out", TINY, device="cpu")


def test_report_errors_propagate(tmp_path, monkeypatch):
    broken = types.ModuleType("infogan_cells.report.pages")

    def write_report(out_dir, **kwargs):
        raise RuntimeError("template missing")

    broken.write_report = write_report
    monkeypatch.setitem(sys.modules, "infogan_cells.report.pages", broken)
    with pytest.raises(RuntimeError, match="template missing"):
        analyse_mod._call_report(tmp_path, tmp_path / "run", torch.device("cpu"))


def test_prior_falls_back_to_uniform():
    np.testing.assert_allclose(analyse_mod._prior([2, 1, 1], 3), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(analyse_mod._prior([[2, 1, 1], [1, 1]], 3), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(analyse_mod._prior(None, 4), [0.25] * 4)
    np.testing.assert_allclose(analyse_mod._prior([1, 1], 3), [1 / 3] * 3)


class SizedByCategory(WiredGenerator):
    """Category k sets the disk's radius (4, 8 or 12 px); c0 adds at most 1 px; c1 nothing."""

    def forward(self, x):
        z, onehot, cont = x[:, : SPEC.z_dim], x[:, SPEC.z_dim : SPEC.z_dim + 3], x[:, -2:]
        radius = onehot @ torch.tensor([4.0, 8.0, 12.0]) + cont[:, 0] + 0.3 * z[:, 0].clamp(-1, 1)
        r = torch.arange(self.size, dtype=x.dtype) - (self.size - 1) / 2
        inside = (r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius[:, None, None] ** 2
        return (inside * (200 / 127.5) - 1)[:, None].expand(-1, 3, -1, -1)


def test_code_rho_is_what_the_code_changes_inside_a_category(tmp_path):
    """Pooled over categories, the disks' sizes are ranked by category (pooled Spearman of c0 with the
    area: about 0.3); ranked inside each category, c0 is plainly the size slider."""
    table = analyse_mod.traverse(
        SizedByCategory(32), SPEC, 3, AnalyseConfig(traversal_steps=5, traversal_samples=16), tmp_path,
        torch.device("cpu"), ["ch0", "ch1", "ch2"],
    )  # fmt: skip
    rho = table.set_index(["code", "feature"])["rho"]
    assert rho["c0", "area"] > 0.85 and rho["c0", "total_ch0"] > 0.85
    assert abs(rho["c1", "area"]) < 0.3


def test_synthetic_cells_come_from_every_kept_generator(tmp_path, monkeypatch, report_calls):
    """A run that kept earlier generators (train.generator_snapshots): the synthetic cells the
    analysis scores and shows are drawn as synthesis draws them, from all; traversals from the last."""
    from synth_runs import make_run

    run = make_run(tmp_path / "run", snapshots=2)  # 16 px, 3 channels, 3 generators
    crops = _write_crops(tmp_path / "crops.h5", [60, 130, 200] * 5, ["a", "b", "c"] * 5, 16)
    drawn, traversed = [], []
    generate, traverse = analyse_mod.generate, analyse_mod.traverse
    monkeypatch.setattr(analyse_mod, "generate", lambda G, *a, **k: drawn.append(G) or generate(G, *a, **k))
    monkeypatch.setattr(
        analyse_mod, "traverse", lambda G, *a, **k: traversed.append(G) or traverse(G, *a, **k)
    )
    metrics = analyse(run, crops, tmp_path / "analysis", TINY, device="cpu")
    assert metrics["generators"] == 3
    assert drawn and all(isinstance(G, GeneratorEnsemble) and len(G.members) == 3 for G in drawn)
    assert len(traversed) == 1 and not isinstance(traversed[0], GeneratorEnsemble)
