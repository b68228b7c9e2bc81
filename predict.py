"""Score your own images with a finished run (see README.md):

python predict.py ckpt=outputs/runs/<run> input=<folder or image> [threshold=0.5] [out=scores.csv] [save_images=true]
"""

import sys

from anogan.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
