"""The pure sources parse small files correctly and the generator is deterministic."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stream_app.codec import DecodeError, DlqReason, decode_event, encode_event
from stream_app.events import Event, EventKind
from stream_app.sources import SourceError
from stream_app.sources.corrupt import CORRUPTIONS, corrupt, corrupt_click
from stream_app.sources.csv import read_csv
from stream_app.sources.generate import generate, make_world
from stream_app.sources.jsonl import read_jsonl, write_jsonl
from stream_app.sources.movielens import read_movies, read_ratings, release_times

DATA = Path(__file__).resolve().parents[1] / "data"


def test_movielens_ratings_split_mapping() -> None:
    events = list(read_ratings(DATA / "ratings_small.dat"))
    assert [(e.event_id, e.user_id, e.item_id, e.kind) for e in events] == [
        ("ml-1-1193-978300760", "1", "1193", EventKind.PURCHASE),
        ("ml-1-661-978302109", "1", "661", EventKind.CLICK),
        ("ml-2-1193-978300000", "2", "1193", EventKind.PURCHASE),
        ("ml-2-3408-978300100", "2", "3408", EventKind.CLICK),
    ]
    assert events[0].ts == 978300760000


def test_movielens_threshold_both_mode_and_time_order() -> None:
    events = list(read_ratings(DATA / "ratings_small.dat", purchase_threshold=5, mode="both"))
    kinds = Counter(e.kind for e in events)
    assert kinds == {EventKind.CLICK: 4, EventKind.PURCHASE: 1}
    assert len({e.event_id for e in events}) == len(events)
    ordered = list(read_ratings(DATA / "ratings_small.dat", sort_by_time=True))
    assert [e.ts for e in ordered] == sorted(e.ts for e in ordered)


@pytest.mark.parametrize("mode", ["split", "both"])
def test_a_limited_time_ordered_read_is_the_head_of_the_full_one(mode: str) -> None:
    full = [e.event_id for e in read_ratings(DATA / "ratings_small.dat", mode=mode,
                                             sort_by_time=True)]
    for limit in (0, 1, 2, 3, len(full) - 1, len(full), len(full) + 5):
        assert [e.event_id for e in read_ratings(DATA / "ratings_small.dat", mode=mode,
                                                 sort_by_time=True, limit=limit)] \
            == full[:limit]


def test_a_limited_read_stops_before_the_line_after_its_last_event(tmp_path: Path) -> None:
    """Unsorted, the line after the limit was read too, and a bad one there raised."""
    path = tmp_path / "ratings.dat"
    path.write_text("1::1::5::978300010\n1::2::3::978300011\nnot a rating\n")
    assert [e.event_id for e in read_ratings(path, limit=2)] == [
        "ml-1-1-978300010", "ml-1-2-978300011"]
    assert [e.event_id for e in read_ratings(path, limit=2, mode="both")] == [
        "ml-1-1-978300010", "ml-1-1-978300010-p"]


def test_a_limited_time_ordered_read_holds_only_the_replayed_ratings(tmp_path: Path) -> None:
    """Sorting for `--limit 1000` held every rating of the file (gap named in stop 33)."""
    import tracemalloc

    path = tmp_path / "ratings.dat"
    rng = np.random.default_rng(0)
    path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in zip(
        rng.integers(1, 5000, 20_000), rng.integers(1, 4000, 20_000),
        rng.integers(1, 6, 20_000), rng.integers(956_703_932, 1_046_454_590, 20_000))))

    def peak(limit: int | None) -> int:
        tracemalloc.start()
        try:
            for _ in read_ratings(path, sort_by_time=True, limit=limit):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(100) * 10 < peak(None)


def test_movielens_tab_variant_and_gzip(tmp_path: Path) -> None:
    assert [e.event_id for e in read_ratings(DATA / "u_small.data")] == [
        "ml-196-242-881250949",
        "ml-186-302-891717742",
    ]
    packed = tmp_path / "ratings.dat.gz"
    with (DATA / "ratings_small.dat").open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert list(read_ratings(packed)) == list(read_ratings(DATA / "ratings_small.dat"))


def test_movielens_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::2::3::978300000\n1::2::three::978300000\n")
    with pytest.raises(SourceError, match=r"ratings.dat:2"):
        list(read_ratings(path))
    # Lines the events could not carry were sent, and dead-lettered by the trainer.
    for line, why in (("1::2::3::40000000000", "before the year 3000"),
                      ("1::2::3::4", "from 1973-03-03"),
                      (f"{'9' * 250}::2::3::978300000", "id too long")):
        path.write_text(f"1::2::3::978300000\n{line}\n")
        with pytest.raises(SourceError, match=why) as caught:
            list(read_ratings(path, sort_by_time=True))
        assert caught.value.line == 2


def test_movielens_10m_half_stars(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_text("1::185::4.5::838983525\n1::186::3.5::838983526\n")
    assert [e.kind for e in read_ratings(path, mode="split")] == [EventKind.PURCHASE,
                                                                  EventKind.CLICK]


def test_read_movies_latin1_and_titles_with_separator() -> None:
    titles = read_movies(DATA / "movies_small.dat")
    assert titles == {"1": "Toy Story (1995)", "2": "Café Society (1995)", "3": "A::B::C (1999)"}


def test_movies_with_a_byte_order_mark_keep_their_first_title(tmp_path: Path) -> None:
    """Its first id read as 'ï»¿1': film 1 lost its title and release time, unsaid."""
    movies = tmp_path / "movies.dat"
    movies.write_bytes(b"\xef\xbb\xbf" + (DATA / "movies_small.dat").read_bytes())
    assert read_movies(movies)["1"] == "Toy Story (1995)"


def test_a_file_that_is_not_ratings_says_what_a_ratings_line_is(tmp_path: Path) -> None:
    """'expected 4 fields, got 1' named neither separator (a u.data with spaces)."""
    path = tmp_path / "u.data"
    path.write_text("196 242 3 881250949\n")
    with pytest.raises(SourceError, match="got 1: a ratings line is UserID::MovieID"):
        list(read_ratings(path))


@pytest.mark.parametrize("name", ["e.jsonl", "ratings.dat", "e.jsonl.gz"])
def test_an_empty_input_is_an_error_not_a_replay_of_nothing(tmp_path: Path,
                                                           name: str) -> None:
    """An empty file (or a .gz cut to nothing) replayed "0 events", exit 0 (review)."""
    path = tmp_path / name
    path.write_bytes(b"")
    read = read_ratings if name == "ratings.dat" else read_jsonl
    with pytest.raises(SourceError, match="the file is empty"):
        list(read(path))


@pytest.mark.parametrize("line", ["1_0::1193::5::978300760", "+1::1193::5::978300760",
                                  "1::1193::5::9_78300760"])
def test_movielens_ids_are_ascii_digits_alone(tmp_path: Path, line: str) -> None:
    """int() read "1_0" as user 10, merging two users' ratings (review)."""
    path = tmp_path / "ratings.dat"
    path.write_text(line + "\n")
    with pytest.raises(SourceError, match="are digits"):
        list(read_ratings(path))


