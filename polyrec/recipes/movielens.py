"""MovieLens-100K and -1M as multi-scenario, multi-task data.

Scenarios are user age groups (<25, 25-34, >=35), as M3oE and Scenario-Wise-Rec frame MovieLens;
tasks are click = rating > 3 and like = rating > 4 (like implies click). The rating itself stays in
the table as `rating` for regression tasks, and `timestamp` drives the per-user temporal split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from polyrec.data.io import read_delimited
from polyrec.errors import PolyrecError
from polyrec.data.recipe import RawData, Recipe, register_recipe
from polyrec.utils.download import extract_members, fetch_url, pip_wheel, verify_sha256

AGE_BUCKETS = ("<25", "25-34", ">=35")
# sha256 of the ML-100K files in the recbole 1.2.1 wheel (they match the wheel's RECORD)
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.kg": "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779",
    "ml-100k.link": "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948",
}
GROUPLENS = "https://files.grouplens.org/datasets/movielens"
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_FOLDER = "recbole/dataset_example/ml-100k/"


def _from_recbole(dest: Path, names: list[str], log: Callable[[str], None]) -> None:
    """Extract the named ML-100K files from the recbole wheel into dest and check them against known digests."""
    wheel = pip_wheel(RECBOLE_WHEEL, log=log)
    for name in names:
        extract_members(wheel, RECBOLE_FOLDER + name, dest)
    verify_sha256({dest / name: RECBOLE_SHA256[name] for name in names})


def age_bucket(age: pa.ChunkedArray) -> pa.Array:
    """Age in years (or ML-1M's age codes 1/18/25/35/45/50/56) -> '<25' / '25-34' / '>=35'."""
    a = pc.cast(age, pa.int64()).to_numpy()
    idx = np.where(a < 25, 0, np.where(a < 35, 1, 2))
    return pa.array(np.array(AGE_BUCKETS, dtype=object)[idx], type=pa.string())


def _labels(table: pa.Table) -> pa.Table:
    rating = pc.cast(table["rating"], pa.float64())
    table = table.set_column(table.column_names.index("rating"), "rating", rating)
    table = table.append_column("click", pc.cast(pc.greater(rating, 3), pa.int8()))
    return table.append_column("like", pc.cast(pc.greater(rating, 4), pa.int8()))


def _join(ratings: pa.Table, users: pa.Table, items: pa.Table) -> pa.Table:
    joined = ratings.join(users, "user_id", join_type="inner").join(items, "item_id", join_type="inner")
    if joined.num_rows != ratings.num_rows:
        raise PolyrecError(
            f"{ratings.num_rows - joined.num_rows} ratings refer to users or movies missing from the "
            "user/movie files; the files do not belong together."
        )
    # restore the file order (joins may reorder rows) so splits are reproducible
    return joined.sort_by([("row", "ascending")]).drop_columns(["row"])


def _with_row(table: pa.Table) -> pa.Table:
    return table.append_column("row", pa.array(np.arange(table.num_rows)))


class _MovieLens(Recipe):
    default_split = "random"
    topk_schema_name = "movielens-topk"
    time_column = "timestamp"
    user_column = "user_id"

    def derive(self, table: pa.Table) -> pa.Table:
        if "age_bucket" not in table.column_names and "age" in table.column_names:
            table = table.append_column("age_bucket", age_bucket(table["age"]))
        return table


@register_recipe
class MovieLens100K(_MovieLens):
    name = "movielens-100k"
    folder = "ml-100k"
    kg_name = "ml-100k"
    description = ("MovieLens 100K (943 users, 1,682 movies, 100k ratings); scenarios = age <25/25-34/>=35; "
                   "tasks click (rating>3), like (rating>4).")

    def locate(self, root: Path) -> dict[str, Path]:
        d = root / self.folder
        atomic = {k: d / f"ml-100k.{k}" for k in ("inter", "user", "item")}
        if all(p.exists() for p in atomic.values()):
            return atomic
        official = {"inter": d / "u.data", "user": d / "u.user", "item": d / "u.item"}
        if all(p.exists() for p in official.values()):
            return official
        raise self.missing(root, ["ml-100k.inter", "ml-100k.user", "ml-100k.item"],
                           "(or GroupLens's u.data, u.user, u.item).")

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        d = root / self.folder
        d.mkdir(parents=True, exist_ok=True)
        try:
            zpath = fetch_url(f"{GROUPLENS}/ml-100k.zip", d / "ml-100k.zip", log=log)
            extract_members(zpath, "ml-100k/u.", d)
            return
        except OSError as exc:
            log(f"GroupLens not reachable ({exc}); using the copy shipped in the recbole 1.2.1 wheel")
        _from_recbole(d, list(RECBOLE_SHA256), log)

    def download_kg(self, root: Path, log: Callable[[str], None]) -> None:
        """The Freebase KG (`ml-100k.kg`, `ml-100k.link`): GroupLens's zip does not have it, RecBole's wheel does."""
        d = root / self.folder
        d.mkdir(parents=True, exist_ok=True)
        log(f"{self.name}: knowledge-graph files not found under {d}; fetching them from {RECBOLE_WHEEL}")
        _from_recbole(d, [f"{self.kg_name}.kg", f"{self.kg_name}.link"], log)

    def items(self, files: dict[str, Path]) -> pa.Table:
        """The item file (every movie, rated or not): item_id, title, release_year, genres ("a|b")."""
        if files["item"].name == "u.item":
            genre_names = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                           "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                           "Romance", "Sci-Fi", "Thriller", "War", "Western"]
            cols = ["item_id", "title", "release_date", "video_date", "url"] + genre_names
            raw = read_delimited(files["item"], "|", cols, encoding="latin-1")
            flags = np.stack([raw[g].to_numpy(zero_copy_only=False) == "1" for g in genre_names], axis=1)
            genres = ["|".join(g for g, f in zip(genre_names, row) if f) for row in flags]
            return pa.table({"item_id": raw["item_id"], "title": raw["title"],
                             "release_year": pc.utf8_slice_codeunits(raw["release_date"], -4),
                             "genres": pa.array(genres)})
        # RecBole atomic file (typed header line)
        raw = read_delimited(files["item"], "\t", ["item_id", "title", "release_year", "class"], header=True,
                             encoding="latin-1")
        return pa.table({"item_id": raw["item_id"], "title": raw["title"], "release_year": raw["release_year"],
                         "genres": pc.replace_substring(raw["class"], " ", "|")})

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        if files["inter"].name == "u.data":
            ratings = read_delimited(files["inter"], "\t", ["user_id", "item_id", "rating", "timestamp"])
            users = read_delimited(files["user"], "|", ["user_id", "age", "gender", "occupation", "zip"])
        else:  # RecBole atomic files (typed header line)
            ratings = read_delimited(files["inter"], "\t", ["user_id", "item_id", "rating", "timestamp"], header=True)
            users = read_delimited(files["user"], "\t", ["user_id", "age", "gender", "occupation", "zip"], header=True)
        items = self.items(files)
        ratings = _with_row(ratings).set_column(3, "timestamp", pc.cast(pc.cast(ratings["timestamp"], pa.float64()), pa.int64()))
        users = users.set_column(1, "age", pc.cast(users["age"], pa.int64()))
        users = users.set_column(4, "zip_prefix", pc.utf8_slice_codeunits(users["zip"], 0, 3))
        table = _labels(_join(ratings, users, items))
        return RawData(table=self.derive(table), notes=[f"{table.num_rows} ratings from {files['inter'].name}"])


@register_recipe
class MovieLens1M(_MovieLens):
    name = "movielens-1m"
    folder = "ml-1m"
    description = ("MovieLens 1M (6,040 users, 3,706 movies, 1M ratings); scenarios = age codes {1,18}/{25}/"
                   "{35,45,50,56}; tasks click (rating>3), like (rating>4).")

    RATINGS = ("ratings.dat", "ratings.dat.gz", "subset-users-1-2999/ratings.dat.gz")

    def locate(self, root: Path) -> dict[str, Path]:
        d = root / self.folder
        files = {"users": d / "users.dat", "movies": d / "movies.dat"}
        missing = [p.name for p in files.values() if not p.exists()]
        ratings = next((d / r for r in self.RATINGS if (d / r).exists()), None)
        if ratings is None:
            missing.append("ratings.dat")
        if missing:
            raise self.missing(root, missing, "GroupLens distributes them in ml-1m.zip.")
        return {**files, "ratings": ratings}

    def download(self, root: Path, log: Callable[[str], None]) -> None:
        d = root / self.folder
        d.mkdir(parents=True, exist_ok=True)
        try:
            zpath = fetch_url(f"{GROUPLENS}/ml-1m.zip", d / "ml-1m.zip", log=log)
        except OSError as exc:
            raise PolyrecError(
                f"Could not download MovieLens-1M from GroupLens ({exc}). Download ml-1m.zip from "
                f"{GROUPLENS}/ml-1m.zip yourself and unzip it into {d}."
            ) from None
        extract_members(zpath, "ml-1m/", d)

    def items(self, files: dict[str, Path]) -> pa.Table:
        """movies.dat (every movie, rated or not): item_id, title, genres ("a|b"), release_year."""
        movies = read_delimited(files["movies"], "::", ["item_id", "title", "genres"], encoding="latin-1")
        year = pc.struct_field(pc.extract_regex(movies["title"], r"\((?P<y>\d{4})\)\s*$"), [0])
        return movies.append_column("release_year", pc.fill_null(year, "unknown"))

    def load(self, files: dict[str, Path], options: dict[str, Any]) -> RawData:
        ratings = read_delimited(files["ratings"], "::", ["user_id", "item_id", "rating", "timestamp"])
        users = read_delimited(files["users"], "::", ["user_id", "gender", "age", "occupation", "zip"])
        ratings = _with_row(ratings).set_column(3, "timestamp", pc.cast(ratings["timestamp"], pa.int64()))
        users = users.set_column(2, "age", pc.cast(users["age"], pa.int64()))
        users = users.append_column("zip_prefix", pc.utf8_slice_codeunits(users["zip"], 0, 3))
        table = _labels(_join(ratings, users, self.items(files)))
        notes = [f"{table.num_rows} ratings from {files['ratings'].relative_to(files['users'].parent)}"]
        if "subset" in str(files["ratings"]):
            notes.append("PARTIAL ratings: the users 1-2999 subset, not the official full ratings.dat")
        return RawData(table=self.derive(table), notes=notes)
