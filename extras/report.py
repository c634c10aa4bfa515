"""Listening reports for multi-track music: one self-contained HTML page per folder, and a rating page for listening
tests like the paper's (SyncTrack, ICLR 2026, App. A.6, Table 3, Fig. 4).

Writing HTML, CSS and JavaScript has nothing to do with computing metrics: metrics.py finds the pieces and computes
IRS/CBS/CBD (find_samples, evaluate); this file puts those numbers next to the audio.

    python extras/report.py DIR --report report.html             # one card per piece: players, spectrograms, metrics
    python extras/report.py A B --report rate.html --rating      # blinded, shuffled listening test over folders A, B
    python extras/report.py ratings answers/*.json               # mean ± std per folder (Table 3), Fig. 4

The page is one file that works offline from file://: audio as base64 data URIs (past EMBED_LIMIT, or with
--report-assets, copied into NAME_files/ beside NAME.html and linked relatively), pictures as PNG data URIs,
a few lines of plain JavaScript, no framework, no CDN.

Map of the file
    1. pieces(root, result)       every piece under a folder, complete or not, with its files and metrics
    2. audio and pictures         flags (silent, clipped), the mix, a log-frequency spectrogram strip with the beats
    3. the pages                  header (settings, metric table), one card per piece, sort/filter; the rating form
    4. write_report               the entry point (the command line below; sample.py --report)
    5. ratings                    answer files -> mean ± std per folder and the correlation with each metric
    6. command line               evaluate the folders (metrics.evaluate), print their numbers, write the page
"""
import argparse
import base64
import functools
import html
import io
import json
import math
import random
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: `python extras/report.py` works
import data  # noqa: E402
import metrics  # noqa: E402

EMBED_LIMIT = 32 * 2 ** 20  # bytes of audio past which the page links files instead of embedding them: a browser
# parses the whole page before it shows it (measured: 10 MB pages open in 1-2 s, 21 MB in 6-9 s on a loaded 2-core
# machine); 32 MB still embeds 16 pieces of 10 s at 16 kHz (the paper's clips)
PX_PER_SECOND = 100  # spectrogram strip: one column per 10 ms
BANDS = 64  # strip height: log-spaced frequency bands from F_MIN to Nyquist
F_MIN = 40.0
DB_FLOOR, DB_TOP = -90.0, -10.0  # dB of full scale mapped to the two ends of the colour map
SILENT_PEAK = 1e-4  # −80 dBFS: a track no louder than this is flagged silent
CLIP_LEVEL = 0.999  # |x| at or above this sits at full scale (a clipped 16-bit file reads back 32767/32768 or −1)
CLIP_SHARE = 1e-4  # flagged clipped when more than this share of the samples sits at full scale
SETTINGS_SHOWN = {"ckpt": "checkpoint", "steps": "steps", "eta": "η", "seed": "seed", "first_stage": "first stage",
                  "raw": "raw weights", "no_clip": "no x0 clipping", "given": "given", "given_dir": "given dir"}
MIME = {".wav": "audio/wav", ".ogg": "audio/ogg", ".flac": "audio/flac"}
SYNC_SCALE, STABILITY_SCALE = 5, 3  # App. A.6: 5-point synchronisation (mix), 3-point stability (single track)
RATING_TRACKS = ("drums", "piano")  # App. A.6: "drums (rhythmic instrument) and piano (melodic instrument)"
FORMAT = "synctrack-ratings/1"  # the answer files' "format"


# ---------------------------------------------------------------------------------------------------------------------
# 1. Pieces: complete ones from data.find_samples, incomplete ones found beside them (shown, not dropped)
# ---------------------------------------------------------------------------------------------------------------------

def _audio_in(folder):
    return [p for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in MIME and not p.name.startswith(".")]


