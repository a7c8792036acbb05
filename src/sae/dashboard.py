"""A listenable dashboard of SAE latents: a static HTML folder that opens from disk.

``write_dashboard(out_dir, payload)`` writes::

    <out_dir>/index.html        the page: data inlined as JSON, plain JS (no server, no network, works from file://)
    <out_dir>/clips/*.wav       per shown latent, its top-activating frames as audio snippets (a context window of
                                ``context`` seconds either side of the frame; 16-bit PCM via soundfile)
    <out_dir>/img/*.png         per clip: log-mel spectrogram of the snippet with the latent's activation curve and the
                                phone and word boundaries overlaid; per latent: its activation histogram and its
                                phone association (mean activation per phone, F1 per phone)

The index lists the shown latents, sortable by density, phone selectivity (F1 of the best phone),
mutual information and downstream effect (the causal check's change in transcript log-prob and phone
error, where measured); a search box keeps the latents whose best phone, best word, or the phones and words
of their top clips match (``index.html#q=<phone or word>`` opens the page with that search). ``payload`` is built by :func:`dashboard_payload` from the features
(src/sae/features.py) and the causal check (src/sae/eval.py).
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LOG_MEL_BINS = 64


def log_mel(audio: np.ndarray, sr: int, hop: float = 0.01, win: float = 0.025) -> tuple[np.ndarray, float]:
    """Log10 mel spectrogram ``(bins, frames)`` of ``audio`` (transformers' ``audio_utils``: Hann window,
    power spectrum, Slaney mel filters) and its frame step in seconds."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    n_fft = 1 << int(np.ceil(np.log2(win * sr)))
    hop_n = max(1, int(round(hop * sr)))
    a = np.asarray(audio, dtype=np.float64)
    if len(a) < n_fft:
        a = np.pad(a, (0, n_fft - len(a)))
    mel = mel_filter_bank(n_fft // 2 + 1, LOG_MEL_BINS, 0.0, sr / 2, sr, norm="slaney", mel_scale="slaney")
    spec = spectrogram(a, window_function(int(win * sr), "hann", frame_length=n_fft), n_fft, hop_n, power=2.0,
                       mel_filters=mel, log_mel="log10", mel_floor=1e-10, center=True)  # fmt: skip
    return spec, hop_n / sr


def clip_png(path: Path, audio: np.ndarray, sr: int, t0: float, frame_times: np.ndarray, acts: np.ndarray,
             centre: float, tiers: dict[str, list[tuple[float, float, str]]], title: str) -> Path:  # fmt: skip
    """One clip's figure: log-mel of ``audio`` (starting at ``t0`` s), the activation curve (``acts`` at
    ``frame_times``, absolute s), the centre frame, and phone / word intervals (absolute s) as boundaries + labels."""
    spec, step = log_mel(audio, sr)
    dur = len(audio) / sr
    fig, ax = _figure((5.0, 2.6), (0.11, 0.17, 0.87, 0.88))
    ax.imshow(
        spec,
        origin="lower",
        aspect="auto",
        extent=(t0, t0 + spec.shape[1] * step, 0, spec.shape[0]),
        cmap="magma",
    )
    ax.set_xlim(t0, t0 + dur)
    ax.set_ylabel("mel bin")
    ax.set_xlabel("time (s)")
    ax.axvline(centre, color="white", lw=0.8, ls=":")
    colours = {"phones": "cyan", "words": "lime"}
    ybase = {"phones": spec.shape[0] * 0.06, "words": spec.shape[0] * 0.9}
    for tier, ivs in tiers.items():
        for s, e, lab in ivs:
            if e < t0 or s > t0 + dur:
                continue
            ax.axvline(max(s, t0), color=colours.get(tier, "w"), lw=0.5, alpha=0.7)
            if lab:
                ax.text((max(s, t0) + min(e, t0 + dur)) / 2, ybase.get(tier, 5), lab, color=colours.get(tier, "w"),
                        ha="center", fontsize=9, fontweight="bold", clip_on=True,
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "edgecolor": "none"})  # fmt: skip
    ax2 = ax.twinx()
    ax2.plot(frame_times, acts, color="white", lw=1.4)
    ax2.set_ylim(0, max(float(np.max(acts)) if len(acts) else 1.0, 1e-6) * 1.1)
    ax2.set_ylabel("activation")
    ax.set_title(title, fontsize=8)
    fig.savefig(path)
    return path


