"""What one page costs the worker, step by step, and what each encoder setting would cost instead.

    .venv/bin/python bench/page_cost.py [--pdf FILE] [--repeat 3]

Single process, single thread (so pages/s is per core). For every page of the PDF (default
/usr/share/doc/libtasn1-doc/libtasn1.pdf, else a 36-page tests/pdfgen.py document) it times what
workers/pdf.py + workers/pages.py do: page load, `page_text` (text + text-layer runs), render at
RENDER_DPI, the JPEG at JPEG_QUALITY, the thumbnail (LANCZOS resize + JPEG), the text files, and the
whole `write_page_files`. Then, on the same rendered bitmaps, the page image at JPEG quality
60/70/75/80/85/90 (with and without optimize), WebP quality 75/80 (method 4 and 0), PNG: size and
encode time per page. Last, `pdftoppm -r RENDER_DPI -jpeg` (poppler-utils) on the same file, timed the
same way (wall time of the whole file, one process), for pages/s beside ours.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageChops, ImageStat, features  # noqa: E402

from config import Settings  # noqa: E402
from workers import pages as wpages  # noqa: E402
from workers import pdf as wpdf  # noqa: E402

SYSTEM_PDF = Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf")


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - t0) * 1000


def encode(image: Image.Image, fmt: str, **params) -> tuple[int, float]:
    buf = io.BytesIO()
    t0 = time.perf_counter()
    image.save(buf, fmt, **params)
    return buf.tell(), (time.perf_counter() - t0) * 1000


def psnr(image: Image.Image, fmt: str, **params) -> float:
    """Peak signal-to-noise ratio (dB) of the encoded image against the bitmap: higher is closer."""
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    buf.seek(0)
    with Image.open(buf) as decoded:
        diff = ImageChops.difference(image, decoded.convert("RGB"))
    rms = math.sqrt(sum(r * r for r in ImageStat.Stat(diff).rms) / 3)
    return 99.0 if rms == 0 else 20 * math.log10(255 / rms)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pdf", default=None)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the document (best kept)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "page_cost.json"))
    args = parser.parse_args()
    settings = Settings()
    work = Path(tempfile.mkdtemp(prefix="livedoc-pagecost-"))
    try:
        if args.pdf:
            source, label = Path(args.pdf), args.pdf
        elif SYSTEM_PDF.exists():
            source, label = SYSTEM_PDF, str(SYSTEM_PDF)
        else:
            sys.path.insert(0, str(ROOT / "tests"))
            import pdfgen

            source = work / "generated.pdf"
            source.write_bytes(pdfgen.make_pdf([f"Page {n}" for n in range(1, 37)]))
            label = "tests/pdfgen.py, 36 pages"
        scale = settings.RENDER_DPI / wpdf.POINTS_PER_INCH
        steps: dict[str, list[float]] = {}
        images: list[Image.Image] = []
        whole_ms = []
        for rep in range(args.repeat):
            doc = wpdf.open_document(source)
            doc.init_forms()
            t_doc = time.perf_counter()
            per = {
                k: []
                for k in (
                    "load",
                    "text",
                    "render",
                    "to_pil",
                    "image_jpeg",
                    "thumb",
                    "text_files",
                    "write_page_files",
                    "page_total",
                )
            }
            for index in range(len(doc)):
                t_page = time.perf_counter()
                page, ms = timed(doc.__getitem__, index)
                per["load"].append(ms)
                (text, runs), ms = timed(wpdf.page_text, page)
                per["text"].append(ms)
                bitmap, ms = timed(page.render, scale=scale, rev_byteorder=True)
                per["render"].append(ms)
                image, ms = timed(bitmap.to_pil)
                per["to_pil"].append(ms)
                rgb = wpages.to_rgb(image)
                _, ms = encode(rgb, "JPEG", quality=wpages.JPEG_QUALITY)
                per["image_jpeg"].append(ms)
                t0 = time.perf_counter()
                tw = min(settings.THUMB_WIDTH, rgb.width)
                thumb = rgb.resize(
                    (tw, max(1, round(rgb.height * tw / rgb.width))),
                    Image.Resampling.LANCZOS,
                    reducing_gap=2.0,
                )
                thumb.save(io.BytesIO(), "JPEG", quality=wpages.THUMB_QUALITY)
                per["thumb"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                (work / "t.txt").write_text(text, encoding="utf-8")
                layer = json.dumps({"runs": [list(r) for r in runs]}, separators=(",", ":"))
                (work / "l.json").write_text(layer)
                per["text_files"].append((time.perf_counter() - t0) * 1000)
                scratch = work / f"p{rep}"
                scratch.mkdir(exist_ok=True)
                _, ms = timed(
                    wpages.write_page_files, scratch, index + 1, image, text, runs, settings.THUMB_WIDTH
                )
                per["write_page_files"].append(ms)
                if rep == 0:
                    images.append(rgb.copy())
                bitmap.close()
                page.close()
                per["page_total"].append((time.perf_counter() - t_page) * 1000)
            whole_ms.append((time.perf_counter() - t_doc) * 1000)
            doc.close()
            if rep == 0 or sum(per["page_total"]) < sum(steps["page_total"]):
                steps = per
        n = len(images)
        best_doc = min(whole_ms)
        print(
            f"{label}: {n} pages at {settings.RENDER_DPI} dpi ({images[0].width}x{images[0].height} px); "
            f"libjpeg-turbo: {features.check_feature('libjpeg_turbo')}; WebP: {features.check('webp')}"
        )
        print("\nper page, ms (median / mean over pages; best of the passes):")
        steps_out = {}
        for k, v in steps.items():
            steps_out[k] = {"median": round(statistics.median(v), 2), "mean": round(statistics.mean(v), 2)}
            print(f"  {k:17} {statistics.median(v):7.2f} / {statistics.mean(v):7.2f}")
        print(
            "  (write_page_files = image JPEG + thumbnail + text files, as the worker runs it; "
            "page_total includes it and the separately timed steps)"
        )
        ours = n / (best_doc / 1000)
        print(f"\nthis script: {n} pages in {best_doc:.0f} ms = {ours:.1f} pages/s (encodes twice)")
        path = ("load", "text", "render", "to_pil", "write_page_files")  # what the worker runs per page
        worker_ms = sum(statistics.mean(steps[k]) for k in path)
        print(f"the worker's path: {worker_ms:.1f} ms per page = {1000 / worker_ms:.1f} pages/s per core")
        variants = [("JPEG", {"quality": q}) for q in (60, 70, 75, 80, 85, 90)]
        variants += [("JPEG", {"quality": q, "optimize": True}) for q in (75, 85)]
        variants += [("JPEG", {"quality": 85, "subsampling": 0})]
        variants += [("WEBP", {"quality": q, "method": m}) for q in (75, 80) for m in (4, 0)]
        variants += [("PNG", {"optimize": False})]
        print("\npage image encoders (same bitmaps): mean KiB per page, mean ms per page, mean PSNR dB")
        enc_out = []
        for fmt, params in variants:
            sizes, times = [], []
            for im in images:
                size, ms = encode(im, fmt, **params)
                sizes.append(size)
                times.append(ms)
            quality = statistics.mean(psnr(im, fmt, **params) for im in images[::6])  # every 6th page
            row = {
                "format": fmt,
                **params,
                "kib": round(statistics.mean(sizes) / 1024, 1),
                "ms": round(statistics.mean(times), 2),
                "psnr_db": round(quality, 2),
            }
            enc_out.append(row)
            print(
                f"  {fmt:5} {json.dumps(params):40} {row['kib']:7.1f} KiB  {row['ms']:7.2f} ms  "
                f"{row['psnr_db']:6.2f} dB"
            )
        print("\nthumbnail (same bitmaps, to THUMB_WIDTH, JPEG at THUMB_QUALITY): mean ms per page")
        thumbs = {}
        for label_, method, gap in (
            ("LANCZOS, reducing_gap 2 (ours)", Image.Resampling.LANCZOS, 2.0),
            ("LANCZOS, no reducing_gap", Image.Resampling.LANCZOS, None),
            ("BICUBIC, reducing_gap 2", Image.Resampling.BICUBIC, 2.0),
            ("BILINEAR, reducing_gap 2", Image.Resampling.BILINEAR, 2.0),
        ):
            times = []
            for im in images:
                t0 = time.perf_counter()
                tw = min(settings.THUMB_WIDTH, im.width)
                th = im.resize((tw, max(1, round(im.height * tw / im.width))), method, reducing_gap=gap)
                th.save(io.BytesIO(), "JPEG", quality=wpages.THUMB_QUALITY)
                times.append((time.perf_counter() - t0) * 1000)
            thumbs[label_] = round(statistics.mean(times), 2)
            print(f"  {label_:32} {thumbs[label_]:7.2f} ms")
        poppler = None
        if shutil.which("pdftoppm"):
            best = None
            for _ in range(args.repeat):
                out = work / "poppler"
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                t0 = time.perf_counter()
                subprocess.run(
                    ["pdftoppm", "-r", str(settings.RENDER_DPI), "-jpeg", str(source), str(out / "p")],
                    check=True,
                )
                ms = (time.perf_counter() - t0) * 1000
                best = ms if best is None else min(best, ms)
            files = list((work / "poppler").iterdir())
            kib = statistics.mean(f.stat().st_size for f in files) / 1024
            poppler = {
                "ms_total": round(best),
                "pages_per_s": round(n / (best / 1000), 1),
                "kib": round(kib, 1),
            }
            print(
                f"\npdftoppm -r {settings.RENDER_DPI} -jpeg: {n} pages in {best:.0f} ms = "
                f"{poppler['pages_per_s']} pages/s per core (image only: no text, no thumbnail), "
                f"{kib:.1f} KiB per page"
            )
        else:
            print("\npdftoppm not found (apt-get install poppler-utils)")
        result = {
            "pdf": label,
            "pages": n,
            "dpi": settings.RENDER_DPI,
            "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
            "steps_ms": steps_out,
            "ours_pages_per_s": round(ours, 1),
            "worker_path_ms": round(worker_ms, 2),
            "encoders": enc_out,
            "thumbnails_ms": thumbs,
            "pdftoppm": poppler,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
