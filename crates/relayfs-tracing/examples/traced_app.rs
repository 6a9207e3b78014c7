//! An application that traces through relayfs.
//!
//! ```text
//! cargo run -p relayfs-tracing --example traced_app -- [CHANNEL] [WORKERS] [JOBS]
//! relayfs record traced_app -o rec      # in another terminal, before or after
//! relayfs decode rec                    # once it is done (or --follow)
//! ```
//!
//! It opens the channel (default `traced_app`), waits up to five seconds for
//! a reader such as `relayfs record`, runs some workers that log from inside
//! spans, then closes the channel, which ends the recording.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, info_span, warn};
use tracing_subscriber::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "traced_app".into());
    let workers: u64 = args.next().map_or(Ok(2), |s| s.parse())?;
    let jobs: u64 = args.next().map_or(Ok(100), |s| s.parse())?;

    // One buffer per CPU under $RELAYFS_DIR (default /dev/shm/relayfs).
    let chan = Arc::new(relayfs::Channel::builder(&name).open()?);
    let layer = relayfs_tracing::RelayLayer::new(chan.clone());
    tracing_subscriber::registry().with(layer.clone()).init();

    if !chan.wait_for_readers(Duration::from_secs(5)) {
        eprintln!(
            "traced_app: no reader came; tracing anyway (what does not fit is counted as lost)"
        );
    }
    info!(workers, jobs, "starting");
    std::thread::scope(|s| {
        for w in 0..workers {
            s.spawn(move || {
                let span = info_span!("worker", id = w);
                let _g = span.enter();
                for job in 0..jobs {
                    let span = info_span!("job", n = job);
                    let _g = span.enter();
                    debug!(cost = job * 3 + w, ratio = job as f64 / 7.0, "working");
                    if job % 50 == 49 {
                        warn!(job, "slow job");
                    }
                }
                let e = std::io::Error::other("disk on fire");
                error!(
                    error = &e as &(dyn std::error::Error + 'static),
                    worker = w,
                    "worker done"
                );
            });
        }
    });
    info!(ok = true, "finished");
    // Anything refused and not reported yet, then the end of the recording.
    layer.flush_lost();
    let stats = chan.close()?;
    eprintln!(
        "traced_app: {} records written, {} lost",
        stats.records_written(),
        stats.lost()
    );
    Ok(())
}