def _figure(size: tuple[float, float], box: tuple[float, float, float, float]):
    """A matplotlib ``Figure`` (no pyplot state, Agg canvas) with fixed margins ``(left, bottom, right, top)``:
    ``tight_layout`` cost about 0.35 s per figure (measured), most of a dashboard's build time."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=80)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=box[0], bottom=box[1], right=box[2], top=box[3])
    return fig, fig.add_subplot()


def histogram_png(path: Path, values: np.ndarray, title: str) -> Path:
    fig, ax = _figure((4, 2.4), (0.16, 0.2, 0.96, 0.88))
    v = np.asarray(values, dtype=np.float64)
    if len(v):
        ax.hist(v, bins=40, color="tab:blue")
    ax.set_xlabel("activation (active frames)")
    ax.set_ylabel("frames")
    ax.set_title(title, fontsize=8)
    fig.savefig(path)
    return path


def association_png(
    path: Path, phones: Sequence[str], mean_act: np.ndarray, f1: np.ndarray, title: str
) -> Path:
    fig, ax = _figure((max(4.0, 0.18 * len(phones) + 1), 2.4), (0.13, 0.22, 0.87, 0.88))
    x = np.arange(len(phones))
    ax.bar(x, mean_act, color="tab:orange", label="mean activation")
    ax.set_xticks(x, list(phones), fontsize=6, rotation=90)
    ax.set_ylabel("mean act.")
    ax2 = ax.twinx()
    ax2.plot(x, f1, "k.", label="F1")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("F1")
    ax.set_title(title, fontsize=8)
    fig.savefig(path)
    return path


def _js_safe(obj) -> str:
    """JSON that cannot close the ``<script>`` element it is inlined in."""
    return json.dumps(obj, allow_nan=False).replace("</", "<\\/").replace("<!--", "<\\!--")


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:sans-serif;margin:1em;font-size:14px}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{cursor:pointer;background:#eee}td.l{text-align:left}
.latent{border-top:2px solid #888;margin-top:1.2em;padding-top:.4em}
.clip{display:inline-block;margin:4px;vertical-align:top;font-size:12px}
.clip img{display:block;width:400px}
#summary{margin:.5em 0;color:#333}
</style></head><body>
<h1>__TITLE__</h1>
<div id="summary"></div>
<p>Search phone or word: <input id="search" type="text" placeholder="e.g. s or seven"> <span id="count"></span></p>
<table id="index"><thead><tr></tr></thead><tbody></tbody></table>
<div id="latents"></div>
<script type="application/json" id="data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const COLS = DATA.columns;
let sortKey = DATA.default_sort, sortDesc = true;
function fmt(v) { return (typeof v === "number") ? (Number.isInteger(v) ? String(v) : v.toPrecision(3)) : (v === null ? "" : String(v)); }
function matches(l, q) {
  if (!q) return true;
  q = q.toLowerCase();
  if ((l.best_phone || "").toLowerCase() === q || (l.best_word || "").toLowerCase() === q) return true;
  return l.clips.some(c => (c.phone || "").toLowerCase() === q || (c.word || "").toLowerCase() === q || (c.word || "").toLowerCase().startsWith(q));
}
function renderIndex() {
  const head = document.querySelector("#index thead tr");
  head.textContent = "";
  for (const c of COLS) {
    const th = document.createElement("th");
    th.textContent = c.label + (c.key === sortKey ? (sortDesc ? " \\u25bc" : " \\u25b2") : "");
    th.dataset.key = c.key;
    th.addEventListener("click", () => { if (sortKey === c.key) sortDesc = !sortDesc; else { sortKey = c.key; sortDesc = true; } renderIndex(); });
    head.appendChild(th);
  }
  const q = document.getElementById("search").value.trim();
  const rows = DATA.latents.filter(l => matches(l, q));
  rows.sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    const nx = (x === null || x === undefined), ny = (y === null || y === undefined);
    if (nx || ny) return nx - ny;
    const d = (typeof x === "number") ? x - y : String(x).localeCompare(String(y));
    return sortDesc ? -d : d;
  });
  const body = document.querySelector("#index tbody");
  body.textContent = "";
  for (const l of rows) {
    const tr = document.createElement("tr");
    for (const c of COLS) {
      const td = document.createElement("td");
      if (c.key === "latent") { const a = document.createElement("a"); a.href = "#latent-" + l.latent; a.textContent = l.latent; td.appendChild(a); }
      else td.textContent = fmt(l[c.key]);
      if (typeof l[c.key] !== "number") td.className = "l";
      tr.appendChild(td);
    }
    body.appendChild(tr);
  }
  const shown = new Set(rows.map(l => l.latent));
  for (const el of document.querySelectorAll(".latent")) el.style.display = shown.has(Number(el.dataset.latent)) ? "" : "none";
  document.getElementById("count").textContent = rows.length + " of " + DATA.latents.length + " latents";
}
function renderLatents() {
  const root = document.getElementById("latents");
  for (const l of DATA.latents) {
    const div = document.createElement("div");
    div.className = "latent"; div.id = "latent-" + l.latent; div.dataset.latent = l.latent;
    const h = document.createElement("h2");
    h.textContent = "latent " + l.latent + " \\u2014 best phone " + (l.best_phone || "-") + " (F1 " + fmt(l.selectivity) + ", precision " + fmt(l.precision) + ", recall " + fmt(l.recall) + "), density " + fmt(l.density);
    div.appendChild(h);
    if (l.effect) {
      const p = document.createElement("p");
      p.textContent = "causal check (latent ablated at this layer): transcript log-prob change " + fmt(l.effect.logprob_delta) + ", phone error change " + fmt(l.effect.phone_error_delta) + "; largest per-phone error changes: " + l.effect.top_phones.map(x => x[0] + " " + fmt(x[1])).join(", ");
      div.appendChild(p);
    }
    for (const src of [l.histogram, l.association]) { const img = document.createElement("img"); img.src = src; img.alt = src; div.appendChild(img); }
    const clips = document.createElement("div");
    for (const c of l.clips) {
      const box = document.createElement("div"); box.className = "clip";
      const img = document.createElement("img"); img.src = c.png; img.alt = c.png; box.appendChild(img);
      const au = document.createElement("audio"); au.controls = true; au.preload = "none"; au.src = c.wav; box.appendChild(au);
      const cap = document.createElement("div");
      cap.textContent = c.utterance + " @ " + c.time.toFixed(2) + " s, phone " + (c.phone || "-") + ", word " + (c.word || "-") + ", activation " + fmt(c.activation);
      box.appendChild(cap); clips.appendChild(box);
    }
    div.appendChild(clips);
    root.appendChild(div);
  }
}
document.getElementById("summary").textContent = DATA.summary;
const hash = decodeURIComponent(location.hash || "");
if (hash.startsWith("#q=")) document.getElementById("search").value = hash.slice(3);
renderLatents();
renderIndex();
document.getElementById("search").addEventListener("input", renderIndex);
</script>
</body></html>
"""

