"""KuaiRand (Gao et al., CIKM 2022): Kuaishou short-video logs with user and video features.

Scenario = `tab` (the app page where the video was shown). Tasks: is_click, long_view, is_like
(change them with `data.tasks`, e.g. [is_click, is_follow]). Inputs are known before the
impression only: user and video ids, user features, video features, the hour of the day; watch
times and stay times are outcomes and are never inputs.

Files: KuaiRand-1K (log_standard_*_1k.csv, user_features_1k.csv, video_features_basic_1k.csv under
$POLYREC_DATA/kuairand/KuaiRand-1K/data/) or KuaiRand-Pure (the same with _pure), downloaded from
the authors' Zenodo record when missing. Split: seeded random 80/10/10, or data.split=temporal
(per user, by time_ms). `kuairand-sample` reads the 200-row preprocessed sample that ships with
Scenario-Wise-Rec (it carries only is_click, so that recipe's only task is is_click).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, read_csv, register_recipe
from polyrec.utils.download import fetch_url

ZENODO = "https://zenodo.org/records/10439422/files"


@register_recipe
class KuaiRand(Recipe):
    name = "kuairand"
    folder = "kuairand"
    description = "KuaiRand-1K/Pure logs + user/video features; scenario = tab; tasks is_click, long_view, is_like."
    time_column = "time_ms"
    user_column = "user_id"

    def locate(self, root: Path) -> dict[str, Path]:
        for variant, suffix in (("KuaiRand-1K", "1k"), ("KuaiRand-Pure", "pure")):
            d = root / self.folder / variant / "data"
            logs = sorted(d.glob(f"log_standard_*_{suffix}.csv"))
            users, videos = d / f"user_features_{suffix}.csv", d / f"video_features_basic_{suffix}.csv"
            if logs and users.exists() and videos.exists():
                return {**{f"log{i}": p for i, p in enumerate(logs)}, "users": users, "videos": videos}
        raise self.missing(root, ["KuaiRand-1K/data/log_standard_4_22_to_5_08_1k.csv",
                                  "KuaiRand-1K/data/user_features_1k.csv",
                                  "KuaiRand-1K/data/video_features_basic_1k.csv"],
                           "(or the KuaiRand-Pure files).")

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        d = root / self.folder
        try:
            archive = fetch_url(f"{ZENODO}/KuaiRand-Pure.tar.gz", d / "KuaiRand-Pure.tar.gz", timeout=60, log=log)
        except OSError as exc:
            raise PolyrecError(f"Could not download KuaiRand-Pure ({exc}); get it from {ZENODO}/ and unpack "
                               f"into {d}.") from None
        with tarfile.open(archive) as tf:
            tf.extractall(d, filter="data")

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        logs = [read_csv(p) for k, p in sorted(files.items()) if k.startswith("log")]
        log_table = pa.concat_tables(logs, promote_options="default")
        hour = pc.cast(pc.divide(pc.cast(log_table["hourmin"], pa.int64()), 100), pa.int64())  # integer division
        log_table = log_table.append_column("hour", hour)
        users = read_csv(files["users"])
        videos = read_csv(files["videos"]).select(
            ["video_id", "author_id", "video_type", "upload_type", "visible_status", "video_duration",
             "server_width", "server_height", "music_type", "tag"])
        log_table = log_table.append_column("row", pa.array(range(log_table.num_rows)))
        table = log_table.join(users, "user_id", join_type="left outer").join(videos, "video_id", join_type="left outer")
        table = table.sort_by("row").drop_columns(["row"])
        return RawData(table=table, notes=[f"{log_table.num_rows} impressions from {len(logs)} log file(s)"])


@register_recipe
class KuaiRandSample(KuaiRand):
    name = "kuairand-sample"
    folder = "samples/kuairand"
    description = "The 200-row preprocessed KuaiRand sample shipped with Scenario-Wise-Rec (is_click only)."
    time_column = None
    auto_download = False

    def locate(self, root: Path) -> dict[str, Path]:
        path = root / self.folder / "kuairand_sample.csv"
        if not path.exists():
            raise self.missing(root, ["kuairand_sample.csv"], "It ships with Scenario-Wise-Rec.")
        return {"table": path}

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        raise PolyrecError(f"{self.name} is a sample shipped with Scenario-Wise-Rec; expected under {root / self.folder}.")

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        return RawData(table=read_csv(files["table"]), notes=["preprocessed 200-row sample: schema checks only"])