def test_a_utf16_ratings_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    path.write_bytes("1::1193::5::978300760\n".encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16"):
        list(read_ratings(path))


def test_release_times_from_titles_ride_on_the_events() -> None:
    released = release_times(read_movies(DATA / "movies_small.dat"))
    assert released == {"1": 788_918_400_000, "2": 788_918_400_000,  # 1995-01-01 UTC
                        "3": 915_148_800_000}  # 1999-01-01 UTC
    events = list(read_ratings(DATA / "ratings_small.dat", mode="both",
                               released={"1193": 157_766_400_000}))
    assert [e.item_released_at for e in events if e.item_id == "1193"] == [157_766_400_000] * 4
    assert [e.item_released_at for e in events if e.item_id != "1193"] == [None, None]
    # Films from before 1970 have negative times, which the event schema accepts.
    (old,) = release_times({"7": "Metropolis (1927)"}).values()
    event = dataclasses.replace(events[0], item_released_at=old)
    assert old < 0
    assert decode_event(encode_event(event), b"1", event.kind).item_released_at == old


def test_real_movielens_if_present() -> None:
    """Reads the shared data in place (never copied into the repo); cheap: movies only."""
    movies = Path(__file__).resolve().parents[3] / "shared/data/movielens-1m/movies.dat.gz"
    if not movies.exists():
        pytest.skip("shared MovieLens data not present")
    assert len(read_movies(movies)) == 3883


def test_jsonl_events_kinds_and_normalisation() -> None:
    events = list(read_jsonl(DATA / "events_small.jsonl", kind=EventKind.CLICK))
    assert [(e.event_id, e.kind, e.user_id) for e in events] == [
        ("c1", EventKind.CLICK, "u1"),
        ("p1", EventKind.PURCHASE, "u1"),
        ("c2", EventKind.CLICK, "7"),
    ]
    assert events[1].quantity == 2 and events[1].price == 9.5
    assert events[2].context == {"page": "home"}


def test_jsonl_without_default_kind_refuses_kindless_lines() -> None:
    with pytest.raises(SourceError) as caught:
        list(read_jsonl(DATA / "events_small.jsonl"))
    assert caught.value.line == 4 and caught.value.reason is DlqReason.MISSING_FIELD


def test_jsonl_stops_at_the_first_bad_line_with_its_reason() -> None:
    with pytest.raises(SourceError) as caught:
        list(read_jsonl(DATA / "events_bad.jsonl"))
    assert caught.value.line == 2 and caught.value.reason is DlqReason.EMPTY_ID


def test_a_jsonl_line_that_names_a_field_twice_stops_the_read(tmp_path: Path) -> None:
    """`replay` sent the last value as a clean event, one the topic itself refuses."""
    path = tmp_path / "twice.jsonl"
    path.write_bytes(b'{"kind":"click","event_id":"e1","user_id":"u1","item_id":"i1",'
                     b'"ts":1700000000000}\n'
                     b'{"kind":"click","event_id":"e2","user_id":"u1","item_id":"i1",'
                     b'"ts":1700000000000,"item_id":"i2"}\n')
    with pytest.raises(SourceError, match="'item_id' twice") as caught:
        list(read_jsonl(path))
    assert caught.value.line == 2 and caught.value.reason is DlqReason.DUPLICATE_KEY


@pytest.mark.parametrize("line", [b'[{"kind":"click"}]', b'"hello"', b"3"])
def test_a_jsonl_line_that_is_no_object_is_not_told_to_add_a_kind(
        tmp_path: Path, line: bytes) -> None:
    """A JSON array file was told to pass --kind, which only changed the error."""
    path = tmp_path / "arr.json"
    path.write_bytes(line + b"\n")
    for kind in (None, EventKind.CLICK):
        with pytest.raises(SourceError, match="must be one JSON object") as caught:
            list(read_jsonl(path, kind=kind))
        assert caught.value.reason is DlqReason.NOT_OBJECT and "--kind" not in str(caught.value)


def test_a_value_as_long_as_the_bound_is_read_from_a_file(tmp_path: Path) -> None:
    """The line ending counted towards the 64 KiB bound: a value the topic takes was
    refused from a file as too_large."""
    from stream_app.codec.wire import EVENT_MAX_BYTES

    head = (b'{"kind":"click","event_id":"e1","user_id":"u","item_id":"i","ts":1700000000001,'
            b'"context":{"p":"')
    line = head + b"x" * (EVENT_MAX_BYTES - len(head) - 3) + b'"}}'
    assert len(line) == EVENT_MAX_BYTES
    path = tmp_path / "big.jsonl"
    path.write_bytes(line + b"\r\n")
    assert [e.event_id for e in read_jsonl(path)] == ["e1"]
    # The bound is the value's, which has no "kind": a line held to it was refused
    # though the value sent would have fitted exactly; one byte more is too large.
    kind = b'"kind":"click",'
    fits = line[:-3] + b"x" * len(kind) + b'"}}'
    path.write_bytes(fits + b"\n")
    (event,) = read_jsonl(path)
    assert len(encode_event(event)) == EVENT_MAX_BYTES
    path.write_bytes(fits[:-3] + b'x"}}\n')
    with pytest.raises(SourceError, match="too_large"):
        list(read_jsonl(path))


def test_a_line_that_grows_past_the_bound_when_re_encoded_stops_at_its_line(
        tmp_path: Path) -> None:
    """Numbers are re-encoded as orjson writes them (1e15: 1000000000000000.0), so a 30 KB
    line became a value over 64 KiB that replay sent and the trainer dead-lettered."""
    numbers = b",".join([b"1e15"] * 6000)
    line = b'{"kind":"click","event_id":"e1","user_id":"u","item_id":"i","ts":1700000000001,' \
        b'"context":{"n":[' \
        + numbers + b']}}'
    path = tmp_path / "grows.jsonl"
    path.write_bytes(b'{"kind":"click","event_id":"e0","user_id":"u","item_id":"i","ts":1700000000001}\n'
                     + line + b"\n")
    with pytest.raises(SourceError, match="grows.jsonl:2: too_large") as caught:
        list(read_jsonl(path))
    assert caught.value.reason is DlqReason.TOO_LARGE and len(line) < 32 * 1024


def test_jsonl_write_read_round_trip(tmp_path: Path) -> None:
    events = [r.event for r in generate(50, 5, 20, seed=2) if r.event is not None]
    assert write_jsonl(tmp_path / "out.jsonl", events) == 50
    assert list(read_jsonl(tmp_path / "out.jsonl")) == events


def test_csv_events() -> None:
    events = list(read_csv(DATA / "events_small.csv"))
    assert events == [
        Event(event_id="c1", user_id="u1", item_id="i1", ts=1700000000000, kind=EventKind.CLICK),
        Event(
            event_id="p1", user_id="u1", item_id="i2", ts=1700000001000,
            kind=EventKind.PURCHASE, quantity=2, price=9.5,
        ),
        Event(event_id="p2", user_id="u2", item_id="i2", ts=1700000002000, kind=EventKind.PURCHASE),
    ]  # fmt: skip


def test_csv_with_a_byte_order_mark(tmp_path: Path) -> None:
    """Excel's UTF-8 CSV export starts with a BOM: it is not part of the first column."""
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (DATA / "events_small.csv").read_bytes())
    assert list(read_csv(path)) == list(read_csv(DATA / "events_small.csv"))