COLUMNS = [
    ("latent", "latent"), ("density", "density"), ("best_phone", "best phone"), ("selectivity", "phone F1"),
    ("precision", "precision"), ("recall", "recall"), ("mi_phones", "MI phones (nats)"), ("best_word", "best word"),
    ("logprob_delta", "\u0394 log-prob (ablated)"), ("phone_error_delta", "\u0394 phone error (ablated)"),
]  # fmt: skip


def write_dashboard(out_dir: str | Path, payload: dict) -> Path:
    """Write the folder (see the module doc) atomically (a temporary folder renamed into place); returns index.html.

    ``payload``: ``title``, ``summary``, ``sample_rate``, ``latents``: list of dicts with the index columns and
    ``clips`` (each ``audio`` (samples), ``t0``, ``frame_times``, ``acts``, ``time``, ``utterance``, ``phone``,
    ``word``, ``activation``, ``tiers``), ``hist_values``, ``phones``, ``mean_act``, ``f1``, optional ``effect``."""
    import soundfile as sf

    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "clips").mkdir(parents=True)
    (tmp / "img").mkdir()
    sr = int(payload["sample_rate"])
    try:
        data_latents = []
        for lat in payload["latents"]:
            i = int(lat["latent"])
            clips = []
            for j, c in enumerate(lat["clips"]):
                wav = f"clips/latent{i}_{j}.wav"
                png = f"img/latent{i}_{j}.png"
                sf.write(
                    tmp / wav, np.clip(np.asarray(c["audio"], dtype=np.float32), -1, 1), sr, subtype="PCM_16"
                )
                clip_png(tmp / png, c["audio"], sr, c["t0"], c["frame_times"], c["acts"], c["time"], c["tiers"],
                         f"latent {i}: {c['utterance']} @ {c['time']:.2f} s")  # fmt: skip
                clips.append({"wav": wav, "png": png, "utterance": c["utterance"], "time": float(c["time"]),
                              "phone": c.get("phone", ""), "word": c.get("word", ""), "activation": float(c["activation"])})  # fmt: skip
            hist = f"img/latent{i}_hist.png"
            histogram_png(tmp / hist, lat["hist_values"], f"latent {i}: activation histogram")
            assoc = f"img/latent{i}_phones.png"
            association_png(
                tmp / assoc, lat["phones"], lat["mean_act"], lat["f1"], f"latent {i}: phone association"
            )
            row = {k: _num(lat.get(k)) for k, _ in COLUMNS}
            eff = lat.get("effect")
            if eff is not None:
                top = sorted(eff["per_phone"].items(), key=lambda kv: -abs(kv[1]))[:5]
                row["effect"] = {"logprob_delta": float(eff["logprob_delta"]), "phone_error_delta": float(eff["phone_error_delta"]),
                                 "top_phones": [[p, float(v)] for p, v in top]}  # fmt: skip
            data_latents.append({**row, "clips": clips, "histogram": hist, "association": assoc})
        data = {"latents": data_latents, "summary": str(payload.get("summary", "")), "default_sort": "selectivity",
                "columns": [{"key": k, "label": lab} for k, lab in COLUMNS]}  # fmt: skip
        title = html.escape(str(payload.get("title", "SAE dashboard")))
        page = PAGE.replace("__TITLE__", title).replace("__DATA__", _js_safe(data))
        (tmp / "index.html").write_text(page, encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "index.html"


def _num(v):
    if isinstance(v, (np.floating, float)):
        v = float(v)
        return None if not np.isfinite(v) else v
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def write_top_index(out_dir: Path, pages: list[tuple[str, str]]) -> Path:
    """``<out_dir>/index.html`` linking one dashboard per layer (``(label, relative path)``)."""
    items = "\n".join(f'<li><a href="{html.escape(p)}">{html.escape(lab)}</a></li>' for lab, p in pages)
    f = Path(out_dir) / "index.html"
    f.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>SAE dashboards</title></head>'
                 f"<body><h1>SAE dashboards</h1><ul>{items}</ul></body></html>\n", encoding="utf-8")  # fmt: skip
    return f


