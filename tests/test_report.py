"""Listening report and rating page (extras/report.py): contents, embedding, blinding, ratings summary, bad input,
and a real headless browser (skipped without chromium) that must load every player of the page."""
import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import toy
import metrics
from data import TRACKS
from extras import report

SR = 16000
SECONDS = 2.0
CHROMIUM = next((shutil.which(c) for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def write_stem_folder(root, seeds, partial=None):
    """root/stem_0..stem_3/toy_K.wav of toy.toy_song(K), a mix folder for the first piece only, a settings.json;
    `partial`: (name, tracks) of a piece that has only those tracks."""
    for s in range(len(TRACKS)):
        (root / f"stem_{s}").mkdir(parents=True, exist_ok=True)
    (root / "mix").mkdir(exist_ok=True)
    for k in seeds:
        song = toy.toy_song(k, SECONDS)  # (S, N)
        for s, wave in enumerate(song):
            sf.write(root / f"stem_{s}" / f"toy_{k}.wav", wave, SR, subtype="PCM_16")
        if k == seeds[0]:
            sf.write(root / "mix" / f"toy_{k}.wav", np.clip(song.sum(0), -1, 1), SR, subtype="PCM_16")
    if partial:
        name, tracks = partial
        song = toy.toy_song(99, SECONDS)
        for t in tracks:
            sf.write(root / f"stem_{TRACKS.index(t)}" / f"{name}.wav", song[TRACKS.index(t)], SR, subtype="PCM_16")
    (root / "settings.json").write_text(json.dumps({"ckpt": "checkpoints/toy_ckpt_x.pt", "steps": 37, "eta": 0.5,
                                                    "seed": 11}))
    return root


def write_song_folder(root):
    """The per-song layout, no settings.json: song_a's drums clipped (a full-scale square), song_b's piano silent."""
    for k, name in ((5, "song_a"), (6, "song_b")):
        (root / name).mkdir(parents=True)
        song = toy.toy_song(k, SECONDS)
        if name == "song_a":
            song[1] = np.sign(np.sin(2 * np.pi * 2 * np.arange(song.shape[1]) / SR))
        else:
            song[3] = 0
        for t, wave in zip(TRACKS, song):
            sf.write(root / name / f"{t}.wav", wave, SR, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Two folders and their evaluate() results, computed once (16 files through madmom)."""
    tmp = tmp_path_factory.mktemp("report")
    a = write_stem_folder(tmp / "model_a", [1, 2], partial=("toy_half", ("bass", "drums")))
    b = write_song_folder(tmp / "truth_b")
    return {"a": a, "b": b, "ra": metrics.evaluate(a, workers=2), "rb": metrics.evaluate(b, workers=2)}


def audio_srcs(page):
    return re.findall(r"<audio [^>]*src='([^']*)'", page)


def decode(src):
    assert src.startswith("data:audio/")
    return base64.b64decode(src.split(",", 1)[1])


def cards(page):
    """{piece name: its card's HTML}."""
    found = re.finditer(r"<section class='card' data-name='([^']*)'.*?</section>", page)
    return {m.group(1): m.group(0) for m in found}


def test_report_shows_every_piece_with_its_audio_and_numbers(folders, tmp_path):
    out = tmp_path / "r.html"
    w = report.write_report(folders["a"], out, folders["ra"])
    page = out.read_text()
    by_name = cards(page)
    assert sorted(by_name) == ["toy_1", "toy_2", "toy_half"]  # the incomplete piece is shown, not dropped
    assert w["pieces"] == 3 and w["assets"] is None and w["bytes"] == len(page.encode())
    # 2 complete pieces x (mix + 4 tracks) + the partial one: a mix of its 2 tracks and its 2 tracks
    assert len(audio_srcs(page)) == 2 * 5 + 3
    half = by_name["toy_half"]
    assert half.count("class='missing'>missing") == 2 and "not evaluated" in half
    assert "sum of the 2 tracks present" in half
    # embedded tracks are the files' bytes; the first piece plays its mix file, the second the clipped sum
    srcs = audio_srcs(by_name["toy_1"])
    assert decode(srcs[0]) == (folders["a"] / "mix" / "toy_1.wav").read_bytes()
    for s, src in enumerate(srcs[1:]):
        assert decode(src) == (folders["a"] / f"stem_{s}" / "toy_1.wav").read_bytes()
    mix, _ = sf.read(io.BytesIO(decode(audio_srcs(by_name["toy_2"])[0])))
    tracks = [sf.read(folders["a"] / f"stem_{s}" / "toy_2.wav")[0] for s in range(len(TRACKS))]
    np.testing.assert_allclose(mix, np.clip(np.sum(tracks, axis=0), -1, 1), atol=1 / 32767)
    # numbers: the settings, the metric table and each card's own values
    for text in ("title='checkpoints/toy_ckpt_x.pt'>toy_ckpt_x.pt", "steps 37", "η 0.5", "seed 11",
                 f"{folders['ra']['cbs']:.4f}"):
        assert text in page
    s = folders["ra"]["per_sample"]["toy_2"]
    assert f"CBS {s['cbs']:.4f}" in by_name["toy_2"] and f"data-cbd_mean='{s['cbd']['mean']}'" in by_name["toy_2"]
    assert by_name["toy_2"].count("<img") == len(TRACKS) and "<img" in half
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing from the network


def test_assets_are_copied_and_linked_relatively(folders, tmp_path):
    out = tmp_path / "page.html"
    w = report.write_report(folders["a"], out, folders["ra"], assets=True)
    page = out.read_text()
    assert w["assets"] == str(tmp_path / "page_files") and "data:audio" not in page
    srcs = audio_srcs(page)
    assert len(srcs) == 13 and all(src.startswith("page_files/") for src in srcs)
    assert (tmp_path / srcs[1]).read_bytes() == (folders["a"] / "stem_0" / "toy_1.wav").read_bytes()


def test_embedding_limit_switches_to_assets(folders, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "EMBED_LIMIT", 1000)
    w = report.write_report(folders["a"], tmp_path / "big.html", folders["ra"])
    assert w["auto_assets"] and Path(w["assets"]).is_dir() and "data:audio" not in (tmp_path / "big.html").read_text()


def test_flags_and_a_folder_without_settings(folders, tmp_path):
    out = tmp_path / "b.html"
    report.write_report(folders["b"], out, folders["rb"])
    page = out.read_text()
    by_name = cards(page)
    assert "no settings.json" in page
    assert "data-flags='clipped'" in by_name["song_a"] and "data-flags='silent'" in by_name["song_b"]
    assert report.flags(np.zeros((100, 1))) == ["silent"] and report.flags(np.full((100, 2), 0.5)) == []


def test_a_missing_track_folder_shows_every_piece_incomplete(folders, tmp_path):
    root = tmp_path / "no_guitar"
    shutil.copytree(folders["a"], root)
    shutil.rmtree(root / "stem_2")
    out = tmp_path / "g.html"
    report.write_report(root, out, metrics.evaluate(root, workers=1))  # nothing complete: madmom never runs
    page = out.read_text()
    assert sorted(cards(page)) == ["toy_1", "toy_2", "toy_half"]
    assert "stem_2: folder missing" in page  # the folder's problem, in the header
    assert all("not evaluated" in c and c.count("class='missing'>missing") >= 1 for c in cards(page).values())


def test_spectrogram_draws_beats_at_their_time_and_a_tone_in_its_band():
    from matplotlib.image import imread
    t = np.arange(2 * SR) / SR
    png = report.spectrogram_png(0.5 * np.sin(2 * np.pi * 1000 * t), SR, [0.5, 1.25])
    rgb = (imread(io.BytesIO(png))[:, :, :3] * 255).round().astype(int)  # (BANDS, cols, 3)
    assert rgb.shape == (report.BANDS, 2 * report.PX_PER_SECOND, 3)
    cyan = np.all(rgb == (0, 230, 255), axis=2).all(axis=0)  # columns that are cyan from top to bottom
    assert list(np.flatnonzero(cyan)) == [50, 125]
    edges = np.geomspace(report.F_MIN, SR / 2, report.BANDS + 1)
    row = report.BANDS - 1 - (np.searchsorted(edges, 1000) - 1)  # the 1 kHz band, counted from the top
    brightness = rgb[:, 10:40].sum(axis=(1, 2))
    assert abs(int(np.argmax(brightness)) - row) <= 1


def key_of(page):
    return json.loads(base64.b64decode(re.search(r"<script type='text/plain' id='key'>([^<]*)<", page).group(1)))


def test_rating_page_is_blinded_and_keyed(folders, tmp_path):
    out = tmp_path / "rate.html"
    w = report.write_report([folders["a"], folders["b"]], out, [folders["ra"], folders["rb"]], rating=True)
    page = out.read_text()
    key = key_of(page)
    visible = page.replace(re.search(r"id='key'>[^<]*<", page).group(0), "")
    for secret in ("model_a", "truth_b", "toy_1", "song_a", "CBS 0", "stem_0"):
        assert secret not in visible
    assert w["pieces"] == len(key) == 5 and len({k["id"] for k in key}) == 5
    assert sorted((k["folder"], k["name"]) for k in key) == sorted(
        [("model_a", n) for n in ("toy_1", "toy_2", "toy_half")] + [("truth_b", n) for n in ("song_a", "song_b")])
    half = next(k for k in key if k["name"] == "toy_half")
    assert half["tracks"] == ["drums"] and half["metrics"] == {}  # no piano to rate; not evaluated
    toy_2 = next(k for k in key if k["name"] == "toy_2")
    assert toy_2["metrics"]["cbs"] == folders["ra"]["per_sample"]["toy_2"]["cbs"]
    n_tracks = sum(len(k["tracks"]) for k in key)
    assert page.count("type='radio'") == 5 * report.SYNC_SCALE + n_tracks * report.STABILITY_SCALE
    assert len(audio_srcs(page)) == 5 + n_tracks


def answer_file(path, key, sync, stability, listener):
    """An answer file as the page writes it, with ratings chosen by the functions sync(k), stability(k, track)."""
    pieces = [dict(k, position=i + 1, sync=sync(k), stability={t: stability(k, t) for t in k["tracks"]})
              for i, k in enumerate(key)]
    path.write_text(json.dumps({"format": report.FORMAT, "listener": listener, "pieces": pieces}))
    return str(path)


def test_ratings_table_and_correlations(folders, tmp_path, capsys):
    out = tmp_path / "rate.html"
    report.write_report([folders["a"], folders["b"]], out, [folders["ra"], folders["rb"]], rating=True)
    key = key_of(out.read_text())
    is_a = lambda k: k["folder"] == "model_a"  # noqa: E731
    files = [answer_file(tmp_path / f"l{j}.json", key, lambda k: 2 + j if is_a(k) else 5,
                         lambda k, t: 1 if is_a(k) else 3, f"listener {j}") for j in range(2)]
    assert report.main(["ratings", *files, "--json", str(tmp_path / "sum.json")]) == 0
    text = capsys.readouterr().out
    a_votes = [2] * 3 + [3] * 3  # 3 pieces of model_a, rated 2 by listener 0 and 3 by listener 1
    assert f"model_a  {np.mean(a_votes):.1f} ± {np.std(a_votes, ddof=1):.1f} (6)" in text
    assert "truth_b  5.0 ± 0.0 (4)" in text and "2 listeners" in text
    summary = json.loads((tmp_path / "sum.json").read_text())
    assert summary["folders"]["model_a"]["stability"]["drums"] == [1, 1, 1, 1, 1, 1]
    # Fig. 4's Pearson r, against numpy on (mean vote per piece, CBS) over the pieces that have a CBS
    pieces = [(2.5 if is_a(k) else 5.0, k["metrics"].get("cbs")) for k in key if k["metrics"].get("cbs") is not None]
    x, y = np.array(pieces).T
    expected = np.corrcoef(x, y)[0, 1]
    got = next(c for c in summary["correlations"] if c["metric"] == "cbs")
    assert got["n"] == len(pieces) and got["pearson"] == pytest.approx(expected)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable JSON file"),
    (json.dumps({"format": "other"}), '"format" is not'),
    (json.dumps({"format": report.FORMAT, "pieces": [{"folder": "f", "name": "n", "metrics": {}, "sync": 7,
                                                      "stability": {}}]}), "pieces[0].sync: 7 is not a rating 1-5"),
])
def test_bad_answer_files_are_named(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert report.main(["ratings", str(bad)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and message in err and "Traceback" not in err


def test_command_line(folders, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert report.main([str(folders["a"]), "--report", str(out), "--workers", "1"]) == 0
    assert "3 pieces" in capsys.readouterr().out and len(audio_srcs(out.read_text())) == 13
    assert report.main([str(folders["a"]), "--rating"]) == 1  # no --report
    assert "need --report" in capsys.readouterr().err
    assert report.main([str(folders["a"]), "--report", str(tmp_path)]) == 1  # a folder
    assert "is a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a grid of settings is extras/metric_study.py's: one --fps here
        report.main([str(folders["a"]), "--report", str(out), "--fps", "100,150"])
    assert "invalid float value: '100,150'" in capsys.readouterr().err
    assert report.main([str(folders["a"]), str(folders["b"]), "--report", str(out), "--rating", "--rating-tracks",
                        "drums,cello", "--workers", "1"]) == 1
    assert "cello" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------------
# In a real browser (skipped without chromium)
# ---------------------------------------------------------------------------------------------------------------------

def chromium(*args, timeout=120):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_browser_loads_every_player_and_takes_a_screenshot(folders, tmp_path):
    out = tmp_path / "r.html"
    report.write_report([folders["a"], folders["b"]], out, [folders["ra"], folders["rb"]])
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", out.as_uri())
    durations = re.findall(r"<audio [^>]*data-duration=\"([^\"]*)\"", dom)
    assert len(durations) == len(audio_srcs(out.read_text())) == 13 + 2 * 5
    assert all(abs(float(d) - SECONDS) < 0.01 for d in durations)  # every player decoded its audio
    assert "23 of 23 players loaded" in dom and "data-settled-ms" in dom
    # Sorting: CBS, descending, pieces without a CBS last
    page = out.read_text().replace("</body>", "<script>const k=document.getElementById('key');k.value='cbs';"
                                              "document.getElementById('dir').value='desc';"
                                              "k.dispatchEvent(new Event('input'))</script></body>")
    (tmp_path / "sorted.html").write_text(page)
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", (tmp_path / "sorted.html").as_uri())
    tags = re.findall(r"<section class=\"card\"[^>]*>", dom)
    values = [float((re.findall(r"data-cbs=\"([^\"]+)\"", tag) or ["nan"])[0]) for tag in tags]
    n = sum(not np.isnan(v) for v in values)
    assert len(values) == 5 and values[:n] == sorted(values[:n], reverse=True) and np.isnan(values[n:]).all()
    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,900", f"--screenshot={shot}", out.as_uri())
    assert shot.stat().st_size > 10_000


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_browser_rating_answers_feed_the_ratings_command(folders, tmp_path, capsys):
    out = tmp_path / "rate.html"
    report.write_report([folders["a"], folders["b"]], out, [folders["ra"], folders["rb"]], rating=True)
    # A listener: every synchronisation question answered 4, every stability question 2, then "Show answers".
    page = out.read_text()
    page = re.sub(r"(name='P\d+-sync' value='4')", r"\1 checked", page)
    page = re.sub(r"(name='P\d+-(?!sync)\w+' value='2')", r"\1 checked", page)
    page = page.replace("</body>", "<script>document.getElementById('listener').value='ann';"
                                   "document.getElementById('show').click()</script></body>")
    filled = tmp_path / "filled.html"
    filled.write_text(page)
    dom = chromium("--virtual-time-budget=20000", "--dump-dom", filled.as_uri())
    answers = json.loads(html.unescape(re.search(r"<pre id=\"answers\">(.*?)</pre>", dom, re.S).group(1)))
    assert answers["listener"] == "ann" and sorted(p["position"] for p in answers["pieces"]) == [1, 2, 3, 4, 5]
    assert {p["sync"] for p in answers["pieces"]} == {4}
    assert all(set(p["stability"].values()) == {2} for p in answers["pieces"])
    saved = tmp_path / "ann.json"
    saved.write_text(json.dumps(answers))
    assert report.main(["ratings", str(saved)]) == 0
    assert "4.0 ± 0.0 (3)" in capsys.readouterr().out