def test_csv_with_blank_lines_before_its_header(tmp_path: Path) -> None:
    """The header was not looked for past a blank first line: 'the file is empty'."""
    path = tmp_path / "lead.csv"
    path.write_text("\n\r\nevent_id,user_id,item_id,ts,kind\ne1,u1,i1,1700000000000,click\n")
    assert [e.event_id for e in read_csv(path)] == ["e1"]
    path.write_text("\n\r\nevent_id,user_id,item_id,ts\ne1,u1,i1,1700000000000\n")
    with pytest.raises(SourceError, match="header: missing") as caught:
        list(read_csv(path))
    assert caught.value.line == 3


def test_a_csv_line_of_spaces_is_blank_and_a_bad_row_after_it_keeps_its_line(
        tmp_path: Path) -> None:
    """It stopped the replay: 'row has fewer cells than the header' (JSONL skips such a
    line)."""
    path = tmp_path / "spaces.csv"
    path.write_text("event_id,user_id,item_id,ts,kind\ne1,u1,i1,1700000000000,click\n   \n"
                    "\t\ne2,u1,i2,1700000000001,click\n  \n")
    assert [e.event_id for e in read_csv(path)] == ["e1", "e2"]
    path.write_text("event_id,user_id,item_id,ts,kind\n  \ne1,u1,i1,oops,click\n")
    with pytest.raises(SourceError) as caught:
        list(read_csv(path))
    assert caught.value.line == 3
    path.write_text("event_id,user_id,item_id,ts,kind\n,,,,\n")  # empty cells: a bad row
    with pytest.raises(SourceError) as caught:
        list(read_csv(path))
    assert caught.value.line == 2