def dashboard_payload(sae, acts, corpus, state: int, res: dict, frames, effects: dict[int, dict] | None,
                      latents: Sequence[int], context: float = 0.4, title: str = "", summary: str = "",
                      chunk: int = 4096) -> dict:  # fmt: skip
    """The payload of :func:`write_dashboard` for ``latents``: clips around each top frame (``context`` s either
    side), the activation curve over the clip's frames, tiers as intervals; histogram values over every frame
    of ``frames`` (active ones)."""
    from src.datamodules.labels import label_norm_of
    from src.sae.eval import latents_of, read_state
    from src.sae.features import latent_rows

    latents = [int(i) for i in latents]
    norm = label_norm_of(corpus)
    rows = {r["latent"]: r for r in latent_rows(res, "phones", latents)} if "phones" in res["tiers"] else {}
    hist = {i: [] for i in latents}
    for s in range(0, len(frames.rows), chunk):
        z = latents_of(sae, read_state(acts, state, frames.rows[s : s + chunk]))[:, latents].numpy()
        for j, i in enumerate(latents):
            v = z[:, j]
            hist[i].append(v[v > 0])
    utt_cache: dict[int, tuple] = {}

    def utterance(u: int):
        if u not in utt_cache:
            utt = corpus[u]
            ann = corpus.annotation(u)
            tiers = {}
            for tier in ("phones", "words"):
                ivs = ann.tiers.get(tier) or []
                labs = norm.apply([iv.label for iv in ivs], tier)
                tiers[tier] = [(float(iv.start), float(iv.end), lab or "") for iv, lab in zip(ivs, labs)]
            x = read_state(
                acts, state, np.arange(int(acts.offsets[u]), int(acts.offsets[u]) + int(acts.lengths[u]))
            )
            utt_cache.clear()  # one utterance at a time
            utt_cache[u] = (np.asarray(utt.audio, dtype=np.float32), int(utt.sample_rate), tiers,
                            np.asarray(acts.frame_times(u)), latents_of(sae, x).numpy())  # fmt: skip
        return utt_cache[u]

    out = []
    tier_p = res["tiers"].get("phones")
    for i in latents:
        clips = []
        for top in res["top_frames"][i]:
            audio, sr, tiers, ftimes, z = utterance(top["utt_index"])
            a = max(0, int((top["time"] - context) * sr))
            b = min(len(audio), int((top["time"] + context) * sr) + 1)
            sel = (ftimes >= a / sr) & (ftimes <= b / sr)
            clips.append({"audio": audio[a:b], "t0": a / sr, "frame_times": ftimes[sel], "acts": z[sel, i],
                          "time": top["time"], "utterance": top["utterance"], "phone": top.get("phone", ""),
                          "word": top.get("word", ""), "activation": top["activation"], "tiers": tiers})  # fmt: skip
        r = rows.get(i, {"latent": i, "density": float(res["density"][i])})
        eff = (effects or {}).get(i)
        out.append({**r, "clips": clips, "hist_values": np.concatenate(hist[i]) if hist[i] else np.zeros(0),
                    "phones": tier_p["classes"] if tier_p else [], "mean_act": tier_p["mean_act"][i] if tier_p else [],
                    "f1": tier_p["f1"][i] if tier_p else [], "effect": eff,
                    "logprob_delta": None if eff is None else eff["logprob_delta"],
                    "phone_error_delta": None if eff is None else eff["phone_error_delta"]})  # fmt: skip
    sr = int(corpus[int(frames.utt[0])].sample_rate) if len(frames.utt) else 16000
    return {"title": title, "summary": summary, "sample_rate": sr, "latents": out}
