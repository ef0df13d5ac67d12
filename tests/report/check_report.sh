#!/usr/bin/env bash
# Renders a `mobula report` page in headless Chromium and fails (exit 1, one-line reason on stderr)
# unless it draws: a screenshot that is not blank, >= 6 plots and >= 10 data points in the DOM after
# the scripts ran, and no console error or uncaught exception.
#
#   tests/report/check_report.sh REPORT.html OUTDIR
#
# Leaves OUTDIR/report.png (look at it), OUTDIR/dom.html, OUTDIR/console.log. Needs chromium
# (/usr/bin/chromium, or $CHROMIUM) and python3. Two Chromium runs, each under `timeout 120`.
#
# Chromium's stderr log prints every console message at INFO level ("...:INFO:CONSOLE:LINE] "msg""),
# whatever its level, so the page is checked through a copy with a first <script> that re-logs
# console.error as "console.error: ..." and reports uncaught errors and failed resource loads.
set -euo pipefail

fail() {
  echo "check_report: FAIL: $*" >&2
  exit 1
}

[[ $# -eq 2 ]] || fail "usage: $0 REPORT.html OUTDIR"
html=$1
out=$2
chromium=${CHROMIUM:-/usr/bin/chromium}
[[ -f $html ]] || fail "$html: no such file"
[[ -x $chromium ]] || fail "$chromium not found (apt-get install chromium, or set CHROMIUM)"
command -v python3 > /dev/null || fail "python3 not found"
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$(date +%s.%N)

# The instrumented copy.
page=$out/page.html
python3 - "$html" "$page" << 'EOF'
import re, sys
probe = """<script>(function () {
  var log = console.log.bind(console);
  var str = function (args) { return Array.prototype.map.call(args, String).join(' '); };
  console.error = function () { log('console.error: ' + str(arguments)); };
  window.addEventListener('error', function (e) {
    if (e.target && e.target !== window) log('console.error: failed to load ' + (e.target.src || e.target.href || e.target.tagName));
    else log('Uncaught (window.onerror) ' + e.message);
  }, true);
  window.addEventListener('unhandledrejection', function (e) { log('Uncaught (in promise) ' + e.reason); });
})();</script>"""
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
m = re.search(r"<head[^>]*>", text, re.I)
text = text[: m.end()] + probe + text[m.end() :] if m else probe + text
open(sys.argv[2], "w", encoding="utf-8").write(text)
EOF

flags=(--no-sandbox --headless=new --disable-gpu --disable-dev-shm-usage --hide-scrollbars "--window-size=1400,3000"
  --no-first-run --no-default-browser-check --user-data-dir="$out/chromium-profile" --enable-logging=stderr --v=0)
url="file://$page"
rm -f "$out/report.png"
timeout 120 "$chromium" "${flags[@]}" --screenshot="$out/report.png" "$url" > "$out/chromium-shot.log" 2>&1 ||
  fail "chromium --screenshot exited with $? (see $out/chromium-shot.log)"
timeout 120 "$chromium" "${flags[@]}" --dump-dom "$url" > "$out/dom.html" 2> "$out/chromium-dom.log" ||
  fail "chromium --dump-dom exited with $? (see $out/chromium-dom.log)"
cat "$out/chromium-shot.log" "$out/chromium-dom.log" | grep -a 'CONSOLE' > "$out/console.log" || true
rm -rf "$out/chromium-profile"

# The screenshot: a PNG of some size with several distinct colours (a blank page has one).
python3 - "$out/report.png" << 'EOF' || exit 1
import struct, sys, zlib

def fail(msg):
    print(f"check_report: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)

path = sys.argv[1]
try:
    data = open(path, "rb").read()
except OSError:
    fail(f"{path}: no screenshot written")
if len(data) < 10000 or data[:8] != b"\x89PNG\r\n\x1a\n":
    fail(f"{path}: not a PNG or too small ({len(data)} bytes)")
pos, idat, hdr = 8, [], None
while pos + 8 <= len(data):
    n, kind = struct.unpack(">I4s", data[pos : pos + 8])
    body = data[pos + 8 : pos + 8 + n]
    if kind == b"IHDR":
        hdr = struct.unpack(">IIBBBBB", body)
    elif kind == b"IDAT":
        idat.append(body)
    elif kind == b"IEND":
        break
    pos += 12 + n
if not hdr or hdr[2] != 8 or hdr[3] not in (2, 6) or hdr[6] != 0:
    fail(f"{path}: unexpected PNG format {hdr}")
width, height, bpp = hdr[0], hdr[1], 3 if hdr[3] == 2 else 4
raw = zlib.decompress(b"".join(idat))
stride = width * bpp
prev = bytearray(stride)
colours = set()
# Undo the scanline filters row by row; stop as soon as the page is clearly not blank.
for y in range(height):
    f = raw[y * (stride + 1)]
    row = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
    if f == 1:
        for i in range(bpp, stride):
            row[i] = (row[i] + row[i - bpp]) & 255
    elif f == 2:
        row = bytearray((a + b) & 255 for a, b in zip(row, prev))
    elif f == 3:
        for i in range(stride):
            row[i] = (row[i] + ((row[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
    elif f == 4:
        for i in range(stride):
            a = row[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    colours.update(bytes(row[i : i + 3]) for i in range(0, stride, bpp * 7))
    if len(colours) >= 16:
        break
    prev = row
if len(colours) < 16:
    fail(f"{path}: blank screenshot ({len(colours)} distinct colours in {width}x{height})")
EOF

plots=$({ grep -o '<svg[^>]*class="plot"' "$out/dom.html" || true; } | wc -l)
points=$({ grep -o 'class="pt"' "$out/dom.html" || true; } | wc -l)
((plots >= 6)) || fail "$out/dom.html: $plots plots (class=\"plot\" svgs), want >= 6"
((points >= 10)) || fail "$out/dom.html: $points data points (class=\"pt\"), want >= 10"
if grep -a -E 'console\.error: |Uncaught|Failed to load resource' "$out/console.log" > "$out/console-errors.log"; then
  fail "console error: $(head -1 "$out/console-errors.log" | cut -c1-300)"
fi
printf 'check_report: ok: %d plots, %d points, no console errors, %s (%.1f s)\n' "$plots" "$points" \
  "$out/report.png" "$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { print e - s }')"