def test_an_unclosed_quote_is_named_where_its_row_starts(tmp_path: Path) -> None:
    """The row took in the next lines as one cell and was refused for missing cells, a
    row that visibly has five, without a word about the quote."""
    path = tmp_path / "q.csv"
    row = "u1,i1,1700000000000,click\n"
    path.write_text(f"event_id,user_id,item_id,ts,kind\ne1,{row}\"e2,{row}e3,{row}")
    with pytest.raises(SourceError, match="an unclosed quote takes in the lines") as caught:
        list(read_csv(path))
    assert caught.value.line == 3


def test_jsonl_reads_gzip_and_csv_refuses_a_column_named_twice(tmp_path: Path) -> None:
    packed = tmp_path / "events.jsonl.gz"
    with (DATA / "events_small.jsonl").open("rb") as src, gzip.open(packed, "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain = list(read_jsonl(DATA / "events_small.jsonl", kind=EventKind.CLICK))
    assert plain and list(read_jsonl(packed, kind=EventKind.CLICK)) == plain
    twice = tmp_path / "twice.csv"
    twice.write_text("event_id,user_id,item_id,ts,kind,kind\ne,u,i,1700000000001,click,purchase\n")
    with pytest.raises(SourceError, match="named twice"):
        list(read_csv(twice))


def test_csv_bad_row_and_bad_header(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        list(read_csv(DATA / "events_bad.csv"))
    assert caught.value.line == 3 and caught.value.reason is DlqReason.BAD_TIMESTAMP
    header = tmp_path / "h.csv"
    header.write_text("event_id,user_id,item_id,ts,kind,rating\n")
    with pytest.raises(SourceError, match="rating"):
        list(read_csv(header))
    click_price = tmp_path / "c.csv"
    click_price.write_text("event_id,user_id,item_id,ts,kind,price\ne,u,i,1700000000001,click,2.5\n")
    with pytest.raises(SourceError) as caught:
        list(read_csv(click_price))
    assert caught.value.reason is DlqReason.WRONG_TOPIC


def test_a_bad_csv_row_after_blank_lines_is_named_by_its_own_line(tmp_path: Path) -> None:
    """csv skips blank lines and counts only finished rows: the error named the first blank
    line after the previous row."""
    head = "event_id,user_id,item_id,ts,kind"
    for newline in ("\n", "\r\n"):
        path = tmp_path / "blank.csv"
        path.write_bytes(newline.join([head, "e1,u1,i1,1700000000001,click", "", "", "",
                                       "e2,u1,i1,1700000000002,clik", ""]).encode())
        with pytest.raises(SourceError) as caught:
            list(read_csv(path))
        assert caught.value.line == 6 and caught.value.reason is DlqReason.WRONG_TYPE


def test_csv_short_row_and_text_that_is_not_utf8(tmp_path: Path) -> None:
    short = tmp_path / "short.csv"
    short.write_text("event_id,user_id,item_id,ts,kind\ne1,u1,i1,1700000000001,click\ne2,u1,i1\n")
    with pytest.raises(SourceError, match="fewer cells than the header: no ts, kind") as caught:
        list(read_csv(short))
    assert caught.value.line == 3 and caught.value.reason is DlqReason.MISSING_FIELD
    # Trailing optional cells may be left out.
    optional = tmp_path / "optional.csv"
    optional.write_text("event_id,user_id,item_id,ts,kind,quantity,price\ne1,u1,i1,1700000000001,click\n")
    assert [e.quantity for e in read_csv(optional)] == [None]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("event_id,user_id,item_id,ts,kind\ne1,Jos\u00e9,i1,1700000000001,click\n"
                      .encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8 text"):
        list(read_csv(latin))


def test_csv_numbers_are_read_as_json_writes_them(tmp_path: Path) -> None:
    """int() and float() took `1_700`, ` 5`, `+5`, `\u0665` (Arabic five) and `nan`, which the
    same value on the topic would have had refused."""
    head = "event_id,user_id,item_id,ts,kind,quantity,price\n"
    for ts, quantity, price, reason in [("1_700", "", "", DlqReason.BAD_TIMESTAMP),
                                        (" 5", "", "", DlqReason.BAD_TIMESTAMP),
                                        ("\u0665", "", "", DlqReason.BAD_TIMESTAMP),
                                        ("5", "+2", "1", DlqReason.WRONG_TYPE),
                                        ("5", "2", "nan", DlqReason.WRONG_TYPE),
                                        ("5", "2", "1e999", DlqReason.NON_FINITE)]:
        path = tmp_path / "n.csv"
        path.write_text(head + f"e,u,i,{ts},purchase,{quantity},{price}\n", encoding="utf-8")
        with pytest.raises(SourceError) as caught:
            list(read_csv(path))
        assert caught.value.reason is reason, (ts, quantity, price)
    path = tmp_path / "ok.csv"
    path.write_text(head + "e,u,i,1700000000005,purchase,1,1.5e2\n")
    assert [(e.ts, e.quantity, e.price) for e in read_csv(path)] == [(1700000000005, 1, 150.0)]
    # A zero fraction is an integer, on the topic too (pandas writes an integer column
    # with blanks as 2.0); a fraction is not.
    path.write_text(head + "e,u,i,1.7e12,purchase,2.0,1\n")
    assert [(e.ts, e.quantity) for e in read_csv(path)] == [(1_700_000_000_000, 2)]
    path.write_text(head + "e,u,i,1700000000005,purchase,2.5,1\n")
    with pytest.raises(SourceError, match="quantity: '2.5' is not an integer"):
        list(read_csv(path))


def test_csv_integers_past_pythons_digit_limit_are_refused_at_their_line(
        tmp_path: Path) -> None:
    """int() refuses over 4,300 digits with a ValueError, which ended replay with a
    traceback rather than the line and its reason."""
    head = "event_id,user_id,item_id,ts,kind,quantity\n"
    for ts, quantity, reason in [("1" + "0" * 5000, "", DlqReason.BAD_TIMESTAMP),
                                 ("5", "9" * 5000, DlqReason.OUT_OF_RANGE)]:
        path = tmp_path / "big.csv"
        path.write_text(head + f"e,u,i,{ts},purchase,{quantity}\n", encoding="utf-8")
        with pytest.raises(SourceError) as caught:
            list(read_csv(path))
        assert caught.value.line == 2 and caught.value.reason is reason


def test_a_jsonl_kind_nested_a_thousand_deep_stops_at_its_line(tmp_path: Path) -> None:
    """The message held the kind's repr(), which raised RecursionError at 1,000 levels."""
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"event_id":"e","user_id":"u","item_id":"i","ts":1700000000001,'
                     b'"kind":' + b"[" * 1000 + b"]" * 1000 + b"}\n")
    with pytest.raises(SourceError, match="is not click/purchase") as caught:
        list(read_jsonl(path))
    assert caught.value.reason is DlqReason.WRONG_TYPE


def test_a_bad_row_over_several_lines_is_named_by_its_first(tmp_path: Path) -> None:
    """A quoted cell with line breaks made the error name the row's last line."""
    path = tmp_path / "multi.csv"
    path.write_text('event_id,user_id,item_id,ts,kind\ne1,"u\n1\n",i1,soon,click\n')
    with pytest.raises(SourceError) as caught:
        list(read_csv(path))
    assert caught.value.line == 2


def test_csv_that_the_csv_module_refuses_names_its_line(tmp_path: Path) -> None:
    """An unclosed quote swallows the rest of the file into one cell, and a cell over
    csv's field limit raised csv.Error: a traceback with no line (exit 1)."""
    head = "event_id,user_id,item_id,ts,kind\n"
    good = "".join(f"e{n},u1,i1,{n},click\n" for n in range(6000))
    stray = tmp_path / "stray.csv"
    stray.write_text(head + "e1,u1,i1,1700000000001,click\n"
                     + 'e2,"u1,i1,1700000000002,click\n' + good)
    with pytest.raises(SourceError, match="not CSV") as caught:
        list(read_csv(stray))
    assert caught.value.line == 3
    big = tmp_path / "big.csv"
    big.write_text(head + "e1,u1,i1,1700000000001,click\n"
                   + "e2," + "u" * 200_000 + ",i1,1700000000002,click\n")
    with pytest.raises(SourceError, match="not CSV") as caught:
        list(read_csv(big))
    assert caught.value.line == 3


def test_a_jsonl_line_with_a_context_too_deep_to_write_stops_at_its_line(tmp_path: Path) -> None:
    """It decoded (orjson reads 1,024 levels) and replay crashed re-encoding it (255)."""
    from stream_app.replay import file_records

    deep = b'{"x":' * 299 + b"{}" + b"}" * 299
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"kind":"click","event_id":"e1","user_id":"u","item_id":"i","ts":1700000000001}\n'
                     b'{"kind":"click","event_id":"e2","user_id":"u","item_id":"i","ts":1700000000002,'
                     b'"context":' + deep + b"}\n")
    with pytest.raises(SourceError, match="nested over 32 levels") as caught:
        list(file_records(path))
    assert caught.value.line == 2


