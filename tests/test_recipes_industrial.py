"""Ali-CCP, AliExpress and KuaiRand recipes on the shipped samples, and KuaiRand's raw-log join."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polyrec.config import DataConfig
from polyrec.recipes import RECIPES, prepare
from helpers import require_dataset


@pytest.mark.parametrize("name, tasks, scenario", [
    ("aliccp-sample", ["click", "purchase"], "301"),
    ("aliexpress-sample", ["click", "conversion"], "country"),
    ("kuairand-sample", ["is_click"], "tab"),
])
def test_samples_prepare_with_their_real_schema(name, tasks, scenario):
    require_dataset(name)
    data = prepare(DataConfig(dataset=name), seed=0, log=lambda s: None)
    assert data.encoders.schema.task_names == tasks
    assert data.encoders.schema.scenario.source == scenario
    for split in data.splits.values():
        assert set(np.unique(split.labels)) <= {0.0, 1.0}
        assert (split.scenario > 0).all()  # every sample's scenario was seen in training


def test_aliccp_sample_scenarios_are_field_301():
    require_dataset("aliccp-sample")
    data = prepare(DataConfig(dataset="aliccp-sample"), seed=0, log=lambda s: None)
    assert sorted(data.encoders.scenario.tokens) == ["1", "2", "3"]
    assert data.meta["rows"] == {"train": 100, "val": 50, "test": 50}


def test_aliccp_drops_purchase_without_click(tmp_path, monkeypatch):
    d = tmp_path / "ali-ccp"
    d.mkdir()
    header = "click,purchase,101,121,122,124,125,126,127,128,129,205,206,207,210,216,508,509,702,853,301," \
             "109_14,110_14,127_14,150_14,D109_14,D110_14,D127_14,D150_14,D508,D509,D702,D853"
    rows = ["1,1", "0,1", "1,0", "0,0"] * 3  # the 0,1 rows (purchase without click) must go
    body = [f"{r}," + ",".join(["1"] * 18) + f",{1 + i % 3}," + ",".join(["1"] * 4) + "," + ",".join(["0.5"] * 8)
            for i, r in enumerate(rows)]
    for split in ("train", "val", "test"):
        (d / f"ali_ccp_{split}.csv").write_text("\n".join([header, *body]) + "\n")
    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    data = prepare(DataConfig(dataset="aliccp"), seed=0, log=lambda s: None)
    assert data.meta["rows"]["train"] == 9
    labels = data.splits["train"].labels
    assert not ((labels[:, 1] == 1) & (labels[:, 0] == 0)).any()
    assert any("3 with purchase but no click dropped" in n for n in data.meta["notes"])


def _write_kuairand(root: Path, n: int = 400) -> None:
    rng = np.random.default_rng(0)
    d = root / "kuairand" / "KuaiRand-1K" / "data"
    d.mkdir(parents=True)
    log = ["user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,is_hate,"
           "long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,is_profile_enter,is_rand,tab"]
    for i in range(n):
        click = int(rng.random() < 0.4)
        log.append(f"{i % 20},{rng.integers(0, 50)},20220422,{rng.integers(0, 24) * 100},{1650000000000 + i},"
                   f"{click},{int(click and rng.random() < 0.2)},0,0,0,0,{int(rng.random() < 0.3)},"
                   f"{rng.integers(0, 9000)},9000,0,0,0,0,{rng.integers(0, 3)}")
    (d / "log_standard_4_22_to_5_08_1k.csv").write_text("\n".join(log) + "\n")
    ucols = ["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author", "follow_user_num",
             "follow_user_num_range", "fans_user_num", "fans_user_num_range", "friend_user_num",
             "friend_user_num_range", "register_days", "register_days_range"] + [f"onehot_feat{i}" for i in range(18)]
    users = ["user_id," + ",".join(ucols)] + [f"{u},high_active," + ",".join(["1"] * (len(ucols) - 1)) for u in range(20)]
    (d / "user_features_1k.csv").write_text("\n".join(users) + "\n")
    vcols = "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,server_width," \
            "server_height,music_id,music_type,tag"
    videos = [vcols] + [f'{v},{v % 7},NORMAL,2022-04-01,ShortImport,public,9000,720,1280,{v},0,"{v % 5},{v % 3}"'
                        for v in range(50)]
    (d / "video_features_basic_1k.csv").write_text("\n".join(videos) + "\n")


def test_kuairand_raw_logs_join_and_three_tasks(tmp_path, monkeypatch):
    _write_kuairand(tmp_path)
    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    data = prepare(DataConfig(dataset="kuairand"), seed=0, log=lambda s: None)
    assert data.encoders.schema.task_names == ["is_click", "long_view", "is_like"]
    assert sum(data.meta["rows"].values()) == 400
    assert sorted(data.encoders.scenario.tokens) == ["0", "1", "2"]
    sources = {f.source for f in data.encoders.schema.features}
    assert not sources & {"play_time_ms", "profile_stay_time", "comment_stay_time"}  # outcomes never inputs
    assert data.splits["train"].sequences["tag"].max() > 0  # multi-valued tags encoded
    temporal = prepare(DataConfig(dataset="kuairand", split="temporal"), seed=0, log=lambda s: None)
    assert temporal.meta["split"] == "temporal"


def test_manual_download_recipes_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYREC_DATA", str(tmp_path))
    from polyrec.errors import PolyrecError

    for name in ("aliccp", "aliexpress"):
        assert RECIPES[name].auto_download is False
        with pytest.raises(PolyrecError, match="Tianchi"):
            prepare(DataConfig(dataset=name), seed=0, log=lambda s: None)