def _all_files(root, layout, tracks):
    """{name: {track or "mix": Path}} of every audio file of the layout, whether its piece is complete or not
    (find_samples keeps complete pieces only, as the metrics must; the report also shows the others)."""
    found = {}
    if layout == "per-song":
        for song in (d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")):
            for f in _audio_in(song):
                if f.stem in (*tracks, data.MIX):
                    found.setdefault(song.name, {}).setdefault(f.stem, f)
        return found
    folders = [f"stem_{i}" for i in range(len(tracks))] if layout == "stem_i" else list(tracks)
    for key, folder in zip((*tracks, data.MIX), (*folders, data.MIX)):
        if (root / folder).is_dir():
            for f in _audio_in(root / folder):
                found.setdefault(f.stem, {}).setdefault(key, f)
    return found


def flat_metrics(sample, tracks):
    """One piece's numbers as flat keys (cbs, cbd_mean, cbd_std, cbd_median, irs_<track>, irs_mean); NaN -> None."""
    if sample is None:
        return {}
    flat = {"cbs": sample["cbs"], **{f"cbd_{k}": v for k, v in sample["cbd"].items()}}
    flat.update({f"irs_{t}": sample["irs"][t] for t in tracks})
    irs_values = [v for v in (sample["irs"][t] for t in tracks) if not math.isnan(v)]
    flat["irs_mean"] = float(np.mean(irs_values)) if irs_values else math.nan
    return {k: None if v is None or math.isnan(v) else float(v) for k, v in flat.items()}


def pieces(root, result):
    """Every piece under `root` and evaluate()'s `result` for it. Returns (tracks, pieces, notes): pieces sorted by
    name, each {"name", "files" {track: Path or None}, "mix" Path or None, "sample" (evaluate's per_sample entry,
    or None), "why" (reasons it was not evaluated)}; notes: the folder's problems that name no piece."""
    root = Path(root)
    layout, samples, problems = data.find_samples(root, result.get("tracks"))  # --tracks, e.g. MUSDB18's
    tracks = data.layout_of(root, result.get("tracks"))[1]
    found = _all_files(root, layout, tracks)
    reasons = [*problems, *result.get("skipped", [])]
    out, attributed = [], set()
    for name in sorted(set(samples) | set(found)):
        files = samples.get(name) or found[name]
        why = [r for r in reasons if r.startswith(f"{name}: ")]
        attributed.update(why)
        out.append({"name": name, "files": {t: files.get(t) for t in tracks}, "mix": files.get(data.MIX),
                    "sample": result.get("per_sample", {}).get(name), "why": [r.split(": ", 1)[1] for r in why]})
    return tracks, out, [r for r in reasons if r not in attributed]


def read_settings(root):
    """settings.json of sample.py, or None when absent; an unreadable one is reported, not fatal."""
    path = Path(root) / "settings.json"
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return {"settings.json": f"unreadable ({err})"}
    return settings if isinstance(settings, dict) else {"settings.json": "not a JSON object"}


# ---------------------------------------------------------------------------------------------------------------------
# 2. Audio and pictures
# ---------------------------------------------------------------------------------------------------------------------

def flags(wave, clipped_share=None):
    """Problems a listener should know of before judging: ["silent"], ["clipped 0.81%"] (share of the samples at
    full scale, or `clipped_share` when the caller knows it better), or []."""
    if not wave.size or float(np.abs(wave).max()) <= SILENT_PEAK:
        return ["silent"]
    share = float(np.mean(np.abs(wave) >= CLIP_LEVEL)) if clipped_share is None else clipped_share
    return [f"clipped {100 * share:.2g}%"] if share > CLIP_SHARE else []


def _wav_bytes(wave, sr):
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1, 1), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def mix_of(tracks):
    """The sum of the tracks present, over the longest one (written clipped, as the official code writes mixes).
    tracks: [(mono (N,), rate)]. Tracks at other rates than the first are resampled to it."""
    from scipy.signal import resample_poly
    sr = tracks[0][1]
    waves = [w if r == sr else resample_poly(w, sr // math.gcd(sr, r), r // math.gcd(sr, r)) for w, r in tracks]
    total = np.zeros(max(len(w) for w in waves))
    for w in waves:
        total[: len(w)] += w
    return total, sr


@functools.lru_cache(maxsize=None)
def _colour_map():
    """(256, 3) uint8 'magma', taken once from matplotlib (imported only here: a rating page draws no pictures)."""
    import matplotlib
    return (matplotlib.colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def spectrogram_png(wave, sr, beat_times):
    """PNG bytes of a log-frequency spectrogram strip (BANDS rows, PX_PER_SECOND columns per second) of a mono
    wave, with the beats drawn as cyan columns and a white tick at the top of every second.
    beat_times: beats in true seconds."""
    n_fft = 2048 if sr > 24000 else 1024
    window = np.hanning(n_fft)
    n_cols = max(1, int(round(len(wave) / sr * PX_PER_SECOND)))
    starts = (np.arange(n_cols) * sr / PX_PER_SECOND).astype(int)
    padded = np.pad(wave.astype(np.float64), (n_fft // 2, n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1 / sr)
    edges = np.geomspace(F_MIN, sr / 2, BANDS + 1)
    lo = np.minimum(np.searchsorted(freqs, edges[:-1]), len(freqs) - 1)
    hi = np.maximum(lo + 1, np.searchsorted(freqs, edges[1:]))  # a band narrower than a bin takes the bin above
    bands = np.zeros((BANDS, n_cols))
    for c in range(0, n_cols, 1000):  # blocks of 10 s: memory stays flat for whole songs
        frames = padded[starts[c:c + 1000, None] + np.arange(n_fft)]  # (cols, n_fft), centred frames
        amp = np.abs(np.fft.rfft(frames * window, axis=1)) / (window.sum() / 2)  # (cols, bins); full-scale sine: 1
        bands[:, c:c + 1000] = np.stack([amp[:, a:b].max(axis=1) for a, b in zip(lo, hi)])[::-1]  # low at bottom
    db = 20 * np.log10(np.maximum(bands, 1e-9))
    level = np.clip((db - DB_FLOOR) / (DB_TOP - DB_FLOOR), 0, 1)
    rgb = _colour_map()[(level * 255).astype(int)]  # (BANDS, cols, 3)
    cols = np.round(np.asarray(beat_times) * PX_PER_SECOND).astype(int)
    rgb[:, cols[(cols >= 0) & (cols < n_cols)]] = (0, 230, 255)
    rgb[:4, np.arange(0, n_cols, PX_PER_SECOND)] = 255
    from matplotlib.image import imsave
    buf = io.BytesIO()
    imsave(buf, rgb, format="png")
    return buf.getvalue()


def _data_uri(mime, data):
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# ---------------------------------------------------------------------------------------------------------------------
# 3. The pages
# ---------------------------------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:12px 20px;color:#222;background:#fafafa}
h1{font-size:20px;margin:4px 0} h2{font-size:15px;margin:0 0 6px} small,.dim{color:#666}
table.m{border-collapse:collapse;margin:6px 0} table.m td,table.m th{padding:2px 10px;border-bottom:1px solid #ddd;
text-align:right} table.m th:first-child,table.m td:first-child{text-align:left}
#controls{position:sticky;top:0;background:#fafafa;padding:6px 0;border-bottom:1px solid #ccc;z-index:1}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;margin:10px 0;padding:8px 12px}
.row{display:grid;grid-template-columns:170px 270px 1fr;gap:8px;align-items:center;margin:3px 0}
.row audio{width:270px;height:32px} .row img{width:100%;height:48px;display:block}
.missing{color:#a00;font-style:italic} .flag{background:#c62828;color:#fff;border-radius:3px;padding:0 5px;
font-size:12px;margin-left:6px;white-space:nowrap} .flag.silent{background:#6d4c41} audio.err{outline:2px solid #c62828}
.nums{font-family:ui-monospace,monospace;font-size:13px;margin-bottom:4px} .scale label{margin-right:10px}
"""

# Marks every player once it has loaded (or failed), and the page once all have: the header line tells the user
# whether this browser plays the audio, and the browser test reads the same attributes. Playing one player pauses
# the others, so the solo and mix players of different pieces never sound together by accident.
STATUS_JS = """
const players=[...document.querySelectorAll('audio')];let settled=0;
function settle(a,ok){a.dataset.ready=a.readyState;a.dataset.duration=ok?a.duration:'';if(!ok)a.classList.add('err');
 settled++;const good=players.filter(p=>p.dataset.duration).length;
 document.getElementById('audio-status').textContent=good+' of '+players.length+' players loaded';
 if(settled===players.length)document.body.dataset.settledMs=Math.round(performance.now());}
players.forEach(a=>{if(a.readyState>=1)settle(a,true);else{a.addEventListener('loadedmetadata',()=>settle(a,true),
 {once:true});a.addEventListener('error',()=>settle(a,false),{once:true});}});
if(!players.length)document.body.dataset.settledMs=Math.round(performance.now());
document.addEventListener('play',e=>players.forEach(a=>{if(a!==e.target)a.pause();}),true);
"""

# Sort by any metric (pieces without a value go last either way), filter by name, folder and flags.
SORT_JS = """
const box=document.getElementById('cards'),cards=[...box.children],$=id=>document.getElementById(id);
function update(){const k=$('key').value,d=$('dir').value==='desc'?-1:1,q=$('q').value.toLowerCase(),
 f=$('folder').value,only=$('flagged').checked;
 cards.sort((a,b)=>{if(k==='name')return d*a.dataset.name.localeCompare(b.dataset.name);
  const x=parseFloat(a.dataset[k]),y=parseFloat(b.dataset[k]);
  return isNaN(x)?(isNaN(y)?0:1):isNaN(y)?-1:d*(x-y);});
 let n=0;for(const c of cards){const show=c.dataset.name.toLowerCase().includes(q)&&(!f||c.dataset.folder===f)
  &&(!only||c.dataset.flags);c.hidden=!show;n+=show;box.appendChild(c);}
 $('shown').textContent=n+' of '+cards.length+' pieces shown';}
['key','dir','q','folder','flagged'].forEach(id=>$(id).addEventListener('input',update));update();
"""

# The listening test: a new random order for every listener, the answers as JSON (download, or shown on the page to
# copy by hand where a browser blocks downloads from file://). The key (folder, name and metrics of each blinded
# piece) is base64 in the page: hidden from the listener's eyes, not from someone who decodes it.
RATING_JS = """
const box=document.getElementById('cards'),cards=[...box.children],$=id=>document.getElementById(id);
for(let i=cards.length-1;i>0;i--){const j=Math.floor(Math.random()*(i+1));[cards[i],cards[j]]=[cards[j],cards[i]];}
cards.forEach((c,i)=>{c.querySelector('.pos').textContent='Piece '+(i+1);box.appendChild(c);});
const KEY=JSON.parse(atob($('key').textContent.trim()));
const val=n=>{const r=document.querySelector('input[name="'+n+'"]:checked');return r?+r.value:null;};
function answers(){return {format:FORMAT,page:document.title,listener:$('listener').value.trim(),
 saved:new Date().toISOString(),scales:{sync:[1,SYNC],stability:[1,STAB]},
 pieces:KEY.map(k=>({...k,position:cards.findIndex(c=>c.id===k.id)+1,sync:val(k.id+'-sync'),
  stability:Object.fromEntries(k.tracks.map(t=>[t,val(k.id+'-'+t)]))}))};}
function progress(){const a=answers().pieces;$('done').textContent=a.filter(p=>p.sync!==null).length+' of '+a.length
 +' pieces rated';}
box.addEventListener('change',progress);progress();
$('show').addEventListener('click',()=>{$('answers').hidden=false;
 $('answers').textContent=JSON.stringify(answers(),null,1);});
$('save').addEventListener('click',()=>{const a=document.createElement('a'),
 name=$('listener').value.trim()||'anonymous';
 a.href=URL.createObjectURL(new Blob([JSON.stringify(answers(),null,1)],{type:'application/json'}));
 a.download='answers-'+name.replace(/[^\\w.-]+/g,'_')+'.json';document.body.appendChild(a);a.click();a.remove();});
"""


def _esc(x):
    return html.escape(str(x), quote=True)


_fmt = metrics._fmt  # "n/a" for None and NaN


def metric_label(key):
    """cbd_mean -> "CBD mean", irs_bass -> "IRS bass"; "name" stays."""
    head, *rest = key.split("_")
    return key if key == "name" else " ".join([head.upper(), *rest])


def _attr(key):
    """A data-* attribute name for a metric key (track names may hold characters attributes do not)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key.lower())


def _interval(result, path):
    """The 95 % interval of a number when evaluate() computed one: result["ci"] mirrors the numbers' nesting
    (e.g. ci["irs"]["bass"], ci["cbs"], ci["cbd"]["mean"]) with [low, high]; None otherwise."""
    node = result.get("ci")
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, (list, tuple)) and len(node) == 2 else None


def _metric_rows(result, tracks):
    """(label, better, value, interval, count) for the header table (Tables 4-5)."""
    c = result.get("counts", {})
    rows = [(f"IRS {t}", "lower", result["irs"].get(t), _interval(result, ("irs", t)), c.get(f"irs_{t}"))
            for t in tracks]
    rows.append(("IRS mean", "lower", result["irs"].get("mean"), _interval(result, ("irs", "mean")), None))
    rows.append(("CBS", "higher", result["cbs"], _interval(result, ("cbs",)), c.get("cbs")))
    rows += [(f"CBD {k}", "lower", result["cbd"][k], _interval(result, ("cbd", k)), c.get("cbd"))
             for k in ("mean", "std", "median")]
    return rows


def _metric_table(folders, tracks):
    """Tables 4-5 for every folder side by side: value [interval] (pieces averaged)."""
    head = "".join(f"<th>{_esc(f['label'])}</th>" for f in folders)
    columns = [_metric_rows(f["result"], tracks) for f in folders]
    body = []
    for i, (label, better, *_) in enumerate(columns[0]):
        cells = []
        for rows in columns:
            _, _, value, ci, count = rows[i]
            ci_text = f" [{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]" if ci else ""
            n_text = f" <small>({count})</small>" if count is not None else ""
            cells.append(f"<td>{_fmt(value)}{ci_text}{n_text}</td>")
        body.append(f"<tr><td>{_esc(label)} <small>{better} is better</small></td>{''.join(cells)}</tr>")
    return f"<table class='m'><tr><th>metric <small>(pieces)</small></th>{head}</tr>{''.join(body)}</table>"


def _settings_html(folder):
    """One line per folder: where it is, how it was made (settings.json of sample.py) and the beat settings."""
    s, settings = folder["result"].get("settings", {}), folder["settings"]
    if settings is None:
        made = "no settings.json"
    else:  # what sample.py was run with; options left off (None, False, [], "") are not worth a word, 0 is
        shown = [(label, settings[k]) for k, label in (*SETTINGS_SHOWN.items(), ("settings.json", "settings.json"))
                 if k in settings and not (settings[k] is None or settings[k] is False or settings[k] in ([], ""))]
        made = ", ".join(f"{label} <span title='{_esc(v)}'>{_esc(Path(v).name)}</span>" if label == "checkpoint"
                         else f"{label} {_esc(v)}" for label, v in shown)  # a checkpoint's folder is in its title
    beat = f"beats: madmom, fps {s.get('fps')}, tl {s.get('tl')}; CBS window {s.get('window')} s" if s else ""
    notes = "".join(f"<br><span class='missing'>{_esc(n)}</span>" for n in folder["notes"])
    return (f"<li><b>{_esc(folder['label'])}</b> <span class='dim'>{_esc(folder['root'])}</span>, "
            f"{len(folder['pieces'])} pieces: {'; '.join(x for x in (made or 'settings.json', beat) if x)}{notes}</li>")


class _Media:
    """Where a page's audio goes: embedded as data URIs, or written into an assets folder beside the page and
    linked relatively (the page and its folder can then be zipped and sent to listeners together)."""

    def __init__(self, out_html, assets):
        self.folder = Path(out_html).with_name(Path(out_html).stem + "_files") if assets else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.bytes = 0

    def audio(self, data, ext, stem):
        self.bytes += len(data)
        if self.folder is None:
            return _data_uri(MIME[ext], data)
        (self.folder / f"{stem}{ext}").write_bytes(data)
        return urllib.parse.quote(f"{self.folder.name}/{stem}{ext}")


def _read_tracks(piece, tracks):
    """{track: (wave (N, channels), rate) or an error text, or None when missing}."""
    out = {}
    for t in tracks:
        path = piece["files"].get(t)
        try:
            out[t] = None if path is None else data.read_audio(path, sr=None, channels="all")
        except ValueError as err:
            out[t] = f"unreadable: {err}"
    return out


def _rows(piece, tracks, show, fps, media, stem, pictures=True):
    """The card's rows for the mix and for each track of `show`: (label, flags, audio src or None, picture src or
    None, note). The mix is the piece's mix file, else clip(sum) of every track present."""
    read = _read_tracks(piece, tracks)
    present = [(w.mean(axis=1), sr) for w, sr in (v for v in read.values() if isinstance(v, tuple))]
    rows = [_mix_row(piece, present, len(tracks), media, stem)]
    for t in show:
        if not isinstance(read[t], tuple):
            rows.append((t, [], None, None, read[t] or "missing"))
            continue
        (wave, sr), path = read[t], piece["files"][t]
        beats = (piece["sample"] or {}).get("beats", {}).get(t)
        true_beats = np.asarray(beats if beats is not None else []) * fps / metrics.RNN_FPS  # metrics' fps note
        png = _data_uri("image/png", spectrogram_png(wave.mean(axis=1), sr, true_beats)) if pictures else None
        src = media.audio(path.read_bytes(), path.suffix.lower(), f"{stem}_{_attr(t)}")
        rows.append((t, flags(wave), src, png, "" if beats is None else f"{len(beats)} beats"))
    return rows


def _mix_row(piece, present, n_tracks, media, stem):
    if piece["mix"] is not None:
        try:
            wave, _ = data.read_audio(piece["mix"], sr=None, channels="all")
        except ValueError as err:
            return "mix", [], None, None, f"mix file unreadable: {err}"
        src = media.audio(piece["mix"].read_bytes(), piece["mix"].suffix.lower(), f"{stem}_mix")
        return "mix", flags(wave), src, None, "mix file"
    if not present:
        return "mix", [], None, None, "no track to mix"
    total, sr = mix_of(present)
    note = "sum of the tracks" if len(present) == n_tracks else f"sum of the {len(present)} tracks present"
    fl = flags(total, clipped_share=float(np.mean(np.abs(total) > 1)))  # the sum, before clip() hides it
    return "mix", fl, media.audio(_wav_bytes(total, sr), ".wav", f"{stem}_mix"), None, note


def _flag_html(names):
    return "".join(f"<span class='flag {n.split()[0]}'>{n}</span>" for n in names)


def _card(piece, folder, tracks, media, stem):
    """One piece: its numbers, the mix player and, per track, a solo player and a spectrogram strip with beats."""
    fps = float(folder["result"].get("settings", {}).get("fps", 150))
    rows = _rows(piece, tracks, tracks, fps, media, stem)
    all_flags = sorted({f.split()[0] for _, fl, *_ in rows for f in fl})
    data = "".join(f" data-{_attr(k)}='{'' if v is None else v}'" for k, v in flat_metrics(piece["sample"],
                                                                                          tracks).items())
    if piece["sample"] is None:
        nums = "not evaluated: " + _esc("; ".join(piece["why"]) or "incomplete")
    else:
        s = piece["sample"]
        nums = (f"CBS {_fmt(s['cbs'])} · CBD mean {_fmt(s['cbd']['mean'])} median {_fmt(s['cbd']['median'])} · IRS "
                + " ".join(f"{_esc(t)} {_fmt(s['irs'][t])}" for t in tracks))
    lines = []
    for label, fl, src, png, note in rows:
        player = _player(src, label) if src else f"<span class='missing'>{_esc(note)}</span>"
        picture = f"<img alt='{_esc(label)} spectrogram' src='{png}'>" if png else "<span></span>"
        sub = f"<br><small>{_esc(note)}</small>" if src and note else ""
        lines.append(f"<div class='row'><span><b>{_esc(label)}</b>{_flag_html(fl)}{sub}</span>{player}{picture}</div>")
    return (f"<section class='card' data-name='{_esc(piece['name'])}' data-folder='{_esc(folder['label'])}'"
            f" data-flags='{' '.join(all_flags)}'{data}><h2>{_esc(piece['name'])} <span class='dim'>"
            f"{_esc(folder['label'])}</span>{_flag_html(all_flags)}</h2><div class='nums'>{nums}</div>"
            f"{''.join(lines)}</section>")


def _player(src, label):
    return f"<audio controls preload='metadata' src='{src}' title='{_esc(label)}'></audio>"


def _html(title, body, script):
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width'><style>{CSS}</style></head><body>{body}"
            f"<script>{script}</script></body></html>\n")


def _report_page(folders, tracks, media):
    """Header (settings, metric table), sort/filter controls, one card per piece of every folder."""
    cards = [_card(p, f, tracks, media, f"f{k}_{i:04d}") for k, f in enumerate(folders)
             for i, p in enumerate(f["pieces"])]
    keys = ["name", "cbs", "cbd_mean", "cbd_median", *(f"irs_{t}" for t in tracks), "irs_mean"]
    options = "".join(f"<option value='{_attr(k)}'>{_esc(metric_label(k))}</option>" for k in keys)
    folder_options = "".join(f"<option>{_esc(f['label'])}</option>" for f in folders)
    not_evaluated = sum(p["sample"] is None for f in folders for p in f["pieces"])
    unread = f"{not_evaluated} pieces not evaluated (incomplete or unreadable; shown with the reason). " \
        if not_evaluated else ""
    header = (f"<h1>Listening report</h1><ul>{''.join(_settings_html(f) for f in folders)}</ul>"
              f"{_metric_table(folders, tracks)}"
              f"<p class='dim'>Spectrograms: log frequency, {F_MIN:.0f} Hz to Nyquist, {DB_FLOOR:.0f} to {DB_TOP:.0f}"
              f" dBFS. Cyan lines: the beats metrics.py found (drawn in true seconds); white ticks: seconds. "
              f"{unread}<span id='audio-status'></span>.</p>")
    controls = (f"<div id='controls'>sort by <select id='key'>{options}</select> <select id='dir'><option value='asc'>"
                f"ascending</option><option value='desc'>descending</option></select> folder <select id='folder'>"
                f"<option value=''>all</option>{folder_options}</select> <input id='q' placeholder='name contains'> "
                f"<label><input type='checkbox' id='flagged'> only flagged (clipped, silent)</label> "
                f"<span id='shown' class='dim'></span></div>")
    title = "Listening report: " + ", ".join(f["label"] for f in folders)
    return _html(title, header + controls + f"<div id='cards'>{''.join(cards)}</div>",
                 STATUS_JS + SORT_JS)


INSTRUCTIONS = f"""<h1>Listening test</h1>
<p>Listen to each piece with headphones, in any order; play a piece as often as you like.</p>
<ul><li><b>Synchronisation</b> (the mix, 1-{SYNC_SCALE}): do the instruments play together, on one shared beat?
1 = not at all, 2 = rarely, 3 = partly, 4 = mostly, 5 = perfectly together.</li>
<li><b>Stability</b> (one instrument alone, 1-{STABILITY_SCALE}): does this track keep a steady beat?
1 = unsteady, 2 = partly steady, 3 = steady.</li></ul>
<p>Your name or code: <input id='listener'> <span id='done' class='dim'></span> · <span id='audio-status'
class='dim'></span></p>"""


def _radios(name, scale):
    return "".join(f"<label><input type='radio' name='{name}' value='{v}'> {v}</label>" for v in range(1, scale + 1))


def _rating_card(piece, tracks, rate, media, pid):
    """A blinded piece: the mix with a 1-5 synchronisation scale, each rated track with a 1-3 stability scale."""
    rows = _rows(piece, tracks, rate, 150, media, pid, pictures=False)  # no beats are drawn: fps does not matter
    lines = []
    for label, _, src, _, note in rows:
        name, scale, what = (f"{pid}-sync", SYNC_SCALE, "synchronisation") if label == "mix" else \
            (f"{pid}-{_attr(label)}", STABILITY_SCALE, "stability")
        if src:
            answer = f"<span class='scale'>{what}: {_radios(name, scale)}</span>"
            lines.append(f"<div class='row'><b>{_esc(label)}</b>{_player(src, label)}{answer}</div>")
        else:
            lines.append(f"<div class='row'><b>{_esc(label)}</b><span class='missing'>missing</span><span></span>"
                         "</div>")
    rated = [label for label, _, src, _, _ in rows[1:] if src]
    return f"<section class='card' id='{pid}'><h2 class='pos'>{pid}</h2>{''.join(lines)}</section>", rated


def _rating_page(folders, tracks, rate, media, seed):
    """The App. A.6 test: every piece of every folder, shuffled, named P01.. only; the key travels in the page."""
    items = [(f, p) for f in folders for p in f["pieces"]]
    random.Random(seed).shuffle(items)  # the page's own order hides the folders; each browser shuffles again
    width = len(str(len(items)))
    cards, key = [], []
    for i, (folder, piece) in enumerate(items):
        pid = f"P{i + 1:0{width}d}"
        card, rated = _rating_card(piece, tracks, rate, media, pid)
        cards.append(card)
        key.append({"id": pid, "folder": folder["label"], "name": piece["name"],
                    "tracks": [_attr(t) for t in rated], "metrics": flat_metrics(piece["sample"], tracks)})
    encoded = base64.b64encode(json.dumps(key).encode()).decode("ascii")
    buttons = ("<p><button id='save'>Download answers (JSON)</button> <button id='show'>Show answers</button> "
               "<span class='dim'>send the downloaded file (or the text shown) to the organiser</span></p>"
               "<pre id='answers' hidden></pre>")
    script = (f"const FORMAT={json.dumps(FORMAT)},SYNC={SYNC_SCALE},STAB={STABILITY_SCALE};"
              + STATUS_JS + RATING_JS)
    body = (f"{INSTRUCTIONS}<div id='cards'>{''.join(cards)}</div>{buttons}"
            f"<script type='text/plain' id='key'>{encoded}</script>")
    return _html("Listening test", body, script), len(items)


# ---------------------------------------------------------------------------------------------------------------------
# 4. write_report: the one entry point
# ---------------------------------------------------------------------------------------------------------------------

def _estimate_audio_bytes(folders):
    """Bytes of audio a page would hold: every file's size, and for a missing mix the size of its largest track."""
    total = 0
    for f in folders:
        for p in f["pieces"]:
            sizes = [path.stat().st_size for path in p["files"].values() if path is not None]
            total += sum(sizes) + (p["mix"].stat().st_size if p["mix"] is not None else max(sizes, default=0))
    return total


def write_report(roots, out_html, results=None, assets=False, rating=False, rating_tracks=RATING_TRACKS, seed=0,
                 **evaluate_kwargs):
    """Write the listening report (or, with rating=True, the listening-test page) of one or several folders.

    roots: a folder or a list of folders (any layout of data.find_samples; settings.json optional). results:
    evaluate()'s result per folder; None: metrics.evaluate(root, **evaluate_kwargs). assets: link audio files in
    OUT_files/ instead of embedding (automatic past EMBED_LIMIT). rating_tracks: tracks with a stability question.
    seed: the page's piece order.
    Returns {"path", "pieces", "bytes" (of the page), "audio_bytes", "assets" (folder or None), "auto_assets"}.
    """
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if not isinstance(results, list):
        results = [results] + [None] * (len(roots) - 1)
    out_html = Path(out_html)
    if out_html.is_dir():
        raise ValueError(f"{out_html}: is a folder; give the report's file name, e.g. {out_html / 'report.html'}")
    results = [r if r is not None else metrics.evaluate(root, **evaluate_kwargs) for r, root in zip(results, roots)]
    folders = []
    for label, root, result in zip(_labels(roots), roots, results):
        tracks, items, notes = pieces(root, result)
        folders.append({"label": label, "root": str(root), "result": result, "pieces": items, "tracks": tracks,
                        "notes": notes, "settings": read_settings(root)})
    tracks = list(dict.fromkeys(t for f in folders for t in f["tracks"]))  # every folder's tracks, in order
    unknown = [t for t in rating_tracks if t not in tracks] if rating else []
    if unknown:
        raise ValueError(f"rating tracks {', '.join(unknown)} are not tracks of these folders ({', '.join(tracks)})")
    auto = not assets and _estimate_audio_bytes(folders) > EMBED_LIMIT
    out_html.parent.mkdir(parents=True, exist_ok=True)
    media = _Media(out_html, assets or auto)
    if rating:
        page, n = _rating_page(folders, tracks, list(rating_tracks), media, seed)
    else:
        page, n = _report_page(folders, tracks, media), sum(len(f["pieces"]) for f in folders)
    data.atomic_write(out_html, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return {"path": str(out_html), "pieces": n, "bytes": len(page.encode()), "audio_bytes": media.bytes,
            "assets": None if media.folder is None else str(media.folder), "auto_assets": auto}


def _labels(roots):
    """Short, distinct names for folders: the folder's name, or its path where two names are the same."""
    names = [Path(r).resolve().name or str(r) for r in roots]
    return [n if names.count(n) == 1 else str(r) for n, r in zip(names, roots)]


# ---------------------------------------------------------------------------------------------------------------------
# 5. Ratings: answer files -> Table 3 (mean ± std per folder) and Fig. 4 (ratings against the metrics)
# ---------------------------------------------------------------------------------------------------------------------

def _check_rating(value, scale, where):
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= scale:
        raise ValueError(f"{where}: {value!r} is not a rating 1-{scale}")
    return value


def load_answers(path):
    """One answer file, checked; ValueError naming the file and the key at fault."""
    path = Path(path)
    try:
        answers = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested too deep to be an answer file
        raise ValueError(f"{path}: not a readable JSON file ({type(err).__name__}: {err})") from None
    if not isinstance(answers, dict) or answers.get("format") != FORMAT:
        raise ValueError(f"{path}: \"format\" is not {FORMAT!r}; is it an answer file of a --rating page?")
    if not isinstance(answers.get("pieces"), list) or not isinstance(answers.get("listener") or "", str):
        raise ValueError(f"{path}: \"pieces\" missing or not a list, or \"listener\" not text; download it again")
    for i, p in enumerate(answers["pieces"]):
        where = f"{path}: pieces[{i}]"
        types = {"folder": str, "name": str, "metrics": dict, "sync": (int, type(None)), "stability": dict}
        wrong = [k for k, kind in types.items() if not isinstance(p, dict) or not isinstance(p.get(k, ()), kind)]
        if wrong:
            raise ValueError(f"{where}: missing or of the wrong kind: {', '.join(wrong)} (download it again)")
        _check_rating(p["sync"], SYNC_SCALE, f"{where}.sync")
        for t, v in p["stability"].items():
            _check_rating(v, STABILITY_SCALE, f"{where}.stability.{t}")
        bad = [k for k, v in p["metrics"].items() if not (v is None or type(v) in (int, float))]
        if bad:
            raise ValueError(f"{where}.metrics: {', '.join(bad)} not a number or null (download it again)")
    return answers


def summarise(all_answers):
    """Ratings pooled over listeners: {"folders": {folder: {"sync": [..], "stability": {track: [..]}}},
    "pieces": {(folder, name): {"sync": [..], "stability": {track: [..]}, "metrics": {...}}}}."""
    folders, by_piece = {}, {}
    for answers in all_answers:
        for p in answers["pieces"]:
            f = folders.setdefault(p["folder"], {"sync": [], "stability": {}})
            q = by_piece.setdefault((p["folder"], p["name"]), {"sync": [], "stability": {}, "metrics": p["metrics"]})
            for bucket in (f, q):
                if p["sync"] is not None:
                    bucket["sync"].append(p["sync"])
                for t, v in p["stability"].items():
                    if v is not None:
                        bucket["stability"].setdefault(t, []).append(v)
    return {"folders": folders, "pieces": by_piece}


def correlate(x, y):
    """(Pearson r, Spearman ρ) of two sequences; NaN when fewer than 3 pairs or either side is constant."""
    from scipy.stats import rankdata
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    return float(np.corrcoef(x, y)[0, 1]), float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def correlations(summary):
    """Fig. 4: per piece, the mean rating over listeners against each metric. Synchronisation against CBS
    (expected +) and CBD mean/median (expected −); each track's stability against its IRS (expected −).
    Returns [{"rating", "metric", "expected", "n", "pearson", "spearman"}], None where not computable."""
    tracks = sorted({t for q in summary["pieces"].values() for t in q["stability"]})
    pairs = [("sync", "cbs", "+"), ("sync", "cbd_mean", "-"), ("sync", "cbd_median", "-")]
    pairs += [(t, f"irs_{t}", "-") for t in tracks]
    out = []
    for rating, metric, expected in pairs:
        xs, ys = [], []
        for q in summary["pieces"].values():
            votes = q["sync"] if rating == "sync" else q["stability"].get(rating, [])
            value = q["metrics"].get(metric)
            if votes and value is not None:
                xs.append(float(np.mean(votes)))
                ys.append(value)
        r, rho = correlate(xs, ys)
        out.append({"rating": rating, "metric": metric, "expected": expected, "n": len(xs),
                    "pearson": None if math.isnan(r) else r, "spearman": None if math.isnan(rho) else rho})
    return out


def mean_std(votes):
    """'4.2 ± 0.9 (n)' with the sample standard deviation (ddof 1); Table 3's format."""
    if not votes:
        return "-"
    std = f"{np.std(votes, ddof=1):.1f}" if len(votes) > 1 else "n/a"
    return f"{np.mean(votes):.1f} ± {std} ({len(votes)})"


def ratings_main(argv):
    """`python extras/report.py ratings answers/*.json`: print Table 3 and the Fig. 4 correlations."""
    p = argparse.ArgumentParser(prog="report.py ratings", description="Summarise the answer files of a --rating "
                                "page: mean ± std per folder (as Table 3) and the correlation between the ratings and "
                                "each metric (as Fig. 4).")
    p.add_argument("answers", nargs="+", metavar="JSON", help="answer files downloaded from the rating page")
    p.add_argument("--json", metavar="OUT", help="write the summary and the correlations to this JSON file")
    a = p.parse_args(argv)
    for path in a.answers:  # before reading any: --json must not replace an answer file
        data.check_outputs({"--json": a.json}, {"JSON": path})
    all_answers = [load_answers(path) for path in a.answers]  # ValueError naming the file: main() prints it
    summary = summarise(all_answers)
    tracks = sorted({t for f in summary["folders"].values() for t in f["stability"]})
    listeners = {x.get("listener") or f"file {i}" for i, x in enumerate(all_answers)}
    print(f"{len(all_answers)} answer files, {len(listeners)} listeners, {len(summary['pieces'])} pieces; "
          f"mean ± std (number of ratings), as Table 3")
    width = max([len(f) for f in summary["folders"]] + [6])
    print(f"\n{'folder':<{width}}  {'synchronisation 1-5':<20}"
          + "".join(f"  {'stability ' + t + ' 1-3':<22}" for t in tracks).rstrip())
    for name, f in summary["folders"].items():
        print(f"{name:<{width}}  {mean_std(f['sync']):<20}"
              + "".join(f"  {mean_std(f['stability'].get(t, [])):<22}" for t in tracks).rstrip())
    corr = correlations(summary)
    print("\ncorrelation over pieces of the mean rating with each metric, as Fig. 4; expected sign in brackets")
    for c in corr:
        rating = "synchronisation" if c["rating"] == "sync" else f"stability {c['rating']}"
        print(f"  {rating:<22} vs {metric_label(c['metric']):<14} ({c['expected']})  "
              f"Pearson r {_signed(c['pearson'])}  Spearman ρ {_signed(c['spearman'])}  over {c['n']} pieces")
    if a.json:
        metrics.write_json("--json", a.json, {"folders": summary["folders"], "correlations": corr, "files": a.answers})
    return 0


def _signed(x):
    return "  n/a" if x is None else f"{x:+.2f}"


# ---------------------------------------------------------------------------------------------------------------------
# 6. Command line: evaluate the folders, print their numbers, write the page
# ---------------------------------------------------------------------------------------------------------------------

def _parser():
    p = argparse.ArgumentParser(
        prog="report.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Listening report of every piece under DIR: one self-contained HTML page with the metrics "
                    "(metrics.py) beside players and spectrograms; several DIRs side by side (--report) or pooled "
                    "and blinded (--rating, App. A.6).",
        epilog="Answers of a rating page: python extras/report.py ratings FILE... prints mean ± std per folder\n"
               "(Table 3) and the correlation of the ratings with each metric (Fig. 4); see: report.py ratings -h.")
    metrics.add_arguments(p, number=float)  # DIR..., --tracks, --fps, --tl (one each), --window, --workers, --json
    g = p.add_argument_group("the page")
    g.add_argument("--report", metavar="HTML", help="write one self-contained HTML page: settings, metric table and "
                                                    "per piece a mix player, solo players and spectrograms with beats")
    g.add_argument("--report-assets", action="store_true",
                   help=f"write the audio into NAME_files/ beside NAME.html and link it instead of embedding it "
                        f"(automatic past {EMBED_LIMIT // 2 ** 20} MB of audio)")
    g.add_argument("--rating", action="store_true", help="make the page a blinded listening test (App. A.6): 1-5 "
                                                         "synchronisation per piece, 1-3 stability per rated track; "
                                                         "summarise the answers: report.py ratings FILE...")
    g.add_argument("--rating-tracks", default=",".join(RATING_TRACKS),
                   help="comma-separated tracks with a stability question (default: %(default)s, as App. A.6)")
    g.add_argument("--rating-seed", type=int, default=0, help="seed of the page's piece order (default: "
                                                              "%(default)s; each browser reshuffles)")
    return p


def argument_error(a):
    """What is wrong with the options, before any audio is read; None when nothing is."""
    if not a.report:
        needs = a.rating or a.report_assets
        return "--rating and --report-assets need --report HTML" if needs else "give the page's file: --report HTML"
    if Path(a.report).is_dir():
        return f"--report {a.report}: is a folder; give the page's file name"
    if a.json and Path(a.json).is_dir():
        return f"--json {a.json}: is a folder; give a file name"
    assets = Path(a.report).with_name(Path(a.report).stem + "_files")  # written with --report-assets or large pages
    outputs = {"--json": a.json, "--report": a.report, "--report (its audio folder)": assets}
    try:
        for d in a.dirs:
            data.check_outputs(outputs, {"DIR": d})
    except ValueError as err:
        return str(err)
    if not all(math.isfinite(v) and v > 0 for v in (a.fps, a.tl)):
        return "--fps and --tl must be finite numbers > 0"
    return "--workers must be >= 1" if a.workers < 1 else None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ratings"]:
        try:
            return ratings_main(argv[1:])
        except (OSError, ValueError) as err:  # a bad answer file or --json, named in the message
            return metrics.fail(err)
    a = _parser().parse_args(argv)
    problem = argument_error(a)
    if problem:
        return metrics.fail(problem)
    try:
        results = [metrics.evaluate(d, a.window, a.fps, a.tl, a.workers, progress=True, tracks=a.tracks)
                   for d in a.dirs]
        for i, r in enumerate(results):
            print("\n" if i else "", end="")
            metrics.print_result(r)
        if a.json:
            metrics.write_json("--json", a.json, results[0] if len(results) == 1 else {"runs": results})
        rate = [t.strip() for t in a.rating_tracks.split(",") if t.strip()]
        w = write_report(a.dirs, a.report, results, a.report_assets, a.rating, rate, a.rating_seed)
    except (FileNotFoundError, ValueError) as err:
        return metrics.fail(err)
    except OSError as err:  # a full disk, a folder that cannot be made: --json names itself, the page here
        return metrics.fail(err if str(err).startswith("--") else f"--report: {err}; free space or choose another")
    where = "audio embedded"
    if w["assets"]:
        where = f"audio in {w['assets']}/" + (f" (past {EMBED_LIMIT // 2 ** 20} MB)" if w["auto_assets"] else "")
    print(f"wrote {w['path']}: {w['pieces']} pieces, {w['bytes'] / 1e6:.1f} MB "
          f"({w['bytes'] / 1e3 / max(w['pieces'], 1):.0f} kB per piece), {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