def test_jsonl_with_a_byte_order_mark_and_an_upper_case_gz_suffix(tmp_path: Path) -> None:
    """A BOM before the first line was refused as not JSON; `.GZ` was read as MovieLens
    ("expected 4 fields, got 2")."""
    from stream_app.replay import file_records

    lines = (b'{"kind":"click","event_id":"e1","user_id":"u","item_id":"i","ts":1700000000001}\n'
             b'{"kind":"click","event_id":"e2","user_id":"u","item_id":"i","ts":1700000000002}\n')
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + lines)
    assert [r.event.event_id for r in file_records(bom) if r.event] == ["e1", "e2"]
    shouting = tmp_path / "EVENTS.JSONL.GZ"
    shouting.write_bytes(gzip.compress(lines))
    assert [r.event.event_id for r in file_records(shouting) if r.event] == ["e1", "e2"]


def test_text_that_is_not_utf8_is_reported_at_its_own_line(tmp_path: Path) -> None:
    """The text reader decodes 8 KiB blocks: a bad byte on line 91 was reported at line 1."""
    rows = "".join(f"e{n},user-{n:05d},item-{n:05d},{n},click\n" for n in range(2, 91))
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"event_id,user_id,item_id,ts,kind\n" + rows.encode()
                    + "e91,Jos\u00e9,i1,1700000000091,click\n".encode("latin-1"))
    with pytest.raises(SourceError, match="not UTF-8 text") as caught:
        list(read_csv(bad))
    assert caught.value.line == 91


