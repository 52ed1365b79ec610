"""Ray job entry point: `ray job submit --address ... --working-dir . -- python jobs/encode_corpus.py ARGS`.

Same arguments and code path as `berg-ray encode-corpus ARGS` (see `berg-ray encode-corpus --help`). The job
connects to the cluster it was submitted to (RAY_ADDRESS is set by Ray for job drivers). Resubmitting the same job
resumes its output; a job with other settings into the same --output is refused (exit 2, naming what changed)
unless it passes --overwrite. `--write voxels rois` adds the per-sentence network and ROI means (`--write rois`
alone skips the voxel output) and `--predictions-dtype float16` halves the voxel output; both are part of the
request, so a resubmission that changes them is refused too. Rank the finished output with `berg-ray rank OUTPUT`.
"""

import sys

from berg_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["encode-corpus", *sys.argv[1:]]))
