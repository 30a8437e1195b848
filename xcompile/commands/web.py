"""`xcompile export-web` (a static site that runs explainers in the browser) and `xcompile view` (that site on
127.0.0.1); xcompile/web/ builds them, docs/deployment.md describes them."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("export-web")
    def export_web_cmd(
        explainers: List[Path] = typer.Argument(..., help="explainers written by `xcompile compile`"),
        out: Path = typer.Option(..., "-o", "--out", help="the site's folder (index.html, manifest.json, ...)"),
        info: Optional[List[Path]] = typer.Option(None, "--info", help="a model description JSON (classes, preprocess, vocab, examples; the format of xcompile/data/*.json), matched by input_name (repeatable)"),
        examples: Optional[List[Path]] = typer.Option(None, "--examples", help="example inputs: .npy/.npz rows, image files, .txt lines (repeatable)"),
        n_examples: int = typer.Option(8, "--n-examples", help="examples per model taken from each source"),
        ort_web: Optional[Path] = typer.Option(None, "--ort-web", help="a folder with the onnxruntime-web files (default: npm pack into ~/.cache/xcompile)"),
        tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="a WordPiece tokenizer.json (BERT family): the page encodes typed text with it"),
    ):
        """Write a static site that runs EXPLAINERS in the browser (onnxruntime-web: WASM, WebGPU where present)."""
        from ..web.site import export_site
        index = export_site(explainers, out, info, examples, ort_web, n_examples, typer.echo, tokenizer=tokenizer)
        typer.echo(f"wrote {index} ({len(explainers)} explainer(s)); serve the folder from any static host, or "
                   f"`python -m http.server -d {out}`")

    @app.command("view")
    def view_cmd(
        explainers: List[Path] = typer.Argument(..., help="explainers written by `xcompile compile`"),
        port: int = typer.Option(8000, "--port", help="port on 127.0.0.1 (0: any free port)"),
        no_browser: bool = typer.Option(False, "--no-browser", help="do not open a browser"),
        info: Optional[List[Path]] = typer.Option(None, "--info", help="as for export-web"),
        examples: Optional[List[Path]] = typer.Option(None, "--examples", help="as for export-web"),
        ort_web: Optional[Path] = typer.Option(None, "--ort-web", help="as for export-web"),
        tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="as for export-web"),
    ):
        """Serve the export-web site of EXPLAINERS on 127.0.0.1 and open it in the browser."""
        from ..web.serve import view
        view(explainers, port, not no_browser, typer.echo, infos=info, examples=examples, ort_web=ort_web,
             tokenizer=tokenizer)