def test_a_line_past_the_line_limit_stops_its_reader_at_that_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A JSON array (one line) was read whole into memory before any check."""
    from stream_app.sources import _files

    monkeypatch.setattr(_files, "LINE_MAX", 200)
    event = b'{"kind":"click","event_id":"e1","user_id":"u","item_id":"i","ts":1700000000001}'
    fits = event[:-1] + b',"context":{"pad":"' + b"x" * (197 - len(event) - 19) + b'"}}\n'
    assert len(fits) == 200  # the limit, newline included
    array = tmp_path / "array.jsonl"
    array.write_bytes(fits + b"[" + b",".join([event] * 40) + b"]\n" + event + b"\n")
    with pytest.raises(SourceError, match="longer than 200 bytes.*JSON array") as caught:
        list(read_jsonl(array))
    assert caught.value.line == 2
    table = tmp_path / "long.csv"
    table.write_text("event_id,user_id,item_id,ts,kind\n"
                     + "é" * 201 + ",u,i,1700000000001,click\n",
                     encoding="utf-8")
    with pytest.raises(SourceError, match="longer than 200 characters") as caught:
        list(read_csv(table))
    assert caught.value.line == 2


def test_replay_input_checks_before_any_broker(tmp_path: Path) -> None:
    from stream_app.config import ConfigError, KafkaConfig
    from stream_app.replay import file_records, replay_generated

    with pytest.raises(ConfigError, match="is not a file"):
        file_records(tmp_path)
    # A MovieLens folder, as `demo --data` takes it: its ratings file (and release times).
    movielens = tmp_path / "ml"
    movielens.mkdir()
    (movielens / "ratings.dat").write_text("1::10::5::978300760\n")
    (movielens / "movies.dat").write_text("10::GoldenEye (1995)::Action\n")
    [rec] = list(file_records(movielens))
    assert rec.event is not None and rec.event.item_released_at == 788918400000
    with pytest.raises(ConfigError, match="--kind applies to JSON Lines"):
        file_records(DATA / "events_small.csv", kind=EventKind.CLICK)
    plain = tmp_path / "plain.jsonl"  # event values as on the topic: no "kind"
    plain.write_text('{"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 1700000000001}\n'
                     '{"event_id": "e2", "user_id": "u2", "item_id": "i1", "ts": 1700000000002}\n')
    assert [r.kind for r in file_records(plain, kind=EventKind.PURCHASE)] == \
        [EventKind.PURCHASE, EventKind.PURCHASE]
    with pytest.raises(ConfigError, match="--seed must be in 0.."):
        replay_generated(KafkaConfig(bootstrap_servers="127.0.0.1:1"), n_events=1, n_users=1,
                         n_items=1, seed=-1, malformed_share=0, drift=False, rate=0,
                         progress=False)
    # It drew 10**13 weights first: a 72 TiB allocation's traceback.
    with pytest.raises(ConfigError, match="--users and --items must be at most"):
        replay_generated(KafkaConfig(bootstrap_servers="127.0.0.1:1"), n_events=1,
                         n_users=10**13, n_items=1, seed=0, malformed_share=0, drift=False,
                         rate=0, progress=False)
    # Read as MovieLens, these said "expected 4 fields", naming neither cause.
    for name in ("events.txt", "events.jsonl.bz2", "events.jsonl.xz", "ratings"):
        (tmp_path / name).write_text('{"event_id": "e1"}\n')
        with pytest.raises(ConfigError, match="pass --format"):
            file_records(tmp_path / name)
    (tmp_path / "events.txt").write_bytes(plain.read_bytes())
    assert [r.event.event_id for r in file_records(tmp_path / "events.txt", "jsonl",
                                                    kind=EventKind.CLICK) if r.event] == \
        ["e1", "e2"]  # --format says how to read it


def test_a_film_whose_year_has_no_date_counts_as_no_year(tmp_path: Path) -> None:
    """"(0000)" in movies.dat stopped a replay with a Python traceback."""
    from stream_app.replay import file_records

    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n")
    (tmp_path / "movies.dat").write_text("10::Typo (0000)::Drama\n")
    [rec] = list(file_records(tmp_path))
    assert rec.event is not None and rec.event.item_released_at is None


def test_generate_is_deterministic_by_seed() -> None:
    first = list(generate(500, 30, 100, seed=11, malformed_share=0.1, drift=True))
    again = list(generate(500, 30, 100, seed=11, malformed_share=0.1, drift=True))
    other = list(generate(500, 30, 100, seed=12, malformed_share=0.1, drift=True))
    assert [(r.key, r.value) for r in first] == [(r.key, r.value) for r in again]
    assert [(r.key, r.value) for r in first] != [(r.key, r.value) for r in other]


def test_generated_streams_of_other_shapes_share_no_event_ids() -> None:
    """Ids were g{seed}-{n} whatever the shape: a second run with other --users reused
    the first run's ids, and the trainer dead-lettered it as event_id_reused."""
    def ids(**kw: object) -> list[str]:
        args: dict[str, object] = {"n_users": 50, "n_items": 40, "seed": 0, **kw}
        return [r.event.event_id for r in generate(200, **args) if r.event]  # type: ignore[arg-type]

    base = ids()
    assert not set(base) & set(ids(n_users=51))
    assert not set(base) & set(ids(taste=0.5))
    longer = [r.event for r in generate(300, n_users=50, n_items=40, seed=0) if r.event]
    assert [e.event_id for e in longer[:200]] == base  # the same events: copies, not new ones
    assert ids() == base


