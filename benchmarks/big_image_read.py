"""Peak memory (max RSS) and time of reading one 9,500 x 9,500 image as a 64 px model input.

python benchmarks/big_image_read.py /tmp/big make        # writes big.jpg and big.png there
python benchmarks/big_image_read.py /tmp/big big.jpg now  # one reading, one line (run each in a fresh process)
"""

import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

out = Path(sys.argv[1])
if sys.argv[2] == "make":
    out.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:9500, 0:9500].astype(np.uint16)
    pixels = np.stack([(x // 38) % 256, (y // 38) % 256, ((x + y) // 75) % 256], axis=2).astype(np.uint8)
    Image.fromarray(pixels).save(out / "big.jpg", quality=90)
    Image.fromarray(pixels).save(out / "big.png", compress_level=1)
    sys.exit()

from anogan.data.images import read_image  # noqa: E402  (imports measured in the baseline)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
img = read_image(out / sys.argv[2], 64, 3)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
label = sys.argv[3] if len(sys.argv) > 3 else ""
print(
    f"{sys.argv[2]} {label}: peak RSS {peak / 1024:.0f} MiB (before reading {base / 1024:.0f} MiB), {dt:.2f} s, shape {tuple(img.shape)}"
)
