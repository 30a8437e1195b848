"""Heatmaps of sequence relevance: tokens (self-contained HTML and a PNG) and time series (a PNG).

Token colours follow LXT / inseq: red = positive, blue = negative relevance, the colour's strength is |R| / max|R|
over the row's shown tokens (white = 0). The background is the colour mixed with white, written as an opaque
``#rrggbb`` so the file needs no script or stylesheet from elsewhere: a positive token of strength a has red 255
and green = blue = round(255 (1 - a)); a negative one has blue 255 and red = green = round(255 (1 - a)). Each
token's relevance is in its ``title`` tooltip and its ``data-r`` attribute.

Padding tokens (attention mask 0, or the vocabulary's pad id when the model has no mask) are left out of the
heatmaps and out of the row's maximum; the HTML says how many there were. Their relevance stays in the .npy file.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

STYLE = ("body{font-family:sans-serif;margin:1em;line-height:2.1}"
         "h3{font-size:0.95em;margin:1em 0 0.2em}"
         ".tok{padding:0.15em 0.1em;margin:0 1px;border-radius:3px;white-space:pre;font-family:monospace}"
         ".note{color:#777;font-size:0.8em}")
# display forms of whitespace markers of sub-word tokenizers (byte-level BPE, SentencePiece, newlines)
DISPLAY = {"\u0120": " ", "\u2581": " ", "\u010a": "\u21b5", "\n": "\u21b5", "\t": "\u2192"}


def strength(relevance, shown=None) -> np.ndarray:
    """|R| / max|R| over the shown tokens (0 where nothing is relevant)."""
    r = np.asarray(relevance, np.float64).reshape(-1)
    shown = np.ones(r.shape, bool) if shown is None else np.asarray(shown, bool).reshape(-1)
    m = np.abs(r[shown]).max() if shown.any() else 0.0
    return np.clip(np.abs(r) / m, 0.0, 1.0) if m > 0 and np.isfinite(m) else np.zeros_like(r)


def rgb(r: float, a: float) -> tuple[int, int, int]:
    """Red (r > 0) or blue (r < 0) of strength a in [0, 1], mixed with white."""
    fade = int(round(255 * (1.0 - a)))
    if r > 0:
        return 255, fade, fade
    if r < 0:
        return fade, fade, 255
    return 255, 255, 255


def display(token: str) -> str:
    return "".join(DISPLAY.get(c, c) for c in token) or " "


def _row_html(title: str, tokens, relevance, shown, words=None) -> list[str]:
    r = np.asarray(relevance, np.float64).reshape(-1)
    a = strength(r, shown)
    out = [f"<h3>{html.escape(title)}</h3>", "<div class=\"row\">"]
    for tok, ri, ai, keep in zip(tokens, r, a, shown):
        if not keep:
            continue
        c = "#%02x%02x%02x" % rgb(ri, ai)
        ink = ";color:#ffffff" if ai > 0.6 else ""  # white text on strong colours stays readable
        tip = html.escape(f"{tok}: {ri:+.4g}", quote=True)
        out.append(f"<span class=\"tok\" style=\"background-color:{c}{ink}\" title=\"{tip}\" "
                   f"data-r=\"{ri:.6g}\">{html.escape(display(tok))}</span>")
    out.append("</div>")
    hidden = int(len(r) - np.count_nonzero(shown))
    note = f"sum {r[shown].sum():+.4g}, max |R| {np.abs(r[shown]).max() if shown.any() else 0.0:.4g}"
    if hidden:
        note += f"; {hidden} padding token{'s' if hidden > 1 else ''} not shown"
    out.append(f"<div class=\"note\">{html.escape(note)}</div>")
    return out


def token_html(rows, heading: str = "token relevance") -> str:
    """rows: [(title, tokens, relevance, shown)] -> one self-contained HTML document (one block per row)."""
    body = []
    for title, tokens, relevance, shown in rows:
        shown = np.ones(len(tokens), bool) if shown is None else np.asarray(shown, bool).reshape(-1)
        body += _row_html(title, tokens, relevance, shown)
    legend = ("<div class=\"note\">red: positive relevance, blue: negative; strength |R| / max|R| of the row; "
              "hover a token for its value</div>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(heading) + "</title>"
            f"<style>{STYLE}</style></head><body>\n<h2>{html.escape(heading)}</h2>\n{legend}\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html(path: Path, text: str) -> None:
    Path(path).write_text(text, encoding="utf-8")  # callers write through files.atomic_write


# ------------------------------------------------------------------ PNG: tokens as text on coloured boxes
WIDTH_IN, DPI, FONT = 8.0, 100, 11


def _layout(tokens, renderer, prop, width_px: float, pad_px: float):
    """Wrap tokens into lines -> [(line, x_px, token index)], number of lines."""
    x, line, placed = pad_px, 0, []
    for k, tok in enumerate(tokens):
        w, _, _ = renderer.get_text_width_height_descent(tok, prop, ismath=False)
        w += 2 * pad_px
        if x + w > width_px - pad_px and x > pad_px:
            x, line = pad_px, line + 1
        placed.append((line, x, k))
        x += w + pad_px
    return placed, line + 1


def save_token_png(path: Path, tokens, relevance, shown=None, title: str | None = None) -> None:
    """Tokens laid out as text on boxes coloured like the HTML, wrapped to a fixed width of 8 inches."""

    from ..guards import plain_text_plots
    plt = plain_text_plots()  # Agg, and names in titles are never parsed as mathtext
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    r = np.asarray(relevance, np.float64).reshape(-1)
    shown = np.ones(len(r), bool) if shown is None else np.asarray(shown, bool).reshape(-1)
    a = strength(r, shown)
    keep = [k for k in range(len(r)) if shown[k]]
    texts = [display(tokens[k]) for k in keep]
    prop = FontProperties(family="monospace", size=FONT)
    width_px, pad_px = WIDTH_IN * DPI, 4.0
    placed, n_lines = _layout(texts, RendererAgg(int(width_px), 100, DPI), prop, width_px, pad_px)
    line_px = 2.2 * FONT * DPI / 72
    head_px = line_px if title else 0.0
    height_px = head_px + max(n_lines, 1) * line_px + 2 * pad_px
    fig = plt.figure(figsize=(WIDTH_IN, height_px / DPI), dpi=DPI)
    if title:
        fig.text(pad_px / width_px, 1 - 0.6 * line_px / height_px, title, fontsize=FONT - 1, va="center")
    for (line, x, j), text in zip(placed, texts):
        k = keep[j]
        y = 1 - (head_px + (line + 0.5) * line_px + pad_px) / height_px
        colour = tuple(c / 255 for c in rgb(r[k], a[k]))
        fig.text(x / width_px, y, text, fontproperties=prop, va="center", ha="left",
                 color="white" if a[k] > 0.6 else "black",
                 bbox={"boxstyle": "round,pad=0.25", "facecolor": colour, "edgecolor": "#cccccc", "linewidth": 0.5})
    fig.savefig(path, format="png", dpi=DPI)  # no bbox_inches: the width stays 8 inches
    plt.close(fig)


# ------------------------------------------------------------------ time series
def time_axis(sample_shape) -> int | None:
    """The time axis of a sample shape that is 1-D in time, else None: rank 1 ([T]); rank 2 with one small
    channel dimension ([C, T] or [T, F] with the channel count at most 16 and at most a quarter of the other)."""
    dims = tuple(sample_shape)
    if not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        return None
    if len(dims) == 1:
        return 0 if dims[0] > 1 else None
    if len(dims) == 2:
        small, large = sorted(dims)
        if small <= 16 and large >= 4 * small:
            return int(np.argmax(dims))
    return None


def save_timeseries_png(path: Path, signal, relevance, title: str | None = None, max_channels: int = 8) -> None:
    """One panel per channel: the signal as a black line over its relevance as a coloured band (bwr, centred on
    zero, one scale for all channels of the row)."""

    from ..guards import plain_text_plots
    plt = plain_text_plots()  # Agg, and names in titles are never parsed as mathtext

    x, r = np.asarray(signal, np.float64), np.asarray(relevance, np.float64)
    if x.ndim == 1:
        x, r = x[None], r[None]
    elif time_axis(x.shape) == 0:  # [T, F] -> [F, T]
        x, r = x.T, r.T
    x, r = x[:max_channels], r[:max_channels]
    m = np.abs(r).max() if np.isfinite(r).all() and np.abs(r).max() > 0 else 1.0
    fig, axes = plt.subplots(len(x), 1, figsize=(8, 1.0 + 1.1 * len(x)), dpi=DPI, sharex=True, squeeze=False)
    t = np.arange(x.shape[1])
    for c, ax in enumerate(axes[:, 0]):
        lo, hi = float(np.nanmin(x[c])), float(np.nanmax(x[c]))
        lo, hi = (lo - 0.5, hi + 0.5) if hi - lo < 1e-12 else (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.imshow(r[c][None], cmap="bwr", vmin=-m, vmax=m, aspect="auto", interpolation="nearest",
                  extent=(-0.5, len(t) - 0.5, lo, hi), alpha=0.8)
        ax.plot(t, x[c], color="black", linewidth=1.0)
        ax.set_ylim(lo, hi)
        ax.set_ylabel(f"ch {c}", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("time step", fontsize=8)
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")  # callers write through files.atomic_write
    plt.close(fig)