def test_generated_records_decode_as_promised() -> None:
    records = list(generate(2000, 50, 300, seed=3, malformed_share=0.2, events_per_second=10))
    bad = [r for r in records if r.event is None]
    assert 300 < len(bad) < 500
    assert {r.expected_reason for r in bad} == {c.reason for c in CORRUPTIONS}
    for record in records:
        try:
            event = decode_event(record.value, record.key, record.kind)
        except DecodeError as err:
            assert err.reason is record.expected_reason
        else:
            assert record.expected_reason is None and event == record.event
    times = [r.event.ts for r in records if r.event is not None]
    assert times == sorted(times)
    span_s = (times[-1] - times[0]) / 1000
    assert 150 < span_s < 250  # 2000 events at 10/s of event time
    kinds = Counter(r.kind for r in records)
    assert 100 < kinds[EventKind.PURCHASE] < 300


def test_generated_users_prefer_their_planted_cluster() -> None:
    n_users, n_items, seed = 40, 400, 7
    world = make_world(n_users, n_items, np.random.default_rng(seed), n_clusters=8, zipf=1.1)
    events = [r.event for r in generate(4000, n_users, n_items, seed=seed) if r.event]
    same = sum(
        world.item_cluster[int(e.item_id[1:])] == world.user_cluster[int(e.user_id[1:])]
        for e in events
    )
    assert same / len(events) > 0.7  # taste=0.8 plus chance hits, versus 1/8 without tastes


def test_drift_moves_tastes_in_the_second_half() -> None:
    n_users, n_items, seed = 40, 400, 7
    world = make_world(n_users, n_items, np.random.default_rng(seed), n_clusters=8, zipf=1.1)
    events = [r.event for r in generate(4000, n_users, n_items, seed=seed, drift=True) if r.event]
    late = events[2000:]
    moved = sum(
        world.item_cluster[int(e.item_id[1:])] == (world.user_cluster[int(e.user_id[1:])] + 1) % 8
        for e in late
    )
    assert moved / len(late) > 0.7


def test_wrong_topic_corruption_and_each_corruption() -> None:
    click = Event(event_id="e", user_id="u", item_id="i", ts=1700000000001, kind=EventKind.CLICK)
    record = corrupt_click(click)
    with pytest.raises(DecodeError) as caught:
        decode_event(record.value, record.key, record.kind)
    assert caught.value.reason is DlqReason.WRONG_TOPIC
    for how in CORRUPTIONS:
        record = corrupt(click, how)
        with pytest.raises(DecodeError) as caught:
            decode_event(record.value, record.key, record.kind)
        assert caught.value.reason is how.reason, how.name


