"""A relay reader with nothing but Python's standard library: records every
buffer file of a mounted channel directory (`relayfs mount`) into
OUTDIR/<buffer>.out with select.poll and os.read, as a reader of the
kernel's relay files would.

usage: reader.py CHANNEL_DIR OUTDIR
"""
import json
import os
import re
import select
import sys

chan, outdir = sys.argv[1], sys.argv[2]
names = sorted(n for n in os.listdir(chan) if re.fullmatch(r"cpu[0-9]+", n))
fds = {os.open(os.path.join(chan, n), os.O_RDONLY): n for n in names}
outs = {fd: open(os.path.join(outdir, n + ".out"), "wb") for fd, n in fds.items()}

p = select.poll()
for fd in fds:
    p.register(fd, select.POLLIN)
live = set(fds)
nbytes = 0
while live:
    for fd, ev in p.poll():
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            outs[fd].write(b)
            nbytes += len(b)
        if ev & (select.POLLHUP | select.POLLERR):
            # The channel ended, and everything after that is read.
            p.unregister(fd)
            live.discard(fd)
            os.close(fd)
            outs[fd].close()
print(json.dumps({"bytes": nbytes, "buffers": len(fds)}))
