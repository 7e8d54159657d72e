"""Getting a dataset from nothing: fetch the official archives, lay them out, push them to S3.

push      `data push`: upload what training reads to s3://, in parallel, skipping
          objects already there with the same size and content hash
archives  extract VOC 2012 + SBD / ADE20K archives into the layout `data.root` expects,
          beside the destination, verify it, then move it into place
sources   the official archives: URLs, the checksums public sources state, --checksums
fetch     `data fetch`: download (or find) the archives, extract, verify, push
"""

PUSH_WORKERS = 16  # parallel uploads of `data push`; the S3 store keeps as many connections open