def test_a_file_that_cannot_be_read_to_its_end_stops_its_reader_with_file_and_line(
        tmp_path: Path) -> None:
    """A truncated or corrupt .gz ended a replay in a traceback (EOFError, BadGzipFile),
    possibly after records were sent and not reported."""
    ratings = "".join(f"{u}::{u % 97}::4::{978_300_000 + u * 7}\n" for u in range(1, 3000))
    cut = tmp_path / "ratings.dat.gz"
    cut.write_bytes(gzip.compress(ratings.encode())[:-20])
    with pytest.raises(SourceError, match="cannot read the file: it ends early") as caught:
        list(read_ratings(cut))
    assert caught.value.path == cut and caught.value.line > 1
    events = "".join(encode_event(Event(event_id=f"e{i}", user_id="u", item_id=f"i{i}",
                                        ts=1_700_000_000_000 + i,
                                        kind=EventKind.CLICK)).decode() + "\n"
                     for i in range(3000))
    jsonl = tmp_path / "events.jsonl.gz"
    jsonl.write_bytes(gzip.compress(events.encode())[:-20])
    with pytest.raises(SourceError, match="ends early"):
        list(read_jsonl(jsonl, kind=EventKind.CLICK))
    movies = tmp_path / "movies.dat.gz"
    movies.write_bytes(b"not gzip at all\n")
    with pytest.raises(SourceError, match="movies.dat.gz:1: cannot read the file"):
        read_movies(movies)


def test_a_ratings_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Its first line failed with "bad field: invalid literal for int() ... 'ï»¿1'"."""
    path = tmp_path / "ratings.dat"
    path.write_bytes(b"\xef\xbb\xbf1::10::5::978300760\n2::10::3::978300761\n")
    assert [r.user_id for r in read_ratings(path)] == ["1", "2"]


def test_a_utf16_jsonl_file_says_so(tmp_path: Path) -> None:
    """It failed with the codec's bad_utf8 on line 1, naming no cause."""
    path = tmp_path / "events.jsonl"
    path.write_bytes('{"kind":"click","event_id":"e1","user_id":"u","item_id":"i","ts":1700000000001}\n'
                     .encode("utf-16"))
    with pytest.raises(SourceError, match="UTF-16 .* save it as UTF-8") as caught:
        list(read_jsonl(path))
    assert caught.value.line == 1


def test_an_empty_csv_and_a_pretty_printed_json_array_say_what_they_are(
        tmp_path: Path) -> None:
    """An empty CSV was reported as a header missing all five columns, and a JSON array
    written over several lines got only 'unexpected end of data' (helper review)."""
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(SourceError, match="empty.csv:1: the file is empty: a CSV needs"):
        list(read_csv(empty))
    array = tmp_path / "events.json"
    array.write_text('[\n  {"event_id": "e1", "user_id": "u", "item_id": "i",'
                     ' "ts": 1700000000001}\n]\n')
    with pytest.raises(SourceError, match="events.json:1: .*a JSON array file is not JSON"):
        list(read_jsonl(array, kind=EventKind.CLICK))
    pretty = tmp_path / "event.json"  # one object, pretty-printed: "unexpected end of data"
    pretty.write_text('{\n  "event_id": "e1",\n  "user_id": "u"\n}\n')
    with pytest.raises(SourceError, match="event.json:1: .*an object over several lines is not "
                                          "JSON lines"):
        list(read_jsonl(pretty, kind=EventKind.CLICK))


def test_a_file_in_seconds_is_refused_with_what_to_fix(tmp_path: Path) -> None:
    """`ts` in seconds replayed as January 1970 and was learned so (walkthrough); a warning
    on replay did not reach events sent by other producers."""
    from stream_app.replay import file_records

    path = tmp_path / "events.jsonl"
    line = '{{"kind":"click","event_id":"e","user_id":"u","item_id":"i","ts":{}}}\n'
    path.write_text(line.format(1_700_000_000_000) + line.format(1_700_000_001))
    with pytest.raises(SourceError, match=r"events.jsonl:2: .*ts 1700000001 is before "
                       r"1973-03-03 .*seconds need multiplying by 1000"):
        list(file_records(path))
    path.write_text(line.format(100_000_000_000))  # the first millisecond taken
    assert len(list(file_records(path))) == 1


@pytest.mark.parametrize(("name", "text"), [("hdr.csv", "kind,event_id,user_id,item_id,ts\n"),
                                            ("blank.jsonl", "\n\n"),
                                            ("bom.jsonl", "\ufeff\n")])
def test_a_file_without_events_is_an_error_not_a_replay_of_nothing(
        tmp_path: Path, name: str, text: str) -> None:
    """A header, blank lines or a byte order mark alone replayed "0 events", exit 0, where
    an empty file was refused (CLI review)."""
    from stream_app.replay import file_records

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError, match="no events in the file"):
        list(file_records(path))
