"""EST Track files and the mngu0 / MOCHA-TIMIT layouts (../shared/CORPORA.md §2-§4).

Written from the specification (the Edinburgh Speech Tools / flite writer behaviour and the
verbatim MOCHA header), independently of src/datamodules/est.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# CORPORA.md §4.2: the verbatim header of a real msak0 .ema file (channel names with their trailing spaces)
MOCHA_CHANNELS = ("ui_x", "li_x", "ul_x", "ll_x", "tt_x", "ui_y", "li_y", "ul_y", "ll_y", "tt_y", "tb_x", "td_x",
                  "v_x ", "****", "bn_x", "tb_y", "td_y", "v_y ", "****", "bn_y")  # fmt: skip


def write_est(path, values: np.ndarray, names, times: np.ndarray | None = None, rate: float | None = None,
              valid: np.ndarray | None = None, data_type: str = "binary", byte_order: str = "01",
              breaks: bool = True, style: str = "mocha", declared_channels: int | None = None,
              declared_frames: int | None = None) -> Path:  # fmt: skip
    """Write an EST Track file.

    values: ``(T, K)``; names: ``K`` channel names written verbatim (``"v_x "`` keeps its
    trailing space; ``"****"`` for an unused channel); times: ``(T,)`` seconds (default
    ``t / rate``); valid: ``(T,)`` break flags (default all 1); ``breaks``: write
    ``BreaksPresent true`` and the flag column.  ``style``: the header line order of the
    MOCHA/mngu0 files (``mocha``: DataType, NumFrames, ByteOrder, NumChannels, EqualSpace,
    BreaksPresent, CommentChar, a blank line, the channels) or of the Edinburgh Speech Tools
    ASCII writer (``est``: DataType, NumFrames, NumChannels, NumAuxChannels, EqualSpace,
    BreaksPresent, the channels).  ASCII bodies are written as the EST writer does:
    ``"%f\\t"`` time, ``"1 \\t"`` / ``"0 \\t"`` flag, ``"%f "`` per channel (a trailing space).
    ``declared_channels`` / ``declared_frames`` write a wrong count into the header (bad-input tests).
    """
    values = np.asarray(values, dtype=np.float64)  # (T, K)
    T, K = values.shape
    assert len(names) == K
    if times is None:
        times = np.arange(T) / float(rate)
    valid = np.ones(T, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    nc = K if declared_channels is None else declared_channels
    nf = T if declared_frames is None else declared_frames
    lines = ["EST_File Track", f"DataType {data_type}", f"NumFrames {nf}"]
    if style == "mocha":
        if data_type == "binary":
            lines.append(f"ByteOrder {byte_order}")
        lines += [f"NumChannels {nc}", "EqualSpace 1"]
        if breaks:
            lines.append("BreaksPresent true")
        lines += ["CommentChar ;", ""]
    else:
        lines += [f"NumChannels {nc}", "NumAuxChannels 0", "EqualSpace 1"]
        if breaks:
            lines.append("BreaksPresent true")
        if data_type == "binary":
            lines.append(f"ByteOrder {byte_order}")
    lines += [f"Channel_{i} {n}" for i, n in enumerate(names)]
    lines.append("EST_Header_End")
    head = ("\n".join(lines) + "\n").encode("ascii")
    cols = [times[:, None]] + ([valid.astype(np.float64)[:, None]] if breaks else []) + [values]
    mat = np.concatenate(cols, axis=1)  # (T, 1 [+1] + K)
    if data_type == "binary":
        body = mat.astype("<f4" if byte_order == "01" else ">f4").tobytes()
    else:
        rows = []
        for t in range(T):
            s = f"{times[t]:f}\t"
            if breaks:
                s += "1 \t" if valid[t] else "0 \t"
            s += "".join(f"{v:f} " for v in values[t])
            rows.append(s + "\n")
        body = "".join(rows).encode("ascii")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + body)
    return path


def write_xlabel(path, intervals, header=("signal {stem}", "nfields 1"), colour: int = 26, sep: str = "\t") -> Path:
    """An xwaves/ESPS label file (mngu0 ``.lab``, CORPORA.md §3.3): header lines, ``#``, then per
    segment ``<sep>end<space>colour<sep>label`` with the end time in seconds (start = previous end)."""
    path = Path(path)
    lines = [h.format(stem=path.stem) for h in header] + ["#"]
    lines += [f"{sep}{iv.end:.6f} {colour}{sep}{iv.label}" for iv in intervals]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mocha_lab(path, intervals) -> Path:
    """A MOCHA ``.lab`` (CORPORA.md §4.3): ``start end label`` per line, seconds, space-separated."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{iv.start:.3f} {iv.end:.3f} {iv.label}\n" for iv in intervals))
    return path
