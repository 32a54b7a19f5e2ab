"""Write offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so `dvc plots show` and
`dvc plots diff` render without network access (DVC's own page loads them from a CDN). `.dvc/config` points
`plots.html_template` here. Re-make it (needs npm) only to change the library versions (dvc-render's pins):

    python configs/dvc_plots/make_template.py
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

LIBRARIES = {"vega": "5.20.2", "vega-lite": "5.2.0", "vega-embed": "6.18.2"}  # dvc_render/vega.py's CDN pins
HERE = Path(__file__).resolve().parent

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots</title>
    <!-- vega, vega-lite and vega-embed (BSD-3-Clause, LICENSE-vega.txt), inlined by make_template.py -->
    %s
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def minified(package: str, version: str, workdir: Path) -> tuple[str, str]:
    """(the package's minified browser build, its LICENSE) from the npm registry."""
    tarball = subprocess.run(["npm", "pack", f"{package}@{version}", "--silent"], cwd=workdir, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(workdir / tarball) as archive:
        script = archive.extractfile(f"package/build/{package}.min.js").read().decode()
        license_text = archive.extractfile("package/LICENSE").read().decode()
    return script, license_text


def main() -> None:
    scripts, licenses = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for package, version in LIBRARIES.items():
            script, license_text = minified(package, version, Path(tmp))
            if "{plot_divs}" in script or "{refresh_tag}" in script:  # DVC fills these by text replacement
                raise SystemExit(f"{package}: contains a DVC placeholder; cannot inline it")
            scripts.append(f'<script type="text/javascript">/* {package}@{version} */\n{script}\n</script>')
            licenses.append(f"{package}@{version}\n\n{license_text}")
    (HERE / "offline.html").write_text(PAGE % "\n    ".join(scripts), encoding="utf-8")
    (HERE / "LICENSE-vega.txt").write_text("\n\n".join(licenses), encoding="utf-8")
    print(f"wrote {HERE / 'offline.html'}")


if __name__ == "__main__":
    main()
